"""Step and sample time with TensorFlow's default grappler passes and with ``parallelism.CPU_GRAPPLER_OPTIONS``.

    python benchmarks/grappler_options.py --config=bench-32 --rounds=6 --calls=15
    python benchmarks/grappler_options.py --config=paper-width --rounds=4 --calls=4

The lighter optimiser set is process-wide, so two processes would mix its effect with
the machine's load. Grappler options are read when a function is instantiated, and
TensorFlow keeps one instantiation per option set, so one process can hold both: one
``Trainer`` (``bench_model.py``'s ``trainer_config``) per set, each built, traced and
first called under its set; then every round sets each variant's options and times
``--calls`` training steps and ``--calls`` samples (16 images, T=0.7) of it, variants
in turn. Prints the first calls (the first variant also pays the process's one-off
costs, so ``first_calls.py --tf_grappler`` is the fair first-call comparison) and the
medians, and writes ``benchmarks/results/grappler_options-<config>-<time>.json``.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import _bench_systems
import _harness
from absl import flags

flags.DEFINE_enum("config", "bench-32", sorted(_bench_systems.CONFIGS), "Model size (as bench_model.py).")
flags.DEFINE_integer("rounds", 6, "Interleaved rounds.")
flags.DEFINE_integer("calls", 15, "Timed training steps (and samples) per variant per round.")
FLAGS = flags.FLAGS


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    from glow_tf import parallelism

    parallelism.configure_cpu_threads(graph_optimizer=False)  # the variants set their own options
    import tensorflow as tf

    from glow_tf import train_lib

    defaults = {name: True for name in parallelism.CPU_GRAPPLER_OPTIONS}
    variants = {"tf_default": defaults, "lighter": dict(parallelism.CPU_GRAPPLER_OPTIONS)}
    config = _bench_systems.trainer_config(_bench_systems.CONFIGS[FLAGS.config], _bench_systems.RunOptions())
    built, result = {}, {"config": FLAGS.config, "options": parallelism.CPU_GRAPPLER_OPTIONS, "variants": {}}
    for name, options in variants.items():
        tf.config.optimizer.set_experimental_options(options)
        trainer = train_lib.Trainer(config, tempfile.mkdtemp(prefix="grappler_options_"))
        trainer.initialize()
        batch = next(iter(trainer.make_dataset(0)))
        sample = tf.function(lambda model=trainer.model: model.sample(16, 0.7))
        step = lambda trainer=trainer, batch=batch: float(trainer.train_step(batch)["loss"])
        first = {"train_step": _timed(step), "sample": _timed(lambda sample=sample: sample().numpy())}
        built[name] = (step, lambda sample=sample: sample().numpy())
        result["variants"][name] = {"first_call_s": first, "train_s": [], "sample_s": []}
        print(f"{name:<10} first train_step {first['train_step']:.2f} s, first sample {first['sample']:.2f} s")
    for _ in range(FLAGS.rounds):
        for name, (step, sample) in built.items():
            tf.config.optimizer.set_experimental_options(variants[name])
            times = result["variants"][name]
            times["train_s"] += [_timed(step) for _ in range(FLAGS.calls)]
            times["sample_s"] += [_timed(sample) for _ in range(FLAGS.calls)]
    for name, times in result["variants"].items():
        times["train_median_s"] = statistics.median(times["train_s"])
        times["sample_median_s"] = statistics.median(times["sample_s"])
        train_ms, sample_ms = 1e3 * times["train_median_s"], 1e3 * times["sample_median_s"]
        print(f"{name:<10} train step median {train_ms:.1f} ms, sample median {sample_ms:.2f} ms")
    result["machine"] = _harness.machine_info()
    path = _harness.write_json(result, _harness.result_path(f"grappler_options-{FLAGS.config}-{_harness.timestamp()}"))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
