"""CPU parallelism: one thread per op, one batch slice per core, and the slicing itself.

Glow's ops at the usual sizes (a 3x3 convolution over ``16 x 16 x 12`` maps, a
``12 x 12`` matmul over every position) are too small to split well over threads.
Splitting the batch into independent slices inside the graph instead
(:func:`map_shards`, ``Glow.batch_shards``) gives the executor one chain of
single-threaded ops per slice to run side by side. How much that gains on a given
machine: ``python benchmarks/bench_model.py --systems glow_tf_trainer
glow_tf_trainer_tf_threads`` (one slice per core against TensorFlow's default
threading). On GPUs and TPUs nothing changes.

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

__all__ = [
    "available_cores",
    "has_accelerator",
    "configure_cpu_threads",
    "configure_graph_optimizer",
    "CPU_GRAPPLER_OPTIONS",
    "auto_batch_shards",
    "map_shards",
]

# Grappler passes that cost seconds of start-up on glow_tf's CPU graphs and, measured, buy no run time
# there (benchmarks/grappler_options.py interleaves both settings in one process; first_calls.py
# --tf_grappler and bench_model.py's glow_tf_trainer_tf_grappler measure the defaults; the README's
# "Measured" section). What stays on (the remapper's conv/matmul + bias + relu fusions, the
# arithmetic optimiser, common subexpressions, pruning) is what the steps' speed depends on. Constant
# folding stays on too: turning it off changes results in the last float bits (the digits quick start's
# eval bits/dim at step 250, 3.4253 -> 3.4248), and these options must not change a number.
CPU_GRAPPLER_OPTIONS = {
    "function_optimization": False,  # specialises a flow step's traced function for each of its K x L calls
    "dependency_optimization": False,
    "layout_optimizer": False,  # NHWC -> NCHW, for GPUs
    "loop_optimization": False,  # the graphs have no loops
    "implementation_selector": False,  # swaps in cuDNN kernels
}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def has_accelerator() -> bool:
    """True when TensorFlow sees a GPU or TPU (does not initialise the runtime)."""
    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def configure_cpu_threads(cores: int | None = None, graph_optimizer: bool = True) -> int:
    """On a CPU-only machine: one thread per op and ``cores`` ops at once, and a lighter graph optimiser.

    Sets TensorFlow's intra-op parallelism to 1 and its inter-op parallelism to
    ``cores``. Must run before TensorFlow executes its first op; later it only
    reports what the runtime already uses. With ``graph_optimizer``, also
    :func:`configure_graph_optimizer` (process-wide, like the threads).

    Args:
      cores: parallel ops; default :func:`available_cores`.
      graph_optimizer: also turn off the grappler passes of :data:`CPU_GRAPPLER_OPTIONS`.

    Returns:
      The batch shards to use with these settings (:func:`auto_batch_shards`).

    Raises:
      ValueError: for ``cores < 1``.
    """
    cores = available_cores() if cores is None else _validate.positive_int(cores, "cores")
    if graph_optimizer:
        configure_graph_optimizer()  # on one core too: it is about start-up, not threads
    if has_accelerator() or cores == 1:
        return 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
    except RuntimeError:
        logging.info("TensorFlow is already running; keeping its thread settings.")
    return auto_batch_shards()


def configure_graph_optimizer() -> None:
    """Turns off the grappler passes of :data:`CPU_GRAPPLER_OPTIONS` for this process.

    They cost a large share of each function's first call (at K=32, width 512, about
    2 s of the training step's 10 s first execution) and do not make glow_tf's CPU
    steps faster; they change no number (tested). Process-wide: it applies to every
    ``tf.function`` instantiated afterwards. A no-op when TensorFlow sees a GPU or
    TPU (the layout optimiser matters there).
    """
    if not has_accelerator():
        tf.config.optimizer.set_experimental_options(CPU_GRAPPLER_OPTIONS)


def auto_batch_shards() -> int:
    """Batch shards that suit the runtime's current thread settings.

    The inter-op thread count when ops run single-threaded (intra-op parallelism 1)
    on a CPU-only machine, else 1.
    """
    if has_accelerator() or tf.config.threading.get_intra_op_parallelism_threads() != 1:
        return 1
    return max(1, tf.config.threading.get_inter_op_parallelism_threads() or available_cores())


# ------------------------------------------------------------------ batch slices
def _slice_batch(structure, start: tf.Tensor, stop: tf.Tensor):
    """``t[start:stop]`` for every tensor ``t`` in a nested structure (None stays None)."""
    return tf.nest.map_structure(lambda t: None if t is None else t[start:stop], structure)


def _map_slice_lists(fn, structure):
    """``fn`` on every list of per-slice tensors in a walk's output (lists, tuples and named tuples of them)."""
    if isinstance(structure, list) and all(isinstance(v, tf.Tensor) for v in structure):
        return fn(structure)
    if isinstance(structure, tuple) and hasattr(structure, "_fields"):
        return type(structure)(*(_map_slice_lists(fn, s) for s in structure))
    if isinstance(structure, (list, tuple)):
        return type(structure)(_map_slice_lists(fn, s) for s in structure)
    return structure


def map_shards(walk, args: tuple, shards: int):
    """``walk`` over ``shards`` slices of the batch, outputs concatenated on axis 0.

    ``walk`` takes one list of slices per argument (every argument a tensor, a
    list of tensors or None, with the batch first) and returns a structure of
    such lists; it must compute each example independently. Slice ``i`` owns
    examples ``[B i / n, B (i + 1) / n)``; a slice that would be empty (``B < n``)
    computes one neighbouring example instead and keeps none of its outputs,
    as some CPU kernels mishandle empty batches. For the same reason a batch
    that may be empty (its size unknown when traced, or 0) runs with one zero
    example appended whose outputs are dropped, so ``B = 0`` gives empty outputs.
    """
    first_arg = tf.nest.flatten(args)[0]
    if first_arg.shape[0] is not None and first_arg.shape[0] > 0:
        return _map_nonempty_shards(walk, args, shards)
    batch = tf.shape(first_arg)[0]
    missing = tf.maximum(1 - batch, 0)

    def pad(t):
        if t is None:
            return None
        padded = tf.concat([t, tf.zeros(tf.concat([[missing], tf.shape(t)[1:]], 0), t.dtype)], 0)
        padded.set_shape(tf.TensorShape([None]).concatenate(t.shape[1:]))
        return padded

    out = _map_nonempty_shards(walk, tf.nest.map_structure(pad, args), shards)
    return tf.nest.map_structure(lambda t: t[:batch], out)


def _map_nonempty_shards(walk, args: tuple, shards: int):
    """:func:`map_shards` for a batch of at least one example."""
    batch = tf.shape(tf.nest.flatten(args)[0])[0]
    if shards == 1:
        kept = [args]
        bounds = None
    else:
        kept, bounds = [], []
        for i in range(shards):
            start, stop = (batch * i) // shards, (batch * (i + 1)) // shards
            first = tf.minimum(start, batch - 1)
            last = tf.maximum(stop, first + 1)
            kept.append(_slice_batch(args, first, last))
            bounds.append((start - first, stop - first))
    # One list of slices per argument (for a list argument, one list per entry).
    per_arg = [tf.nest.map_structure(lambda *parts: list(parts), *parts) for parts in zip(*kept)]
    outputs = walk(*per_arg)
    if bounds is None:
        return _map_slice_lists(lambda parts: parts[0], outputs)
    return _map_slice_lists(lambda parts: tf.concat([t[a:b] for t, (a, b) in zip(parts, bounds)], 0), outputs)
