"""Choosing the ``tf.distribute`` strategy for a run, and who writes files.

* a TPU address given -> ``TPUStrategy``
* ``TF_CONFIG`` set     -> ``MultiWorkerMirroredStrategy`` (every worker runs the same command)
* several GPUs visible  -> ``MirroredStrategy`` over all of them
* otherwise             -> the default strategy (one CPU or GPU)
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

__all__ = ["make_strategy", "is_chief", "worker_index", "num_workers", "describe"]


def make_strategy(tpu: str = "") -> tf.distribute.Strategy:
    """The strategy for the visible hardware (see the module docstring).

    Args:
      tpu: a TPU address (``grpc://...`` or a TPU name); empty for none.

    Returns:
      The strategy; call this once per process, before building any model.
    """
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    elif os.environ.get("TF_CONFIG"):
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("Distribution: %s", describe(strategy))
    return strategy


def _cluster():
    return json.loads(os.environ.get("TF_CONFIG") or "{}")


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in a multi-worker run (0 elsewhere)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and resolver is not None:
        return int(resolver.task_id or 0)
    return 0


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Number of worker processes taking part (1 unless multi-worker)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        cluster = _cluster().get("cluster", {})
        return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))
    return 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and samples."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task = _cluster().get("task", {})
    cluster = _cluster().get("cluster", {})
    if task.get("type") == "chief":
        return True
    return "chief" not in cluster and task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def describe(strategy: tf.distribute.Strategy) -> str:
    """One line: strategy class, replicas in sync and workers."""
    return (
        f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s) "
        f"over {num_workers(strategy)} worker(s)"
    )
