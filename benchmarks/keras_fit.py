"""Keras ``fit`` against the Trainer's step: training throughput side by side in one process.

    python benchmarks/keras_fit.py [--config=bench-32] [--steps=10] [--rounds=4] [--threads=2]

Both train the same model from the same weights on the same uint8 batch (digits
resized to the image shape, drawn once: no input pipeline in either timing), with
the same config (``_bench_systems.trainer_config``: Adamax with warm-up, the
non-finite guard, glow_tf's CPU threads and batch shards):

* ``trainer``: ``glow_tf.train_lib.Trainer.train_step(batch)``, the loss pulled to
  the host after every step (as ``Trainer.train`` does);
* ``keras_fit``: ``glow_tf.keras.from_config(config).fit(...)`` on
  ``Dataset.from_tensors(batch).repeat()``, ``steps_per_epoch=--steps``; per step
  the time from ``on_train_batch_begin`` to ``on_train_batch_end`` (the step and its
  logs), and per epoch the wall time over its steps (adds the callbacks and the
  dataset iterator between steps).

Round 0 (tracing and warm-up) is not reported; then ``--rounds`` rounds alternate
``--steps`` Trainer steps with one Keras epoch of ``--steps`` steps, so load from
other processes hits both alike. Writes ``benchmarks/results/keras_fit-<time>.json``.
Not a test; compare only numbers from one run (the machine may be shared).
"""

import os
import statistics
import tempfile
import time

import _harness
from absl import flags

flags.DEFINE_string("config", "bench-32", "A benchmark config of benchmarks/_bench_systems.py (CONFIGS).")
flags.DEFINE_integer("steps", 10, "Timed steps per round and system.")
flags.DEFINE_integer("rounds", 4, "Timed rounds (after one untimed warm-up round).")
flags.DEFINE_integer("threads", 2, "CPU cores (glow_tf.parallelism.configure_cpu_threads).")
flags.DEFINE_string("out", _harness.RESULTS, "Folder of the JSON result.")
FLAGS = flags.FLAGS


def _rate(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"images_per_s": batch / median, "median_step_s": median, "min_s": min(times), "max_s": max(times)}


def main():
    from glow_tf import parallelism

    parallelism.configure_cpu_threads(FLAGS.threads)  # before TensorFlow runs an op

    import tensorflow as tf
    import tf_keras
    from _bench_systems import CONFIGS, RunOptions, trainer_config

    import glow_tf.keras
    from glow_tf import train_lib

    bench = CONFIGS[FLAGS.config]
    config = trainer_config(bench, RunOptions(threads=FLAGS.threads))
    trainer = train_lib.Trainer(config, tempfile.mkdtemp(prefix="bench_keras_trainer_"))
    trainer.initialize()
    batch = next(iter(trainer.make_dataset(0)))
    model = glow_tf.keras.from_config(config)
    for mine, theirs in zip(model.glow.variables, trainer.model.variables):
        mine.assign(theirs)
    dataset = tf.data.Dataset.from_tensors(batch).repeat()

    class StepTimer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.steps, self.epoch_start = [], time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append(time.perf_counter() - self.start)

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_s = time.perf_counter() - self.epoch_start

    timer = StepTimer()
    trainer_steps, keras_steps, keras_epoch_steps = [], [], []
    first = {}
    for round_index in range(FLAGS.rounds + 1):
        times = []
        for _ in range(FLAGS.steps):
            start = time.perf_counter()
            float(trainer.train_step(batch)["loss"])
            times.append(time.perf_counter() - start)
        model.fit(dataset, epochs=1, steps_per_epoch=FLAGS.steps, verbose=0, callbacks=[timer])
        if round_index == 0:
            first = {"trainer_first_step_s": times[0], "keras_first_step_s": timer.steps[0]}
            continue
        trainer_steps += times
        keras_steps += timer.steps
        keras_epoch_steps.append(timer.epoch_s / FLAGS.steps)
        print(
            f"round {round_index}: trainer {statistics.median(times):.3f} s/step, keras fit "
            f"{statistics.median(timer.steps):.3f} s/step ({timer.epoch_s / FLAGS.steps:.3f} s/step over the epoch)"
        )
    b = trainer.global_batch
    results = {
        "timestamp": _harness.timestamp(),
        "config": FLAGS.config,
        "model": {
            "image_shape": list(bench.image_shape),
            "num_levels": bench.num_levels,
            "num_steps": bench.num_steps,
            "hidden_width": bench.hidden_width,
            "batch_size": b,
            "batch_shards": [trainer.model.batch_shards, model.glow.batch_shards],
        },
        "threads": {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "steps_per_round": FLAGS.steps,
        "rounds": FLAGS.rounds,
        "trainer_train_step": _rate(trainer_steps, b),
        "keras_fit_step": _rate(keras_steps, b),
        "keras_fit_epoch_per_step": _rate(keras_epoch_steps, b),
        **first,
        "loadavg_end": list(os.getloadavg()),
        "caveat": "Shared machine: other processes may run at the same time; compare numbers of one run only.",
    }
    print(f"{'system':<34}{'images/s':>10}{'median s/step':>15}")
    for key in ("trainer_train_step", "keras_fit_step", "keras_fit_epoch_per_step"):
        print(f"{key:<34}{results[key]['images_per_s']:>10.1f}{results[key]['median_step_s']:>15.3f}")
    path = _harness.write_json(results, _harness.result_path(f"keras_fit-{results['timestamp']}", FLAGS.out))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
