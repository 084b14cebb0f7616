"""CPU parallelism: one thread per op, one batch shard per core.

Glow's ops at the usual sizes (a 3x3 convolution over ``16 x 16 x 12`` maps, a
``12 x 12`` matmul over every position) are too small to split well over threads:
TensorFlow's default (every op over every core) keeps 2 cores busy for ~1.6x the
work. Splitting the batch into independent shards inside the graph instead gives
the executor ``shards`` chains of single-threaded ops to run side by side. On the
2-core bench-32 model that is ~1.3x faster training and sampling (see the
README's performance table). On GPUs and TPUs nothing changes.

Usage (before TensorFlow runs its first op)::

    shards = glow_tf.parallelism.configure_cpu_threads()
    model.batch_shards = shards

``train.py`` and the Trainer do this by themselves (``config.train.batch_shards``).
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from glow_tf import _validate

__all__ = ["available_cores", "has_accelerator", "configure_cpu_threads", "auto_batch_shards"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def has_accelerator() -> bool:
    """True when TensorFlow sees a GPU or TPU (does not initialise the runtime)."""
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def configure_cpu_threads(cores: int | None = None) -> int:
    """On a CPU-only machine: one thread per op and ``cores`` ops at once.

    Sets TensorFlow's intra-op parallelism to 1 and its inter-op parallelism to
    ``cores``. Must run before TensorFlow executes its first op; later it only
    reports what the runtime already uses.

    Args:
      cores: parallel ops; default :func:`available_cores`.

    Returns:
      The batch shards to use with these settings (:func:`auto_batch_shards`).

    Raises:
      ValueError: for ``cores < 1``.
    """
    cores = available_cores() if cores is None else _validate.positive_int(cores, "cores")
    if has_accelerator() or cores == 1:
        return 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:
        logging.info("TensorFlow is already running; keeping its thread settings.")
    return auto_batch_shards()


def auto_batch_shards() -> int:
    """Batch shards that suit the runtime's current thread settings.

    The inter-op thread count when ops run single-threaded (intra-op parallelism 1)
    on a CPU-only machine, else 1.
    """
    if has_accelerator() or tf.config.threading.get_intra_op_parallelism_threads() != 1:
        return 1
    return max(1, tf.config.threading.get_inter_op_parallelism_threads() or available_cores())
