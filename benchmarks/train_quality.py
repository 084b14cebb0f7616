"""Learning per wall-clock second: test bits/dim against training time for a config.

    python benchmarks/train_quality.py --config=digits --steps=3000 --eval_every=250
    python benchmarks/train_quality.py --config=mnist --data_path=../shared/data/mnist_t10k.npz \
        --steps=4000 --eval_every=500

Trains with glow_tf.train_lib.Trainer (the same loop as train.py) in a fresh workdir,
evaluates the whole test split every ``eval_every`` steps, and prints a table of
(step, training seconds, images seen, test bits/dim). The wall time counts the whole
loop (tracing, evaluation, sample grids, checkpoints). Results go to
benchmarks/results/train_quality_<name>.json; sample grids stay in the workdir.

Not a test. The machine may be shared: the JSON records the load average before and
after, so compare only runs taken side by side.
"""

import json
import os
import platform
import time

import _harness
from _bench_configs import run_config
from absl import flags, logging

flags.DEFINE_string("config", "digits", "Name of a configs/*.py file.")
flags.DEFINE_string("data_path", "", "Train on this .npz instead (data.name=npz, 10% held out as the test split).")
flags.DEFINE_integer("steps", 3000, "Training steps.")
flags.DEFINE_integer("eval_every", 250, "Evaluate the whole test split every N steps.")
flags.DEFINE_string("workdir", "", "Run folder (default /tmp/glow_train_quality_<name>; emptied first).")
flags.DEFINE_string("name", "", "Result name (default: the config name, +_npz with --data_path).")
FLAGS = flags.FLAGS


def main():
    import shutil

    import tensorflow as tf

    from glow_tf import data, parallelism, train_lib

    parallelism.configure_cpu_threads()  # as train.py: one thread per op, one batch shard per core
    config = run_config(FLAGS.config, FLAGS.data_path, FLAGS.steps, FLAGS.eval_every)
    name = FLAGS.name or FLAGS.config + ("_npz" if FLAGS.data_path else "")
    workdir = FLAGS.workdir or f"/tmp/glow_train_quality_{name}"
    shutil.rmtree(workdir, ignore_errors=True)

    load_before = os.getloadavg()
    start = time.perf_counter()
    trainer = train_lib.Trainer(config, workdir)
    result = trainer.train()
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    info = data.dataset_info(config.data)

    rows = [
        {
            **row,
            "images_seen": row["step"] * trainer.global_batch,
            "epochs": row["step"] * trainer.global_batch / info.num_train,
        }
        for row in trainer.eval_history
    ]
    print(f"\n{name}: {info.name} {info.image_shape}, {info.num_train} train / {info.num_test} test images")
    print(
        f"model L={config.model.num_levels} K={config.model.num_steps} width={config.model.hidden_width} "
        f"{config.model.coupling}, batch {trainer.global_batch}, {config.data.n_bits} bits, "
        f"EMA {config.optim.ema_decay}"
    )
    print(f"{'step':>7} {'seconds':>8} {'epochs':>7} {'test bits/dim':>14}")
    for row in rows:
        print(f"{row['step']:>7} {row['seconds']:>8.0f} {row['epochs']:>7.1f} {row['bits_per_dim']:>14.4f}")
    print(f"total wall {wall:.0f} s (incl. start-up); load average before {load_before}, after {load_after}")
    samples = sorted(f for f in os.listdir(os.path.join(workdir, "samples")) if f.endswith(".png"))
    out = {
        "name": name,
        "config": json.loads(config.to_json()),
        "dataset": {"name": info.name, "image_shape": list(info.image_shape), "num_train": info.num_train},
        "global_batch": trainer.global_batch,
        "evals": rows,
        "final_step": result.step,
        "wall_seconds": wall,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "python": platform.python_version(),
        "workdir": workdir,
        "sample_pngs": samples,
    }
    path = _harness.write_json(out, _harness.result_path(f"train_quality_{name}"))
    logging.info("Wrote %s", path)


if __name__ == "__main__":
    _harness.run(main)
