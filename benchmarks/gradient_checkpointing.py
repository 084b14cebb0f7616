"""Peak memory and time of one training step with and without gradient checkpointing (64x64 by default).

    python benchmarks/gradient_checkpointing.py [--image_size=64 --levels=3 --steps=16 --width=128 --batch=16]

Each variant runs in its own process: ``Trainer.train_step`` (the real training step)
on 64x64x3 images (scikit-learn digits resized, so no download), one step to trace,
then ``--repeats`` timed steps. Peak memory is TF's allocator peak on the device
(``tf.config.experimental.get_memory_info``, reset after tracing), i.e. the tensors a
step keeps alive at once -- what checkpointing trades for recomputation. The
process's peak RSS is reported for context. Prints a table and writes
benchmarks/results/gradient_checkpointing.json. Not a test; on a shared machine the
times are noisy (the memory figures are not).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

flags.DEFINE_integer("image_size", 64, "Image side.")
flags.DEFINE_integer("levels", 3, "L.")
flags.DEFINE_integer("steps", 16, "K, flow steps per level.")
flags.DEFINE_integer("width", 128, "Coupling network width.")
flags.DEFINE_integer("batch", 16, "Global batch.")
flags.DEFINE_integer("repeats", 3, "Timed steps per variant.")
flags.DEFINE_string("_child", "", "Internal: 'on' or 'off' runs one variant and prints JSON.")
FLAGS = flags.FLAGS


def _peak_rss_mib() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(checkpointing: bool) -> dict:
    import tensorflow as tf

    from configs import default
    from glow_tf import train_lib

    config = default.get_config()
    config.data.name = "digits"
    config.data.image_size = FLAGS.image_size
    config.data.channels = 3
    config.model.num_levels = FLAGS.levels
    config.model.num_steps = FLAGS.steps
    config.model.hidden_width = FLAGS.width
    config.train.batch_size = FLAGS.batch
    config.train.n_init = FLAGS.batch
    config.train.gradient_checkpointing = checkpointing
    with tempfile.TemporaryDirectory() as workdir:
        trainer = train_lib.Trainer(config, workdir)
        trainer.initialize()
        batches = iter(trainer.make_dataset(0))
        start = time.perf_counter()
        float(trainer.train_step(next(batches))["loss"])
        first = time.perf_counter() - start
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        times = []
        for _ in range(FLAGS.repeats):
            start = time.perf_counter()
            loss = float(trainer.train_step(next(batches))["loss"])
            times.append(time.perf_counter() - start)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
    return {
        "gradient_checkpointing": checkpointing,
        "model_attribute": bool(trainer.model.gradient_checkpointing),
        "step_peak_mib": (peak - before) / 2**20,
        "resident_before_step_mib": before / 2**20,
        "process_peak_rss_mib": _peak_rss_mib(),
        "seconds_per_step": sorted(times)[len(times) // 2],
        "first_step_seconds": first,
        "loss": loss,
    }


def main(argv):
    del argv
    if FLAGS._child:
        print(json.dumps(_child(FLAGS._child == "on")))
        return
    args = [f"--{k}={getattr(FLAGS, k)}" for k in ("image_size", "levels", "steps", "width", "batch", "repeats")]
    rows = []
    for variant in ("off", "on"):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--_child={variant}", *args],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    off, on = rows
    print(
        f"\nGradient checkpointing, {FLAGS.image_size}x{FLAGS.image_size}x3, L={FLAGS.levels} K={FLAGS.steps} "
        f"width={FLAGS.width}, batch {FLAGS.batch}, CPU, {os.cpu_count()} cores"
    )
    print(f"{'checkpointing':>14} {'step peak MiB':>14} {'process RSS MiB':>16} {'s/step':>8}")
    for row in rows:
        print(
            f"{'on' if row['gradient_checkpointing'] else 'off':>14} {row['step_peak_mib']:>14.0f} "
            f"{row['process_peak_rss_mib']:>16.0f} {row['seconds_per_step']:>8.2f}"
        )
    saving = 1 - on["step_peak_mib"] / off["step_peak_mib"]
    slowdown = on["seconds_per_step"] / off["seconds_per_step"]
    print(f"peak step memory -{saving:.0%}, step time x{slowdown:.2f}; load average {os.getloadavg()}")
    os.makedirs(os.path.join(REPO, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(REPO, "benchmarks", "results", "gradient_checkpointing.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {"settings": args, "rows": rows, "saving": saving, "slowdown": slowdown, "load": os.getloadavg()},
            f,
            indent=2,
        )


if __name__ == "__main__":
    app.run(main)
