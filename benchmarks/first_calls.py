"""Time to the first call of every entry point a user starts: train step, sample, encode, export.

    python benchmarks/first_calls.py --config=bench-32
    python benchmarks/first_calls.py --config=paper-width

Each entry point's first call pays for tracing and graph optimisation, and each
``train.py`` start, resume, eval run and sample/export tool pays it again. One process
per config, set up as ``train.py`` (``glow_tf.parallelism``: one thread per op, one
batch shard per core): the Trainer of ``benchmarks/bench_model.py`` (``trainer_config``:
the config's model on scikit-learn digits), then, each timed from its first call to
its result:

* ``Trainer.train_step`` (one batch);
* ``Glow.sample`` in a ``tf.function`` (16 images at T=0.7);
* ``Glow.encode`` in a ``tf.function`` (the batch);
* ``glow_tf.export.export_model`` (every SavedModel signature traced and written);
* ``tf.saved_model.load`` of that export, then its first ``bits_per_dim`` signature call
  (the batch), as a user or a serving process that loads it pays.

``--tf_grappler`` keeps TensorFlow's default graph optimiser instead of
``glow_tf.parallelism.CPU_GRAPPLER_OPTIONS`` (to measure what those save);
``--nostack_variables`` builds the model with one variable per weight of every flow
step instead of stacked ones (``config.model.stack_variables``, :mod:`glow_tf.stacking`).

Construction (strategy, dataset, summary writers) and the data-dependent init are
reported apart. Prints one line per entry point and writes
``benchmarks/results/first_calls-<config>-<time>.json``.
"""

from __future__ import annotations

import tempfile
import time

import _bench_systems
import _harness
from absl import flags

flags.DEFINE_enum("config", "bench-32", sorted(_bench_systems.CONFIGS), "Model size (as bench_model.py).")
flags.DEFINE_string("compute_dtype", "float32", "config.model.compute_dtype.")
flags.DEFINE_bool(
    "tf_grappler", False, "Keep TensorFlow's default grappler passes (not parallelism.CPU_GRAPPLER_OPTIONS)."
)
flags.DEFINE_bool(
    "stack_variables", True, "config.model.stack_variables (False: one variable per weight of every flow step)."
)
flags.DEFINE_string("out", "", "JSON path (default benchmarks/results/first_calls-<config>-<time>.json).")
FLAGS = flags.FLAGS


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    from glow_tf import parallelism

    parallelism.configure_cpu_threads(graph_optimizer=not FLAGS.tf_grappler)
    import tensorflow as tf

    import glow_tf
    from glow_tf import export, train_lib

    bench = _bench_systems.CONFIGS[FLAGS.config]
    config = _bench_systems.trainer_config(
        bench, _bench_systems.RunOptions(), FLAGS.compute_dtype, stack_variables=FLAGS.stack_variables
    )
    result = {
        "config": FLAGS.config,
        "compute_dtype": FLAGS.compute_dtype,
        "tf_grappler": FLAGS.tf_grappler,
        "stack_variables": FLAGS.stack_variables,
        "seconds": {},
    }
    seconds = result["seconds"]
    with tempfile.TemporaryDirectory() as workdir:
        seconds["construction"], trainer = _timed(lambda: train_lib.Trainer(config, workdir))
        seconds["data_dependent_init"], _ = _timed(trainer.initialize)
        batch = next(iter(trainer.make_dataset(0)))
        seconds["first_train_step"], _ = _timed(lambda: float(trainer.train_step(batch)["loss"]))
        model = trainer.model
        sample = tf.function(lambda: model.sample(16, 0.7))
        seconds["first_sample"], _ = _timed(lambda: sample().numpy())
        images = trainer.strategy.experimental_local_results(batch[0])[0]
        x = glow_tf.preprocess(images, config.data.n_bits)
        encode = tf.function(model.encode)
        seconds["first_encode"], _ = _timed(lambda: [z.numpy() for z in encode(x)])
        seconds["export"], path = _timed(lambda: export.export_model(model, f"{workdir}/export"))
        seconds["load_export"], loaded = _timed(lambda: tf.saved_model.load(path))
        uint8 = tf.cast(images, tf.uint8)
        seconds["first_loaded_bits_per_dim"], _ = _timed(
            lambda: loaded.signatures["bits_per_dim"](images=uint8)["bits_per_dim"].numpy()
        )
    result["batch_shards"] = model.batch_shards
    for name, value in seconds.items():
        print(f"{FLAGS.config:<12} {name:<22} {value:6.1f} s")
    name = f"first_calls-{FLAGS.config}-{_harness.timestamp()}"
    path = _harness.write_json(result, FLAGS.out or _harness.result_path(name))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
