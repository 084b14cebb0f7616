"""Glow the Keras way: ``compile``, ``fit``, ``evaluate``, ``predict``, callbacks.

:class:`GlowModel` is a ``tf_keras.Model`` around a ``glow_tf.Glow`` whose
``train_step`` is the Trainer's step (fused objective, seeded dequantisation,
global-batch loss averaging, the non-finite guard); see :mod:`glow_tf.keras.model`.
The callbacks (:mod:`glow_tf.keras.callbacks`) add the data-dependent init, sample
grids and the stop after repeated non-finite updates. :func:`from_config` builds and
compiles a model from a training config exactly as the Trainer would.

Keras here is ``tf_keras`` (Keras 2, the Keras TFP 0.25 runs on), not Keras 3 (TF
2.21's ``tf.keras``): Keras 3 does not track the ``tf.Variable``s of the Glow's TFP
bijectors as weights (README, "Keras").
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from glow_tf import config_lib, optim
from glow_tf.keras.callbacks import DataDependentInit, NonFiniteGuard, SampleGrids
from glow_tf.keras.model import GlowModel
from glow_tf.train_lib import build_model

__all__ = ["GlowModel", "DataDependentInit", "NonFiniteGuard", "SampleGrids", "from_config"]


def from_config(config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy | None = None) -> GlowModel:
    """A compiled :class:`GlowModel` as the Trainer builds its run from ``config``.

    The Glow of ``train_lib.build_model(config)`` (batch shards capped at the
    per-replica batch, as the Trainer), the dequantisation ``seed`` and
    ``optim.grad_clip_norm`` of the config, compiled with
    :func:`glow_tf.optim.make_optimizer` (Adamax with the linear warm-up over the
    global batch). EMA (``optim.ema_decay``) is not applied by Keras training.

    Args:
      config: a training config (validated here).
      strategy: build the variables in this strategy's scope (default: the current one).

    Raises:
      ValueError: for an invalid config, or a batch not divisible by the replicas.
    """
    config_lib.validate_config(config)
    strategy = strategy or tf.distribute.get_strategy()
    global_batch = config_lib.global_batch_size(config, strategy.num_replicas_in_sync)
    with strategy.scope():
        glow = build_model(config)
        if not config.train.batch_shards:  # auto: never more slices than a replica has images
            glow.batch_shards = min(glow.batch_shards, global_batch // strategy.num_replicas_in_sync)
        model = GlowModel(glow, seed=config.seed, grad_clip_norm=config.optim.grad_clip_norm)
        model.compile(optimizer=optim.make_optimizer(config.optim, global_batch))
    return model
