"""Sampling and latent-space tools over a trained Glow, live or exported.

:class:`InferenceModel` gives one interface (uint8 images in and out, NumPy
arrays) over either a model in this process or a SavedModel written by
:mod:`glow_tf.export`; every tool below takes one. The maths, as the original:

* sample grids: ``z = mean + exp(logs) * T * N(0, 1)`` at every level (T scales the noise only);
* interpolation: ``decode((1 - t) * eps_a + t * eps_b)`` for ``t`` in ``[0, 1]``;
* attribute manipulation: ``decode(eps + alpha * dz)`` with a direction from
  :mod:`glow_tf.attributes`.

Encodings here are deterministic (bin midpoints, no dequantisation noise), so
``decode(encode(x))`` gives back ``x`` (at the model's bit depth) exactly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from glow_tf import _validate, config_lib, data, export, summaries, train_lib
from glow_tf.data import transforms
from glow_tf.model import Glow

__all__ = [
    "InferenceModel",
    "load_inference_model",
    "check_temperature",
    "sample_grids",
    "interpolate",
    "manipulate",
    "load_image",
    "save_pngs",
]


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
    def from_model(cls, model: Glow, n_bits: int | None = None, data_config=None) -> InferenceModel:
        """Wraps an initialised in-process ``Glow`` (its current weights)."""
        return cls(export.build_export_module(model, n_bits), "in-process model", data_config)

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
            seed = _validate.integer(seed, "seed", minimum=0)
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
    model, config = train_lib.restore_for_inference(path, checkpoint)
    return InferenceModel.from_model(model, config.data.n_bits, config.data)


def _exported_data_config(path: str):
    """The ``config.data`` section recorded in an export's metadata (None when it has none)."""
    meta = os.path.join(path, "assets.extra", export.METADATA_FILE)
    try:
        with open(meta, encoding="utf-8") as f:
            recorded = json.load(f).get("config")
        return config_lib.config_from_json(json.dumps(recorded)).data if recorded else None
    except (OSError, ValueError):
        return None


def _single_image(model: InferenceModel, image, what: str) -> np.ndarray:
    """``[1, H, W, C]`` from one ``[H, W, C]`` image (or a batch of one)."""
    image = np.asarray(image)
    return model.check_images(image[None] if image.ndim == 3 else image, what)[:1]


