"""Step time and memory of the real training step as the model grows, for each backprop mode.

    python benchmarks/scaling.py                       # the README's scaling table
    python benchmarks/scaling.py --grid=backprop       # standard / checkpointing / reversible at 64x64 and
                                                       # 128x128, K=8 and K=32 (the README's memory table)
    python benchmarks/scaling.py --variants=0 --repeats=1   # one variant of the grid: checks the script

Each variant runs in its own process, set up as ``train.py`` does
(``glow_tf.parallelism``: one thread per op, one batch shard per core):
``Trainer.train_step`` (the real training step) on scikit-learn digits resized to
the image size (no download), one step to trace, then ``--repeats`` timed steps
(median). Peak step memory is TF's allocator peak on the device
(``tf.config.experimental.get_memory_info``, reset after tracing), i.e. the tensors
a step keeps alive at once -- what checkpointing trades for recomputation; the
process's peak RSS is reported for context. Prints a table and writes
benchmarks/results/scaling-<grid>.json (``scaling-<grid>-variants-<i>-<j>.json``
with ``--variants``). Not a test; on a shared machine the times are noisy (the
memory figures are not).
"""

import os
import tempfile
import time

import _harness
from absl import flags

BASE = dict(image_size=32, levels=3, steps=8, width=128, batch=16, backprop="standard")
GRIDS = {
    "backprop": [
        dict(BASE, image_size=size, steps=steps, backprop=mode)
        for size in (64, 128)
        for steps in (8, 32)
        for mode in ("standard", "checkpointing", "reversible")
    ],
    "scaling": [
        BASE,
        dict(BASE, image_size=64),
        dict(BASE, image_size=128),
        dict(BASE, steps=16),
        dict(BASE, steps=32),
        dict(BASE, width=256),
        dict(BASE, width=512),
        dict(BASE, backprop="checkpointing"),
        dict(BASE, image_size=64, backprop="checkpointing"),
        dict(BASE, image_size=128, backprop="checkpointing"),
        dict(BASE, backprop="reversible"),
        dict(BASE, image_size=64, backprop="reversible"),
        dict(BASE, image_size=128, backprop="reversible"),
    ],
}

flags.DEFINE_enum("grid", "scaling", list(GRIDS), "Which set of variants to run.")
flags.DEFINE_list("variants", [], "Only these variants of the grid (0-based indices, e.g. 0,3); default all.")
flags.DEFINE_integer("repeats", 3, "Timed steps per variant.")
_harness.define_child_flags()
FLAGS = flags.FLAGS


@flags.multi_flags_validator(["grid", "variants"], message="--variants takes indices of the grid's variants")
def _check_variants(values: dict) -> bool:
    count = len(GRIDS[values["grid"]])
    return all(v.isdigit() and int(v) < count for v in values["variants"])


def _child(variant: dict) -> dict:
    import tensorflow as tf

    from configs import default
    from glow_tf import parallelism, train_lib

    parallelism.configure_cpu_threads()  # as train.py: one thread per op, one batch shard per core

    config = default.get_config()
    config.data.name = "digits"
    config.data.image_size = variant["image_size"]
    config.data.channels = 3
    config.model.num_levels = variant["levels"]
    config.model.num_steps = variant["steps"]
    config.model.hidden_width = variant["width"]
    config.model.lu_decomposed = True
    config.model.learn_top = True
    config.train.batch_size = config.train.n_init = variant["batch"]
    config.train.backprop = variant["backprop"]
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
        **variant,
        "model_attribute": trainer.model.backprop,
        "batch_shards": trainer.model.batch_shards,
        "step_peak_mib": (peak - before) / 2**20,
        "resident_before_step_mib": before / 2**20,
        "process_peak_rss_mib": _harness.peak_rss_mib(),
        "seconds_per_step": sorted(times)[len(times) // 2],
        "first_step_seconds": first,
        "loss": loss,
    }


def main():
    variant = _harness.child_job()
    if variant is not None:
        _harness.write_child_result(_child(variant))
        return
    print(f"Training step (Trainer.train_step), CPU, {os.cpu_count()} cores; affine, LU 1x1 conv, learned top prior")
    header = f"{'image':>9} {'L':>2} {'K':>3} {'width':>5} {'batch':>5} {'backprop':>13} {'s/step':>7} {'img/s':>6} "
    print(header + f"{'step peak MiB':>13} {'RSS MiB':>8} {'1st step s':>10}")
    rows = []
    grid = GRIDS[FLAGS.grid]
    for variant in [grid[int(i)] for i in FLAGS.variants] if FLAGS.variants else grid:
        row = _harness.run_child(__file__, variant, [f"--repeats={FLAGS.repeats}"])
        rows.append(row)
        size = f"{row['image_size']}x{row['image_size']}"
        print(
            f"{size:>9} {row['levels']:>2} {row['steps']:>3} {row['width']:>5} {row['batch']:>5} "
            f"{row['backprop']:>13} {row['seconds_per_step']:>7.3f} "
            f"{row['batch'] / row['seconds_per_step']:>6.1f} {row['step_peak_mib']:>13.0f} "
            f"{row['process_peak_rss_mib']:>8.0f} {row['first_step_seconds']:>10.1f}",
            flush=True,
        )
    print(f"load average {os.getloadavg()}")
    name = f"scaling-{FLAGS.grid}"
    if FLAGS.variants:  # part of the grid: keep the whole grid's file
        name += "-variants-" + "-".join(FLAGS.variants)
    path = _harness.write_json({"grid": FLAGS.grid, "rows": rows, "load": os.getloadavg()}, _harness.result_path(name))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
