"""bfloat16 mixed precision against float32: speed and test bits/dim, side by side.

    python benchmarks/mixed_precision.py --data_path=../shared/data/mnist_t10k.npz --steps=1500

Trains the same config twice with glow_tf.train_lib.Trainer (same seed, data order
and noise), once with ``config.model.compute_dtype = "float32"`` and once with
``"bfloat16"``, and reports for each: training images/s and the test bits/dim over
the whole test split at the end. It then re-evaluates the float32 run's final
checkpoint with bfloat16 coupling networks (same weights, same dequantisation
noise): that difference is what bfloat16 arithmetic alone does to bits/dim, while
the difference between the two runs also includes their diverging trajectories. With
``--control`` (default) a third run, float32 with the next seed, shows how far two
float32 runs differ anyway.
Writes ``benchmarks/results/mixed_precision-<name>.json``.

Not a test; compare only numbers from one run (the machine may be shared).
"""

import os
import shutil
import time

import _harness
from _bench_configs import run_config
from absl import flags

flags.DEFINE_string("config", "mnist", "Name of a configs/*.py file.")
flags.DEFINE_string("data_path", "", "Train on this .npz instead (data.name=npz, 10% held out as the test split).")
flags.DEFINE_integer("steps", 1500, "Training steps per run.")
flags.DEFINE_string("workdir", "/tmp/glow_mixed_precision", "Parent folder of the runs (emptied first).")
flags.DEFINE_bool("control", True, "Also train float32 with another seed: the run-to-run spread of bits/dim.")
FLAGS = flags.FLAGS

DTYPES = ("float32", "bfloat16")


def _config(compute_dtype: str, seed_offset: int = 0):
    config = run_config(FLAGS.config, FLAGS.data_path, FLAGS.steps, FLAGS.steps)
    config.seed += seed_offset
    config.model.compute_dtype = compute_dtype
    return config


def _train(compute_dtype: str, seed_offset: int = 0) -> dict:
    from glow_tf import train_lib

    workdir = os.path.join(FLAGS.workdir, compute_dtype + (f"_seed+{seed_offset}" if seed_offset else ""))
    trainer = train_lib.Trainer(_config(compute_dtype, seed_offset), workdir)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    last = trainer.eval_history[-1]
    return {
        "compute_dtype": compute_dtype,
        "workdir": workdir,
        "test_bits_per_dim": last["bits_per_dim"],
        "train_wall_s": wall,
        "images_per_s_incl_eval": FLAGS.steps * trainer.global_batch / wall,
        "batch_shards": trainer.model.batch_shards,
    }


def _evaluate_as(workdir: str, compute_dtype: str) -> float:
    """Test bits/dim of ``workdir``'s latest checkpoint with the coupling networks in ``compute_dtype``."""
    from glow_tf import config_lib, train_lib

    copy = f"{workdir}_as_{compute_dtype}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(workdir, copy)
    config = config_lib.load_config_json(copy)
    config.model.compute_dtype = compute_dtype
    config_lib.save_config(config, copy)
    return train_lib.evaluate_checkpoint(copy)["bits_per_dim"]


def main():
    from glow_tf import parallelism

    parallelism.configure_cpu_threads()
    shutil.rmtree(FLAGS.workdir, ignore_errors=True)
    runs = {dtype: _train(dtype) for dtype in DTYPES}
    if FLAGS.control:
        runs["float32_seed+1"] = _train("float32", seed_offset=1)
    fp32 = runs["float32"]
    fp32_eval_again = _evaluate_as(fp32["workdir"], "float32")
    fp32_as_bf16 = _evaluate_as(fp32["workdir"], "bfloat16")
    report = {
        "config": FLAGS.config,
        "data_path": FLAGS.data_path,
        "steps": FLAGS.steps,
        "runs": runs,
        "float32_checkpoint": {"float32_eval": fp32_eval_again, "bfloat16_eval": fp32_as_bf16},
        "bf16_arithmetic_bits_per_dim_change": fp32_as_bf16 - fp32_eval_again,
        "trajectory_bits_per_dim_change": runs["bfloat16"]["test_bits_per_dim"] - fp32["test_bits_per_dim"],
        "seed_to_seed_bits_per_dim_change": (
            runs["float32_seed+1"]["test_bits_per_dim"] - fp32["test_bits_per_dim"] if FLAGS.control else None
        ),
        "speedup": runs["bfloat16"]["images_per_s_incl_eval"] / fp32["images_per_s_incl_eval"],
        "loadavg_end": os.getloadavg(),
    }
    print(f"\n{FLAGS.config} ({FLAGS.data_path or _config('float32').data.name}), {FLAGS.steps} steps per run")
    print(f"{'compute dtype':<14}{'images/s':>10}{'test bits/dim':>15}")
    for dtype, run in runs.items():
        print(f"{dtype:<14}{run['images_per_s_incl_eval']:>10.1f}{run['test_bits_per_dim']:>15.4f}")
    print(
        f"float32 checkpoint evaluated in float32 {fp32_eval_again:.4f}, in bfloat16 {fp32_as_bf16:.4f} "
        f"(change {report['bf16_arithmetic_bits_per_dim_change']:+.4f} bits/dim)"
    )
    print(f"bfloat16 run - float32 run: {report['trajectory_bits_per_dim_change']:+.4f} bits/dim")
    if FLAGS.control:
        print(f"float32 seed+1 run - float32 run: {report['seed_to_seed_bits_per_dim_change']:+.4f} bits/dim (spread)")
    name = FLAGS.config + ("_npz" if FLAGS.data_path else "")
    path = _harness.write_json(report, _harness.result_path(f"mixed_precision-{name}"))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
