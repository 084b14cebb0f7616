"""A trained Glow for inference: built from its config, restored from its run, and behind NumPy methods.

* :func:`build_model` -- the ``Glow`` a training config describes;
* :func:`restore_for_inference` -- ``(model, config)`` from a workdir, EMA weights swapped in;
* :class:`InferenceModel` -- uint8-in / uint8-out NumPy methods over a live model or
  a SavedModel of :mod:`glow_tf.export`, and :func:`load_inference_model`, which
  makes one from either a SavedModel folder or a workdir.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import tensorflow as tf

from glow_tf import _validate, checkpointing, config_lib, data, export, optim, parallelism, workdirs
from glow_tf.model import Glow
from glow_tf.workdirs import CHECKPOINT_KINDS

__all__ = [
    "build_model",
    "restore_for_inference",
    "CHECKPOINT_KINDS",
    "InferenceModel",
    "load_inference_model",
    "check_temperature",
]


def build_model(config: ml_collections.ConfigDict, info: data.DatasetInfo | None = None) -> Glow:
    """The ``Glow`` a resolved config describes; image shape and classes come from the dataset.

    Args:
      config: a validated training config.
      info: ``data.dataset_info(config.data)`` when already known.

    Returns:
      An uninitialised model (run ``model.initialize`` or restore a checkpoint),
      with ``backprop`` and ``batch_shards`` set from ``config.train``
      (``batch_shards = 0``: :func:`glow_tf.parallelism.auto_batch_shards`).

    Raises:
      ValueError: for a class-conditional model on a dataset without labels, or
        any model hyper-parameter outside its range.
    """
    info = info or data.dataset_info(config.data)
    m = config.model
    if m.class_conditional and not info.num_classes:
        raise ValueError(f"config.model.class_conditional=True but dataset {info.name!r} has no class labels.")
    model = Glow(
        image_shape=tuple(int(d) for d in info.image_shape),
        num_levels=m.num_levels,
        num_steps=m.num_steps,
        hidden_width=m.hidden_width,
        coupling=m.coupling,
        permutation=m.permutation,
        lu_decomposed=m.lu_decomposed,
        learn_top=m.learn_top,
        num_classes=int(info.num_classes) if m.class_conditional else 0,
        weight_y=m.weight_y,
        n_bits=config.data.n_bits,
        compute_dtype=m.compute_dtype,
        stack_variables=m.stack_variables,
        seed=config.seed,
    )
    model.backprop = config_lib.backprop_mode(config.train)
    model.batch_shards = config.train.batch_shards or parallelism.auto_batch_shards()
    return model


def restore_for_inference(
    workdir: str,
    checkpoint: str = "latest",
    strategy: tf.distribute.Strategy | None = None,
    with_info: bool = False,
):
    """The trained model of a run, ready to sample, encode or export.

    Reads ``workdir/config.json``, builds the model and restores the newest
    readable checkpoint of the chosen kind (a torn newest one falls back to the
    previous with a warning). When the run kept EMA weights they replace the raw
    weights in the returned model.

    Args:
      workdir: a training run's folder.
      checkpoint: ``'latest'`` or ``'best'`` (lowest eval bits/dim).
      strategy: build the variables in this strategy's scope (default: none).
      with_info: also return ``{"step", "path"}`` of the restored checkpoint.

    Returns:
      ``(model, config)``, or ``(model, config, info)`` with ``with_info``.

    Raises:
      ValueError: for an unknown ``checkpoint`` kind, or a config.json that is not a valid config.
      FileNotFoundError: when the workdir, its config.json or a checkpoint of the kind is missing.
      checkpointing.CheckpointMismatchError: the checkpoint holds another model than config.json describes.
      checkpointing.NoReadableCheckpointError: every checkpoint of the kind is torn.
    """
    _validate.choice(checkpoint, tuple(CHECKPOINT_KINDS), "checkpoint kind")
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir {workdir!r} does not exist.")
    config = config_lib.load_config_json(workdir)
    candidates = workdirs.checkpoint_prefixes(workdir, checkpoint)
    if not candidates:
        folder = os.path.join(workdir, CHECKPOINT_KINDS[checkpoint][0])
        raise FileNotFoundError(f"No {checkpoint!r} checkpoint in {folder!r}.")
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config)
        ema = (
            optim.ExponentialMovingAverage(model.trainable_variables, config.optim.ema_decay)
            if config.optim.ema_decay > 0
            else None
        )
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    parts = dict(model=model, step=step)
    if ema is not None:
        parts["ema"] = ema
    what = f"the model that {os.path.join(workdir, workdirs.CONFIG_FILE)} describes"
    path = checkpointing.restore_first_good(tf.train.Checkpoint(**parts), candidates, partial=True, what=what)
    if not model.initialized:
        raise ValueError(f"Checkpoint {path!r} holds an uninitialised model.")
    if ema is not None:
        with strategy.scope():
            ema.swap()  # the model now holds the averaged weights
    if with_info:
        return model, config, {"step": int(step.numpy()), "path": path}
    return model, config


def check_temperature(temperature) -> float:
    """Returns ``temperature`` as a float, or raises ``ValueError`` unless it is a finite number >= 0."""
    return _validate.number(temperature, "temperature", 0.0)


class InferenceModel:
    """A trained Glow behind uint8-in / uint8-out NumPy methods (live module or SavedModel).

    Build one with :meth:`from_model`, :meth:`from_saved_model` or
    :func:`load_inference_model`. Attributes: ``image_shape`` ``(H, W, C)``,
    ``latent_shapes`` (one ``(h, w, c)`` per level, top last), ``n_bits``,
    ``num_classes`` (0: unconditional; otherwise every method takes ``labels``),
    ``num_levels``, ``data_config`` (the training run's ``config.data`` section when known, else None).

    Args:
      module: an object with the functions and metadata variables of :mod:`glow_tf.export`.
      source: where it came from (for messages).
      data_config: the ``config.data`` section the model was trained on, if known.
    """

    def __init__(self, module, source: str = "model", data_config=None):
        self._module = module
        self.source = source
        self.data_config = data_config
        self.image_shape = tuple(int(d) for d in module.image_shape.numpy())
        self.latent_shapes = tuple(tuple(int(d) for d in s) for s in module.latent_shapes.numpy())
        self.n_bits = int(module.n_bits.numpy())
        self.num_classes = int(module.num_classes.numpy())
        self.latent_size = sum(math.prod(s) for s in self.latent_shapes)
        self.num_levels = len(self.latent_shapes)

    @classmethod
    def from_model(
        cls, model: Glow, n_bits: int | None = None, data_config=None, stack_step_weights: bool = False
    ) -> InferenceModel:
        """Wraps an initialised in-process ``Glow``.

        By default its functions read the model's variables (later changes of the
        weights show). ``stack_step_weights`` runs them on a copy of the flow steps'
        weights stacked per level, as an export holds them: the same results, first
        calls ~1.5-2x faster at K=32, one more copy of those weights in memory. A
        ``Glow(stack_variables=True)`` already holds them stacked: no copy is made.
        """
        stack_step_weights = stack_step_weights and not model.stack_variables
        module = export.build_export_module(model, n_bits, stack_step_weights=stack_step_weights)
        return cls(module, "in-process model", data_config)

    @classmethod
    def from_saved_model(cls, path: str) -> InferenceModel:
        """Loads a SavedModel written by :func:`glow_tf.export.export_model`.

        Raises:
          FileNotFoundError: ``path`` is not a SavedModel folder.
          ValueError: the SavedModel was not written by glow_tf.export.
        """
        if not export.is_saved_model(path):
            raise FileNotFoundError(f"No SavedModel at {path!r} (expected {os.path.join(path, 'saved_model.pb')}).")
        loaded = tf.saved_model.load(path)
        missing = [n for n in (*export.BASE_SIGNATURES, "sample_seeded", "image_shape") if not hasattr(loaded, n)]
        if missing:
            raise ValueError(f"SavedModel {path!r} is not a glow_tf export (missing {missing}).")
        return cls(loaded, path, _exported_data_config(path))

    # ----------------------------------------------------------------- checks
    def check_images(self, images, what: str = "encode") -> np.ndarray:
        """``images`` as uint8 ``[N, H, W, C]``, or ``ValueError`` naming the wrong size, channels or dtype."""
        images = np.asarray(images)
        expected = [None, *self.image_shape]
        if images.ndim != 4:
            raise ValueError(f"{what} expects a batch of images of shape {expected}, got shape {images.shape}.")
        if images.dtype != np.uint8:
            raise ValueError(f"{what} expects uint8 pixels 0..255, got dtype {images.dtype}.")
        if images.shape[3] != self.image_shape[2]:
            raise ValueError(
                f"{what}: the model takes {self.image_shape[2]} channel(s), got images with {images.shape[3]} "
                f"(shape {images.shape}, expected {expected})."
            )
        if tuple(images.shape[1:3]) != self.image_shape[:2]:
            raise ValueError(
                f"{what}: the model takes {self.image_shape[0]}x{self.image_shape[1]} images, got "
                f"{images.shape[1]}x{images.shape[2]} (shape {images.shape}, expected {expected}); resize them first."
            )
        return images

    def check_labels(self, labels, n: int, what: str = "sample") -> np.ndarray | None:
        """``[n]`` int32 class ids (a scalar is repeated), or None for an unconditional model.

        Raises:
          ValueError: labels missing for a class-conditional model, given to an
            unconditional one, of the wrong count, not integers, or out of range.
        """
        if not self.num_classes:
            if labels is not None:
                raise ValueError(f"{what}: the model is not class-conditional, but labels were passed.")
            return None
        if labels is None:
            raise ValueError(f"{what}: the model is class-conditional ({self.num_classes} classes); pass labels.")
        labels = np.asarray(labels)
        labels = np.full([n], labels, labels.dtype) if labels.ndim == 0 else labels
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{what}: labels must be {n} integer class ids, got {labels.tolist()!r}.")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{what}: labels must lie in 0..{self.num_classes - 1}, got {labels.tolist()}.")
        return labels.astype(np.int32)

    def _labels(self, labels, n: int, what: str) -> list[tf.Tensor]:
        """The trailing ``labels`` argument of the module's functions (empty when unconditional)."""
        labels = self.check_labels(labels, n, what)
        return [] if labels is None else [tf.constant(labels)]

    def check_latents(self, latents: Sequence) -> list[np.ndarray]:
        """The per-level latents as float32 arrays, or ``ValueError`` for a wrong count or shape."""
        if len(latents) != len(self.latent_shapes):
            raise ValueError(f"decode expects {len(self.latent_shapes)} latents, got {len(latents)}.")
        out = [np.asarray(z, np.float32) for z in latents]
        for i, (z, shape) in enumerate(zip(out, self.latent_shapes)):
            if z.ndim != 4 or z.shape[1:] != shape or z.shape[0] != out[0].shape[0]:
                raise ValueError(
                    f"decode: latent_{i} must have shape [N, {', '.join(map(str, shape))}], got {z.shape}."
                )
        return out

    # ---------------------------------------------------------------- methods
    def sample(self, num_samples: int, temperature: float = 0.7, labels=None, seed: int | None = None) -> np.ndarray:
        """``[num_samples, H, W, C]`` uint8 samples; ``temperature`` scales the noise (0: deterministic).

        Raises:
          ValueError: negative temperature, ``num_samples`` < 1, or labels that do not fit the model.
        """
        temperature = check_temperature(temperature)
        n = _validate.integer(num_samples, "num_samples", minimum=0)
        extra = self._labels(labels, n, "sample")
        args = [tf.constant(n, tf.int32), tf.constant(temperature, tf.float32)]
        if seed is None:
            return self._module.sample(*args, *extra)["images"].numpy()
        return self._module.sample_seeded(*args, tf.constant([0, int(seed)], tf.int64), *extra)["images"].numpy()

    def encode(self, images, labels=None, deterministic: bool = True) -> list[np.ndarray]:
        """Standardised eps of every level (top last) of uint8 images.

        Args:
          images: uint8 ``[N, H, W, C]``.
          labels: ``[N]`` class ids for a class-conditional model.
          deterministic: bin midpoints (True) or dequantisation noise as the original's encoder (False).
        """
        images = self.check_images(images, "encode")
        fn = self._module.encode_deterministic if deterministic else self._module.encode
        out = fn(tf.constant(images), *self._labels(labels, len(images), "encode"))
        return [out[name].numpy() for name in export.latent_names(len(self.latent_shapes))]

    def decode(self, latents: Sequence, labels=None) -> np.ndarray:
        """uint8 images from per-level eps (the exact inverse of :meth:`encode`)."""
        latents = self.check_latents(latents)
        extra = self._labels(labels, latents[0].shape[0], "decode")
        return self._module.decode(*[tf.constant(z) for z in latents], *extra)["images"].numpy()

    def log_prob(self, images, labels=None, seed: int | None = None) -> np.ndarray:
        """``[N]`` log-density (nats) of the dequantised images (seeded noise when ``seed`` is given)."""
        return self._likelihood("log_prob", images, labels, seed)

    def bits_per_dim(self, images, labels=None, seed: int | None = None) -> np.ndarray:
        """``[N]`` bits/dim of the images (the original's objective, dequantised)."""
        return self._likelihood("bits_per_dim", images, labels, seed)

    def _likelihood(self, name: str, images, labels, seed) -> np.ndarray:
        images = tf.constant(self.check_images(images, name))
        extra = self._labels(labels, images.shape[0], name)
        if seed is None:
            return getattr(self._module, name)(images, *extra)[name].numpy()
        seed = tf.constant([0, int(seed)], tf.int64)
        return getattr(self._module, f"{name}_seeded")(images, seed, *extra)[name].numpy()

    def per_level_bits_per_dim(
        self, images, labels=None, seed: int | None = None, index=None, draw: int = 0
    ) -> dict[str, np.ndarray]:
        """Bits/dim of uint8 images and its split over the levels (one encode pass).

        With ``D = H*W*C`` (see :func:`glow_tf.metrics.term_bits_per_dim`)::

            bits_per_dim = n_bits + sum_i flow_bits_per_dim[:, i] + sum_i prior_bits_per_dim[:, i]

        where ``flow_bits_per_dim[:, i] = -flow_log_det_i / (D ln 2)`` (level ``i``'s flow steps) and
        ``prior_bits_per_dim[:, i] = -log p_i / (D ln 2)`` (level ``i``'s split prior, the top prior for
        the last level), equal up to float rounding.

        Args:
          images: uint8 ``[N, H, W, C]``.
          labels: ``[N]`` class ids for a class-conditional model.
          seed: None draws fresh dequantisation noise; an int seeds it: image ``n`` gets the noise
            of ``data.keyed_model_inputs`` with seed ``data.noise_seed(seed, draw)`` and key ``index[n]``,
            so its numbers do not depend on the batch it is scored in.
          index: ``[N]`` integer keys of the images (default ``0..N-1``); only with ``seed``.
          draw: which independent noise draw (0, 1, ...); only with ``seed``.

        Returns:
          ``{"bits_per_dim": [N], "flow_bits_per_dim": [N, L], "prior_bits_per_dim": [N, L]}`` float32.

        Raises:
          ValueError: images or labels that do not fit the model, a bad ``index``, or a SavedModel
            exported before the per-level signatures existed.
        """
        images = self.check_images(images, "per_level_bits_per_dim")
        extra = self._labels(labels, len(images), "per_level_bits_per_dim")
        if not hasattr(self._module, "per_level_bits_per_dim_seeded"):
            raise ValueError(
                f"{self.source} was exported before per-level bits/dim existed; export the run again "
                "(python -m glow_tf.export --workdir=...) or score its workdir."
            )
        if seed is None:
            if index is not None:
                raise ValueError("per_level_bits_per_dim: index keys the seeded noise; pass seed too.")
            out = self._module.per_level_bits_per_dim(tf.constant(images), *extra)
        else:
            index = np.arange(len(images)) if index is None else np.asarray(index)
            if index.shape != (len(images),) or not np.issubdtype(index.dtype, np.integer):
                raise ValueError(f"per_level_bits_per_dim: index must be {len(images)} integer keys, got {index!r}.")
            seed = _validate.seed(seed)
            key = data.noise_seed(seed, _validate.integer(draw, "draw", minimum=0))
            out = self._module.per_level_bits_per_dim_seeded(
                tf.constant(images), key, tf.constant(index, tf.int64), *extra
            )
        return {name: out[name].numpy() for name in ("bits_per_dim", "flow_bits_per_dim", "prior_bits_per_dim")}

    def flatten_latents(self, latents: Sequence) -> np.ndarray:
        """``[N, D]``: the per-level eps concatenated (the layout of ``Glow.flatten_latents``)."""
        latents = self.check_latents(latents)
        return np.concatenate([z.reshape(len(z), -1) for z in latents], axis=1)

    def unflatten_latents(self, flat) -> list[np.ndarray]:
        """Inverse of :meth:`flatten_latents`."""
        flat = np.asarray(flat, np.float32)
        if flat.ndim != 2 or flat.shape[1] != self.latent_size:
            raise ValueError(f"flat latents must have shape [N, {self.latent_size}], got {flat.shape}.")
        sizes = np.cumsum([math.prod(s) for s in self.latent_shapes])[:-1]
        return [p.reshape(-1, *s) for p, s in zip(np.split(flat, sizes, axis=1), self.latent_shapes)]


def load_inference_model(path: str, checkpoint: str = "latest") -> InferenceModel:
    """An :class:`InferenceModel` from a SavedModel folder or a training workdir.

    Args:
      path: a SavedModel written by :mod:`glow_tf.export`, or a training run's folder.
      checkpoint: for a workdir, ``'latest'`` or ``'best'`` (EMA weights when the run kept them).

    Raises:
      FileNotFoundError: ``path`` does not exist, or the workdir has no such checkpoint.
      ValueError: unknown ``checkpoint`` kind, or a SavedModel not written by glow_tf.
    """
    if export.is_saved_model(path):
        return InferenceModel.from_saved_model(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is neither a SavedModel folder nor a training workdir.")
    model, config = restore_for_inference(path, checkpoint)
    return InferenceModel.from_model(model, config.data.n_bits, config.data, stack_step_weights=True)


def _exported_data_config(path: str):
    """The ``config.data`` section recorded in an export's metadata (None when it has none)."""
    meta = os.path.join(path, "assets.extra", export.METADATA_FILE)
    try:
        with open(meta, encoding="utf-8") as f:
            recorded = json.load(f).get("config")
        return config_lib.config_from_json(json.dumps(recorded)).data if recorded else None
    except (OSError, ValueError):
        return None
