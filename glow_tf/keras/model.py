"""``GlowModel``: a ``tf_keras.Model`` around a ``glow_tf.Glow`` (compile, fit, evaluate, predict).

The Keras model owns no maths of its own: its ``train_step`` is the Trainer's step
(``glow_tf.train_lib``) expressed as a Keras step, with the same pieces:

* inputs: uint8 images are dequantised by :func:`glow_tf.data.model_inputs` with the
  Trainer's stateless stream ``(seed, step, replica)``, ``step`` counting every
  training step run (:attr:`GlowModel.step`, checkpointed with the weights), so a
  Keras run and a Trainer run on the same batches draw the same noise; float images
  are taken to be in the model space already (``[-0.5, 0.5)``, dequantised) and used
  as they are;
* loss: ``model.objective(x, labels)["loss"]`` (bits/dim, plus ``weight_y`` times the
  class bits with the classifier head) averaged with ``tf.nn.compute_average_loss``
  over the global batch, gradients from a ``GradientTape`` over it, all-reduced
  over replicas;
* the update guard: :func:`glow_tf.optim.guard_gradients` (optional clipping); an
  update with a non-finite loss or gradient norm is skipped (weights and optimizer
  untouched), counted in :attr:`GlowModel.nonfinite_in_a_row`, and
  :class:`glow_tf.keras.NonFiniteGuard` stops training after too many in a row.

Evaluation noise is the Evaluator's (``seed + 2``, batch index, replica), so
``evaluate`` on ``glow_tf.data.make_eval_dataset`` batches gives the Trainer's test
bits/dim. Why tf_keras (Keras 2) and not Keras 3: see the README's "Keras" section.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import tensorflow as tf
import tf_keras

from glow_tf import _validate, data, optim, quantization
from glow_tf.evaluation import _EVAL_SEED_OFFSET
from glow_tf.export import export_model, latent_names
from glow_tf.model import Glow
from glow_tf.train_lib import _INIT_SEED_OFFSET

__all__ = ["GlowModel"]

_WEIGHT_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")


def _counter(name: str) -> tf.Variable:
    """A non-trainable int64 counter updated once per step (the first replica's update applies to all)."""
    return tf.Variable(
        0, dtype=tf.int64, trainable=False, name=name, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA
    )


def _is_keras3(obj, kind: str) -> bool:
    """True for a Keras 3 (``keras``, TF 2.21's ``tf.keras``) ``'optimizer'`` or ``'callback'``, not a tf_keras one."""
    keras = sys.modules.get("keras")  # a Keras 3 object exists only once Keras 3 is imported
    if keras is None:
        return False
    base = keras.optimizers.Optimizer if kind == "optimizer" else keras.callbacks.Callback
    return isinstance(obj, base)


class GlowModel(tf_keras.Model):
    """A Keras model that trains, evaluates, encodes and samples a ``glow_tf.Glow``.

    Build the Glow and this model in the same ``strategy.scope()`` (when training
    under a ``tf.distribute`` strategy), ``compile`` with a ``tf_keras`` optimizer
    (default ``Adamax(1e-3)``, or :func:`glow_tf.optim.make_optimizer` for the
    Trainer's Adamax with warm-up), and ``fit`` on batches of uint8 images or
    ``(images, labels)`` (labels are used only by a class-conditional Glow):

    * ``fit(ds, ...)`` logs ``loss`` and ``bits_per_dim`` (``class_bits`` with the
      classifier head) as means over the epoch's applied updates, and the step's
      ``grad_norm`` and ``nonfinite_in_a_row``;
    * ``evaluate(ds)``: ``loss``, ``bits_per_dim`` (``class_bits``), means over every
      image, with the Trainer's eval noise;
    * ``predict(ds)`` / ``model(images)`` / :meth:`encode`: ``{"latent_0": ...,
      "latent_{L-1}": ...}`` (the top last), deterministic: uint8 images are encoded at
      their bin midpoints, as the export's ``encode_deterministic``;
    * :meth:`decode` (uint8 images, the inverse of ``predict``), :meth:`sample` (uint8),
      :meth:`initialize` (the data-dependent init, see ``DataDependentInit``) and
      :meth:`export` (the SavedModel of :func:`glow_tf.export.export_model`).

    Weights are saved with ``save_weights`` / ``ModelCheckpoint(save_weights_only=True)``
    in the TensorFlow checkpoint format (the Glow's variables, :attr:`step`, and the
    optimizer); the Keras ``.h5`` / ``.keras`` formats and ``model.save`` would not
    hold the Glow's variables and are refused.

    Args:
      glow: the flow to train (its variables are this model's weights).
      seed: seed of the dequantisation noise (the Trainer's ``config.seed``).
      grad_clip_norm: > 0 clips the global gradient norm (``config.optim.grad_clip_norm``).
      name: the Keras model name.

    Raises:
      TypeError: ``glow`` is not a ``glow_tf.Glow``.
      ValueError: a bad ``seed`` or ``grad_clip_norm``, or a Glow built outside the
        strategy scope this model is built in.
    """

    def __init__(self, glow: Glow, seed: int = 0, grad_clip_norm: float = 0.0, name: str = "glow_model"):
        if not isinstance(glow, Glow):
            raise TypeError(f"GlowModel wraps a glow_tf.Glow, got {type(glow).__name__}.")
        super().__init__(name=name)
        strategy = self.distribute_strategy
        if not strategy.extended.variable_created_in_scope(glow.variables[0]):
            raise ValueError(
                "The Glow was built outside the tf.distribute strategy scope this GlowModel is built in; build both "
                "inside the same `with strategy.scope():`."
            )
        self.glow = glow
        self.seed = _validate.seed(seed)
        self.grad_clip_norm = _validate.number(grad_clip_norm, "grad_clip_norm", 0.0)
        self.conditional = glow.num_classes > 0
        self.step = _counter("step")  # training steps run (applied or skipped): keys the dequantisation noise
        self.nonfinite_in_a_row = _counter("nonfinite_in_a_row")
        self._eval_batch = _counter("eval_batch")  # batch index inside one evaluate(): keys the eval noise
        names = ["loss", "bits_per_dim"] + (["class_bits"] if glow.classifier is not None else [])
        self._trackers = [tf_keras.metrics.Mean(name=n) for n in names]
        self._sample_function = None
        # Every value a step returns is already reduced over replicas (all-reduced means, synced metrics).
        self.distribute_reduction_method = "first"
        self.built = True  # every variable exists (the Glow's are built with it)

    # ------------------------------------------------------------ properties
    @property
    def metrics(self) -> list:
        """The ``loss``, ``bits_per_dim`` (and ``class_bits``) means that ``fit`` and ``evaluate`` report."""
        return list(self._trackers)

    @property
    def initialized(self) -> bool:
        """True once the Glow has had its data-dependent init (or was restored)."""
        return self.glow.initialized

    # ----------------------------------------------------------------- inputs
    def _split(self, batch, what: str):
        """``(images, labels or None)`` of a batch: images, ``(images,)`` or ``(images, labels)``."""
        images, labels, sample_weight = tf_keras.utils.unpack_x_y_sample_weight(batch)
        if sample_weight is not None:
            raise ValueError(f"{what}: GlowModel does not take sample weights; batches are images or (images, labels).")
        if isinstance(images, (tuple, list)) and len(images) == 2 and labels is None:
            images, labels = images  # model((images, labels)) / predict on ((images, labels),) batches
        if not self.conditional:
            return images, None  # glow_tf.data yields labels for every dataset; an unconditional Glow ignores them
        if labels is None:
            raise ValueError(
                f"{what}: the Glow is class-conditional ({self.glow.num_classes} classes); batches must be "
                "(images, labels)."
            )
        return images, tf.cast(labels, tf.int32)

    def _model_space(self, images, seed: int | None = None, step=0, replica=0) -> tf.Tensor:
        """uint8 images -> model inputs (the seeded stream, or bin midpoints if ``seed`` is None); floats as given."""
        images = tf.convert_to_tensor(images)
        if images.dtype == tf.uint8:
            if seed is None:
                return data.deterministic_inputs(images, self.glow.n_bits, self.glow.dtype)
            return data.model_inputs(images, self.glow.n_bits, seed, step, replica, dtype=self.glow.dtype)
        if images.dtype.is_floating:
            return tf.cast(images, self.glow.dtype)
        raise ValueError(
            f"GlowModel expects uint8 images, or float images already in the model space [-0.5, 0.5), got dtype "
            f"{images.dtype.name}."
        )

    # ------------------------------------------------------------------ steps
    def _loss_and_grads(self, x: tf.Tensor, labels):
        """Replica context: per-example objective terms, the global mean loss and its gradients (all-reduced).

        As the Trainer's step: ``compute_average_loss`` over the global batch, summed
        over replicas, so every replica holds the same loss and gradients.
        """
        ctx = tf.distribute.get_replica_context()
        # Every replica's examples: exact also for a short last batch split unevenly over replicas.
        global_batch = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.shape(x, out_type=tf.int64)[0])
        with tf.GradientTape() as tape:
            out = self.glow.objective(x, labels)
            loss = tf.nn.compute_average_loss(out["loss"], global_batch_size=global_batch)
        variables = self.glow.trainable_variables
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        loss, grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, (loss, grads))
        return out, loss, grads

    def _update_trackers(self, out: Mapping[str, tf.Tensor], keep: tf.Tensor | None = None) -> dict:
        """Adds per-example values to the means (only where ``keep``) and returns every mean."""
        for tracker in self._trackers:
            values = out[tracker.name]
            if keep is None:
                tracker.update_state(values)
            else:  # a skipped update leaves the means unchanged (and a NaN never enters them)
                tracker.update_state(
                    tf.where(keep, values, tf.zeros_like(values)),
                    sample_weight=tf.cast(keep, values.dtype) * tf.ones_like(values),
                )
        return {tracker.name: tracker.result() for tracker in self._trackers}

    def _apply_gradients(self, grads: Sequence[tf.Tensor]) -> None:
        """Replica context: applies already all-reduced gradients."""
        pairs = list(zip(grads, self.glow.trainable_variables))
        # Accepted by tf_keras' legacy and new optimizers alike.
        self.optimizer.apply_gradients(pairs, experimental_aggregate_gradients=False)

    def _apply_or_skip(self, strategy: tf.distribute.Strategy, grads, finite) -> None:
        """Cross-replica context (``merge_call``): the update if ``finite``, then the step counters.

        As ``tf_keras``' ``LossScaleOptimizer`` skips its non-finite updates: a
        ``tf.cond`` that calls back into every replica to apply the gradients.
        """
        finite = tf.reduce_all(tf.stack(strategy.experimental_local_results(finite)))

        def apply():
            strategy.extended.call_for_each_replica(self._apply_gradients, args=(grads,))
            return tf.constant(True)

        tf.cond(finite, apply, lambda: tf.constant(False))
        self.step.assign_add(1)
        self.nonfinite_in_a_row.assign(tf.where(finite, tf.zeros([], tf.int64), self.nonfinite_in_a_row + 1))

    def train_step(self, batch) -> dict:
        """One update on a batch of uint8 images or ``(images, labels)`` (see the module docstring)."""
        images, labels = self._split(batch, "fit")
        ctx = tf.distribute.get_replica_context()
        x = self._model_space(images, self.seed, self.step.read_value(), ctx.replica_id_in_sync_group)
        out, loss, grads = self._loss_and_grads(x, labels)
        grads, norm, finite = optim.guard_gradients(loss, grads, self.grad_clip_norm)
        ctx.merge_call(self._apply_or_skip, args=(grads, finite))
        logs = self._update_trackers(out, finite)
        return {**logs, "grad_norm": norm, "nonfinite_in_a_row": self.nonfinite_in_a_row.read_value()}

    def test_step(self, batch) -> dict:
        """Objective terms of a batch with the Evaluator's noise (``seed + 2``, batch index, replica)."""
        images, labels = self._split(batch, "evaluate")
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        x = self._model_space(images, self.seed + _EVAL_SEED_OFFSET, self._eval_batch.read_value(), replica)
        out = self.glow.objective(x, labels)
        self._eval_batch.assign_add(1)
        return self._update_trackers(out)

    def reset_metrics(self) -> None:
        """Resets the means, and the eval batch index (``evaluate`` calls this first: the same noise every time)."""
        super().reset_metrics()
        self._eval_batch.assign(0)

    def predict_step(self, batch) -> dict:
        """The deterministic latents of a batch (``predict`` concatenates them over batches)."""
        images, labels = self._split(batch, "predict")
        return self.encode(images, labels)

    def call(self, inputs, training=None) -> dict:
        """``model(images)`` or ``model((images, labels))``: the deterministic latents, as :meth:`encode`."""
        images, labels = self._split(inputs, "call")
        return self.encode(images, labels)

    # ------------------------------------------------------------- inference
    def encode(self, images, labels=None) -> dict[str, tf.Tensor]:
        """``{"latent_0": eps_0, ..., "latent_{L-1}": eps_top}`` of uint8 images (at bin midpoints) or floats."""
        latents = self.glow.encode(self._model_space(images), labels)
        return dict(zip(latent_names(self.glow.num_levels), latents))

    def decode(self, latents: Mapping[str, tf.Tensor] | Sequence[tf.Tensor], labels=None) -> tf.Tensor:
        """uint8 images from latents (a dict as :meth:`encode` returns, or the list of levels)."""
        if isinstance(latents, Mapping):
            names = latent_names(self.glow.num_levels)
            if sorted(latents) != sorted(names):
                raise ValueError(f"decode expects the latents {names}, got {sorted(latents)}.")
            latents = [latents[n] for n in names]
        return quantization.postprocess(self.glow.decode(list(latents), labels), self.glow.n_bits)

    def sample(self, num_samples: int, temperature: float = 0.7, labels=None, seed=None) -> tf.Tensor:
        """``[num_samples, H, W, C]`` uint8 samples at a temperature (see ``Glow.sample``).

        Args:
          num_samples: number of images (>= 0).
          temperature: ``T >= 0``; it scales the noise only.
          labels: ``[num_samples]`` class ids for a class-conditional Glow.
          seed: optional shape-[2] int seed for reproducible samples.

        Raises:
          ValueError: for a negative ``num_samples`` or ``temperature``, or labels
            missing (or given) for a class-conditional (or unconditional) Glow.
        """
        num_samples = _validate.integer(num_samples, "num_samples", minimum=0)
        temperature = _validate.number(temperature, "temperature", 0.0)
        if self.conditional != (labels is not None):
            need = f"is class-conditional ({self.glow.num_classes} classes): pass labels"
            raise ValueError(f"sample: the Glow {need if self.conditional else 'is unconditional: pass no labels'}.")
        if self._sample_function is None:
            self._sample_function = tf.function(self._sample, autograph=False, reduce_retracing=True)
        seed = tf.random.uniform([2], maxval=2**62, dtype=tf.int64) if seed is None else tf.cast(seed, tf.int64)
        labels = None if labels is None else tf.cast(labels, tf.int32)
        return self._sample_function(tf.constant(num_samples), tf.constant(temperature, tf.float32), seed, labels)

    def _sample(self, num_samples, temperature, seed, labels):
        images = self.glow.sample(num_samples, temperature, labels=labels, seed=seed)
        return quantization.postprocess(images, self.glow.n_bits)

    def initialize(self, images, labels=None, force: bool = False) -> bool:
        """Data-dependent actnorm init on one batch (skipped when already initialised, unless ``force``).

        uint8 images get the Trainer's init noise (``seed + 1``, step 0). Runs in
        cross-replica context, so every replica gets identical variables.

        Returns:
          True if the init ran.
        """
        if self.conditional and labels is None:
            raise ValueError(
                f"initialize: the Glow is class-conditional ({self.glow.num_classes} classes); pass labels."
            )
        x = self._model_space(images, self.seed + _INIT_SEED_OFFSET, 0)
        labels = tf.cast(labels, tf.int32) if self.conditional else None
        with self.distribute_strategy.scope():
            return self.glow.initialize(x, labels, force=force)

    # ---------------------------------------------------------------- compile
    def compile(self, optimizer="adamax", **kwargs) -> None:
        """``tf_keras.Model.compile`` with the Glow objective as the loss; creates the optimizer's slots now.

        Args:
          optimizer: a ``tf_keras`` optimizer (legacy or new), or its name.
          **kwargs: other ``compile`` arguments (``steps_per_execution``, ``jit_compile``, ...);
            ``loss``, ``metrics`` and ``loss_weights`` are the Glow's own and may not be given.

        Raises:
          ValueError: for a Keras 3 optimizer, or a ``loss`` / ``metrics`` argument.
        """
        for key in ("loss", "metrics", "loss_weights", "weighted_metrics"):
            if kwargs.get(key) is not None:
                raise ValueError(
                    f"GlowModel.compile: {key}= is not supported; the loss is the Glow objective and fit/evaluate "
                    "report loss, bits_per_dim (and class_bits)."
                )
        if _is_keras3(optimizer, "optimizer"):
            raise ValueError(
                "GlowModel is a tf_keras (Keras 2) model; pass a tf_keras optimizer (e.g. tf_keras.optimizers.Adamax "
                f"or glow_tf.optim.make_optimizer), not the Keras 3 {type(optimizer).__name__} of keras / tf.keras."
            )
        super().compile(optimizer=optimizer, **kwargs)
        variables = self.glow.trainable_variables
        # Slots created here, in the strategy's scope: the compiled step creates no variables (its update runs
        # under a tf.cond), and a restored checkpoint fills the slots at once.
        with self.distribute_strategy.scope():
            if isinstance(self.optimizer, tf_keras.optimizers.legacy.Optimizer):
                optim.create_slots(self.optimizer, variables)
            else:
                self.optimizer.build(variables)

    # -------------------------------------------------------- fit and friends
    def _callbacks(self, callbacks, what: str, training: bool = False) -> list:
        from glow_tf.keras import callbacks as glow_callbacks  # the callbacks module imports this one

        if isinstance(callbacks, tf_keras.callbacks.CallbackList):  # fit's own list, passed on to its evaluate
            return callbacks
        callbacks = list(callbacks or [])
        for cb in callbacks:
            if _is_keras3(cb, "callback"):
                raise ValueError(
                    f"GlowModel.{what}: {type(cb).__name__} is a Keras 3 callback (keras / tf.keras); GlowModel is a "
                    f"tf_keras model: use tf_keras.callbacks.{type(cb).__name__}."
                )
        if not training:
            return callbacks
        # The init runs after a BackupAndRestore restore (then it is skipped), whatever the order given.
        inits = [cb for cb in callbacks if isinstance(cb, glow_callbacks.DataDependentInit)]
        callbacks = [cb for cb in callbacks if cb not in inits]
        last_restore = max(
            (i for i, cb in enumerate(callbacks) if isinstance(cb, tf_keras.callbacks.BackupAndRestore)), default=-1
        )
        callbacks[last_restore + 1 : last_restore + 1] = inits
        if not any(isinstance(cb, glow_callbacks.NonFiniteGuard) for cb in callbacks):
            callbacks.append(glow_callbacks.NonFiniteGuard())
        return [*callbacks, glow_callbacks.RequireInitialized()]

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None, **kwargs):
        """``tf_keras.Model.fit``; adds a ``NonFiniteGuard()`` unless one is given.

        ``DataDependentInit`` callbacks run after any ``BackupAndRestore`` (so a
        restored run skips the init), and training an uninitialised Glow is an error.
        """
        callbacks = self._callbacks(callbacks, "fit", training=True)
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, callbacks=None, **kwargs):
        """``tf_keras.Model.evaluate``: ``loss``, ``bits_per_dim`` (``class_bits``) over every image."""
        return super().evaluate(x, y, *args, callbacks=self._callbacks(callbacks, "evaluate"), **kwargs)

    def predict(self, x, *args, callbacks=None, **kwargs):
        """``tf_keras.Model.predict``: ``{"latent_i": [N, ...]}``, the deterministic latents of every image."""
        return super().predict(x, *args, callbacks=self._callbacks(callbacks, "predict"), **kwargs)

    # ---------------------------------------------------------------- saving
    @staticmethod
    def _check_weights_path(filepath, save_format=None) -> None:
        if str(filepath).endswith(_WEIGHT_FILE_SUFFIXES) or save_format == "h5":
            raise ValueError(
                f"GlowModel weights are saved in the TensorFlow checkpoint format: {str(filepath)!r} names a Keras "
                f"{'/'.join(_WEIGHT_FILE_SUFFIXES)} file, which would hold none of the Glow's variables; use a path "
                "without that suffix (e.g. 'ckpt/weights')."
            )

    def save_weights(self, filepath, overwrite=True, save_format=None, options=None):
        """Saves the Glow's variables, :attr:`step` and the optimizer in the TensorFlow checkpoint format."""
        self._check_weights_path(filepath, save_format)
        return super().save_weights(filepath, overwrite=overwrite, save_format="tf", options=options)

    def load_weights(self, filepath, skip_mismatch=False, by_name=False, options=None):
        """Restores what :meth:`save_weights` (or ``ModelCheckpoint(save_weights_only=True)``) wrote."""
        self._check_weights_path(filepath)
        return super().load_weights(filepath, skip_mismatch=skip_mismatch, by_name=by_name, options=options)

    def save(self, filepath, *args, **kwargs):
        """Not supported: use :meth:`save_weights` (training state) or :meth:`export` (a SavedModel)."""
        raise NotImplementedError(
            "GlowModel cannot be saved as a Keras model (model.save, ModelCheckpoint(save_weights_only=False)); use "
            "save_weights / ModelCheckpoint(save_weights_only=True) for training state, or model.export(dir) for a "
            "SavedModel."
        )

    def export(self, filepath: str, metadata: dict | None = None, overwrite: bool = True) -> str:
        """Writes the SavedModel of :func:`glow_tf.export.export_model` (same signatures); returns its folder.

        ``metadata`` (JSON-serialisable) is recorded with ``trained_with`` and ``step``
        in ``assets.extra/glow_export.json``.
        """
        info = {"trained_with": "glow_tf.keras.GlowModel", "step": int(self.step.numpy()), **(metadata or {})}
        return export_model(self.glow, filepath, metadata=info, overwrite=overwrite)
