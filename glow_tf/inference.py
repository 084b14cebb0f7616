"""Building a ``Glow`` from a training config and restoring a trained run for inference."""

from __future__ import annotations

import os

import ml_collections
import tensorflow as tf

from glow_tf import checkpointing, config_lib, data, optim, parallelism, workdirs
from glow_tf.model import Glow
from glow_tf.workdirs import CHECKPOINT_KINDS

__all__ = ["build_model", "restore_for_inference", "CHECKPOINT_KINDS"]


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
    if checkpoint not in CHECKPOINT_KINDS:
        raise ValueError(f"checkpoint must be one of {tuple(CHECKPOINT_KINDS)}, got {checkpoint!r}.")
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
