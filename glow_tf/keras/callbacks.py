"""Keras callbacks for training a :class:`glow_tf.keras.GlowModel`.

* :class:`DataDependentInit` -- the actnorm init on training images before the first
  step (``on_train_begin``), skipped when the model is already initialised (restored
  by ``BackupAndRestore`` or ``load_weights``).
* :class:`SampleGrids` -- sample grids at given temperatures every N epochs or steps,
  as PNG files and TensorBoard images (the Trainer's ``samples/`` and ``train/`` layout).
* :class:`NonFiniteGuard` -- logs each skipped (non-finite) update and stops training
  after ``max_nonfinite_steps`` in a row (``GlowModel.fit`` adds one by default).

They are ``tf_keras`` callbacks, used with ``tf_keras``' own (``TensorBoard``,
``ModelCheckpoint``, ``BackupAndRestore``, ``LearningRateScheduler``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import tf_keras
from absl import logging

from glow_tf import _validate, config_lib, distribute, summaries
from glow_tf.evaluation import _SAMPLE_SEED
from glow_tf.keras.model import GlowModel
from glow_tf.train_lib import NonFiniteLossError

__all__ = ["DataDependentInit", "SampleGrids", "NonFiniteGuard", "RequireInitialized"]


def _glow_model(callback: tf_keras.callbacks.Callback) -> GlowModel:
    if not isinstance(callback.model, GlowModel):
        raise ValueError(f"{type(callback).__name__} works with a glow_tf.keras.GlowModel, got {type(callback.model)}.")
    return callback.model


def take_images(source, num_images: int, conditional: bool):
    """The first ``num_images`` images (and labels) of a dataset of batches, or of arrays.

    Args:
      source: a ``tf.data.Dataset`` of batches (images or ``(images, labels)``), an
        images array, or an ``(images, labels)`` pair of arrays.
      num_images: how many to take (fewer if the source holds fewer).
      conditional: also return the labels (an error when the source has none).

    Returns:
      ``(images, labels or None)`` tensors with at most ``num_images`` rows.
    """
    if isinstance(source, tf.data.Dataset):
        images, labels, count = [], [], 0
        for batch in source:
            batch = batch if isinstance(batch, (tuple, list)) else (batch,)
            images.append(batch[0])
            labels.append(batch[1] if len(batch) > 1 else None)
            count += int(batch[0].shape[0])
            if count >= num_images:
                break
        if not images:
            raise ValueError("DataDependentInit: the dataset is empty.")
        has_labels = all(label is not None for label in labels)
        images = tf.concat(images, 0)
        labels = tf.concat(labels, 0) if has_labels else None
    elif isinstance(source, (tuple, list)):
        images, labels = (tf.convert_to_tensor(a) for a in source)
    else:
        images, labels = tf.convert_to_tensor(source), None
    if conditional and labels is None:
        raise ValueError("DataDependentInit: the Glow is class-conditional; the data must yield (images, labels).")
    return images[:num_images], (labels[:num_images] if conditional else None)


class DataDependentInit(tf_keras.callbacks.Callback):
    """Runs ``model.initialize`` on ``num_images`` training images before the first step.

    Skipped when the model is already initialised (restored by ``BackupAndRestore``,
    which ``GlowModel.fit`` always runs first, or by ``load_weights``). The init runs
    in cross-replica context, so under a strategy every replica gets identical
    variables; uint8 images get the Trainer's init noise. With several workers, give
    every worker the same deterministic data (as the Trainer does), so all agree.

    Args:
      data: a ``tf.data.Dataset`` of batches of uint8 images or ``(images, labels)``
        (e.g. the training dataset), or arrays (see :func:`take_images`).
      num_images: images for the init (the Trainer's ``train.n_init``; 256 by default).
    """

    def __init__(self, data, num_images: int = 256):
        super().__init__()
        self.data = data
        self.num_images = _validate.positive_int(num_images, "num_images")
        self.ran = False

    def on_train_begin(self, logs=None):
        model = _glow_model(self)
        self.ran = False
        if model.initialized:
            logging.info("DataDependentInit: the model is already initialised (restored); skipped.")
            return
        images, labels = take_images(self.data, self.num_images, model.conditional)
        self.ran = model.initialize(images, labels)
        logging.info("Data-dependent init on %d images.", int(images.shape[0]))


class RequireInitialized(tf_keras.callbacks.Callback):
    """Fails ``fit`` with a clear message when the Glow has had no data-dependent init (added by ``fit``, last)."""

    def on_train_begin(self, logs=None):
        if not _glow_model(self).initialized:
            raise ValueError(
                "GlowModel.fit: the Glow has not had its data-dependent init; pass "
                "glow_tf.keras.DataDependentInit(train_data) in callbacks, call model.initialize(images), or restore "
                "trained weights (load_weights) first."
            )


class NonFiniteGuard(tf_keras.callbacks.Callback):
    """Logs every skipped update and stops training after ``max_nonfinite_steps`` of them in a row.

    ``GlowModel.train_step`` skips any update whose loss or gradient norm is not
    finite (weights and optimizer untouched); this callback reads the step's
    ``nonfinite_in_a_row`` count and raises :class:`glow_tf.train_lib.NonFiniteLossError`.

    Args:
      max_nonfinite_steps: consecutive skipped updates that stop training (the
        Trainer's ``train.max_nonfinite_steps``, 20 by default).
    """

    def __init__(self, max_nonfinite_steps: int = 20):
        super().__init__()
        self.max_nonfinite_steps = _validate.positive_int(max_nonfinite_steps, "max_nonfinite_steps")

    def on_train_batch_end(self, batch, logs=None):
        count = int((logs or {}).get("nonfinite_in_a_row", 0))
        if not count:
            return
        step = int(self.model.step.numpy())
        logging.warning(
            "step %d: non-finite loss or gradient norm %s; update skipped (%d in a row).",
            step,
            (logs or {}).get("grad_norm"),
            count,
        )
        if count >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{count} non-finite updates in a row up to step {step}; stopping. Lower the learning rate, add "
                "warm-up (glow_tf.optim.LinearWarmup) or set GlowModel(grad_clip_norm=...)."
            )


class SampleGrids(tf_keras.callbacks.Callback):
    """Sample grids at several temperatures, as PNG files and TensorBoard images.

    Writes ``log_dir/samples/step<step>_samples_T<t>.png`` and image summaries
    ``samples/T<t>`` in ``log_dir/train`` (next to ``tf_keras.callbacks.TensorBoard``'s
    scalars when given the same ``log_dir``), at the global training step
    (``model.step``), on the chief only. The latent noise is fixed (the same draw at
    every step and temperature, as the Trainer's grids); a class-conditional Glow
    samples the classes ``0, 1, ...`` in turn.

    Args:
      log_dir: the run's folder.
      temperatures: sampling temperatures (default: the paper's 0, .25, .5, .6, .7, .8, .9, 1).
      num_samples: images per grid.
      every_n_epochs: write after every N-th epoch (0: never).
      every_n_steps: also write every N training steps (0: never).
      png: also write PNG files (else TensorBoard only).
    """

    def __init__(
        self,
        log_dir: str,
        temperatures: Sequence[float] = config_lib.PAPER_TEMPERATURES,
        num_samples: int = 16,
        every_n_epochs: int = 1,
        every_n_steps: int = 0,
        png: bool = True,
    ):
        super().__init__()
        self._supports_tf_logs = True  # reads no logs: Keras need not copy them to NumPy for this callback
        self.log_dir = os.fspath(log_dir)
        self.temperatures = [_validate.number(t, "every temperature", 0.0) for t in temperatures]
        if not self.temperatures:
            raise ValueError("SampleGrids needs at least one temperature.")
        self.num_samples = _validate.positive_int(num_samples, "num_samples")
        self.every_n_epochs = _validate.integer(every_n_epochs, "every_n_epochs", minimum=0)
        self.every_n_steps = _validate.integer(every_n_steps, "every_n_steps", minimum=0)
        self.png = bool(png)
        self.paths: list[str] = []  # every PNG written
        self._writers = None
        self._last_step = None

    def grids(self) -> dict[str, np.ndarray]:
        """``{"samples/T0.70": [H, W, C] uint8 grid, ...}`` at the model's current weights."""
        model = _glow_model(self)
        n = self.num_samples
        labels = tf.range(n, dtype=tf.int32) % model.glow.num_classes if model.conditional else None
        seed = tf.constant([model.seed, _SAMPLE_SEED], tf.int64)
        names = summaries.temperature_names(self.temperatures)
        return {
            name: summaries.image_grid(model.sample(n, t, labels=labels, seed=seed).numpy())
            for name, t in zip(names, self.temperatures)
        }

    def write(self) -> list[str]:
        """Writes the grids at the current step; returns the PNG paths (none on other workers)."""
        model = _glow_model(self)
        step = int(model.step.numpy())
        if step == self._last_step or not distribute.is_chief(model.distribute_strategy):
            return []  # the epoch and step cadences met at this step, or another worker writes
        if self._writers is None:
            self._writers = summaries.RunWriters(self.log_dir)
        paths = self._writers.grids(self.grids(), step, png=self.png)
        self._last_step = step
        self.paths += paths
        return paths

    def on_train_batch_end(self, batch, logs=None):
        if self.every_n_steps and int(self.model.step.numpy()) % self.every_n_steps == 0:
            self.write()

    def on_epoch_end(self, epoch, logs=None):
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self.write()

    def on_train_end(self, logs=None):
        if self._writers is not None:
            self._writers.close()
            self._writers = None