def sample_grids(
    model: InferenceModel,
    temperatures: Sequence[float] = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    num_samples: int = 16,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Grids of samples at each temperature (per class for a class-conditional model).

    Every grid of one call uses the same noise draw (``seed``), so grids differ
    only by temperature (and class).

    Args:
      model: the model.
      temperatures: each >= 0.
      num_samples: images per grid.
      classes: class ids to draw (default: all classes); must be None when unconditional.
      seed: noise seed.

    Returns:
      ``{"T0.70": grid}`` or ``{"class3_T0.70": grid}``: uint8 ``[H', W', C]`` grids.

    Raises:
      ValueError: a negative temperature, classes for an unconditional model, or a class out of range.
    """
    temperatures = [check_temperature(t) for t in temperatures]
    if model.num_classes:
        classes = list(range(model.num_classes)) if classes is None else list(classes)
        if not classes:
            raise ValueError("sample_grids: classes is empty; pass class ids or None for every class.")
        model.check_labels(np.asarray(classes, np.int64), len(classes), "sample_grids")  # range check up front
    elif classes is not None:
        raise ValueError("sample_grids: classes given, but the model is not class-conditional.")
    grids = {}
    for c in classes if model.num_classes else [None]:
        for t in temperatures:
            labels = None if c is None else np.full([num_samples], c, np.int32)
            name = f"T{t:.2f}" if c is None else f"class{c}_T{t:.2f}"
            grids[name] = summaries.image_grid(model.sample(num_samples, t, labels, seed=seed))
    return grids


def interpolate(model: InferenceModel, image_a, image_b, steps: int = 8, labels=None) -> np.ndarray:
    """Decodes ``(1 - t) * eps_a + t * eps_b`` for ``steps`` evenly spaced ``t`` in ``[0, 1]``.

    The first image is the reconstruction of ``image_a`` and the last that of
    ``image_b``. For a class-conditional model ``labels = (label_a, label_b)``; each
    frame is decoded with the label of the nearer end.

    Returns:
      uint8 ``[steps, H, W, C]``.

    Raises:
      ValueError: ``steps`` < 2, or images/labels that do not fit the model.
    """
    _validate.integer(steps, "steps", minimum=2)
    pair = np.concatenate([_single_image(model, image_a, "interpolate"), _single_image(model, image_b, "interpolate")])
    pair_labels = None if labels is None else np.asarray(labels).reshape(-1)
    flat = model.flatten_latents(model.encode(pair, pair_labels))
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    mixes = (1.0 - t) * flat[:1] + t * flat[1:]
    frame_labels = None if pair_labels is None else np.where(t[:, 0] < 0.5, pair_labels[0], pair_labels[-1])
    return model.decode(model.unflatten_latents(mixes), frame_labels)


def manipulate(model: InferenceModel, image, direction, alphas: Sequence[float], label=None) -> np.ndarray:
    """Decodes ``eps + alpha * direction`` of one image for each ``alpha`` (alpha 0: the reconstruction).

    Args:
      model: the model.
      image: uint8 ``[H, W, C]``.
      direction: flat ``[D]`` latent direction (e.g. ``Directions.get(name)``).
      alphas: strengths.
      label: class id for a class-conditional model.

    Returns:
      uint8 ``[len(alphas), H, W, C]``.

    Raises:
      ValueError: an image or direction that does not fit the model, or no alphas.
    """
    direction = np.asarray(direction, np.float32).reshape(-1)
    if direction.size != model.latent_size:
        raise ValueError(f"direction has {direction.size} entries; the model's latent size is {model.latent_size}.")
    alphas = np.asarray(alphas, np.float32).reshape(-1)
    if alphas.size == 0:
        raise ValueError("manipulate needs at least one alpha.")
    labels = None if label is None else np.asarray([label])
    flat = model.flatten_latents(model.encode(_single_image(model, image, "manipulate"), labels))
    edits = flat + alphas[:, None] * direction[None]
    return model.decode(model.unflatten_latents(edits), None if label is None else np.full([alphas.size], label))


def load_image(path: str, image_shape: Sequence[int], resize: bool = False) -> np.ndarray:
    """Reads a PNG/JPEG/BMP/GIF file as uint8 ``[H, W, C]`` for a model of ``image_shape``.

    An image whose channels differ from the model's is converted (gray <-> RGB as
    :func:`glow_tf.data.transforms.convert_channels`; alpha is dropped) with a
    logged note naming the file. With ``resize`` the largest central square is
    cropped and resized (area) to the model's size.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the image has another size and ``resize`` is False.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No image file {path!r}.")
    height, width, channels = (int(d) for d in image_shape)
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    have = int(image.shape[-1])
    if have != channels:
        kinds = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}
        logging.warning(
            "%s: converting a %s image to %s for this %d-channel model.",
            path,
            kinds.get(have, f"{have}-channel"),
            kinds[channels],
            channels,
        )
        image = transforms.convert_channels(image[..., :1] if have == 2 else image, channels)
    if tuple(image.shape[:2]) != (height, width):
        if not resize:
            raise ValueError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]}, the model takes {height}x{width} "
                "(pass resize=True / --resize to centre-crop and resize)."
            )
        side = min(int(image.shape[0]), int(image.shape[1]))
        image = tf.image.resize_with_crop_or_pad(image, side, side)
        image = tf.cast(tf.round(tf.image.resize(image, [height, width], method="area")), tf.uint8)
    return image.numpy()


def save_pngs(images: Mapping[str, np.ndarray], out_dir: str, prefix: str = "") -> list[str]:
    """Writes ``name -> [H, W, C]`` uint8 images as ``out_dir/<prefix><name>.png``; returns the paths."""
    return [summaries.write_png(os.path.join(out_dir, f"{prefix}{name}.png"), img) for name, img in images.items()]
