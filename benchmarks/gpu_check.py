"""The GPU check: training and sampling speed, and memory per image, on one GPU in a few minutes.

    python benchmarks/gpu_check.py                  # on a machine whose TensorFlow sees a GPU (<= ~6 min)
    python benchmarks/gpu_check.py --smoke          # tiny sizes on the CPU, ~1-2 min: checks the script itself

Measures, with ``glow_tf.train_lib.Trainer.train_step`` (the real training step, on
scikit-learn digits resized to the image size: no download) and ``Glow.sample``:

* train and sample images/s at bench-32 (32x32, L=3, K=8, width 128, batch 16) and at
  the paper's CIFAR-10 size (L=3, K=32, width 512, batch 64), for compute dtypes
  float32 / bfloat16 / float16 (dynamic loss scaling) and XLA off / on;
* peak GPU memory per image of one training step at 256x256 (the celebahq256 model:
  L=6, K=32, width 512, additive, 5 bits) for backprop standard / checkpointing /
  reversible (TensorFlow's allocator peak, ``tf.config.experimental.get_memory_info``);
* the same sizes for the PyTorch peer ``torch_glow`` (``benchmarks/_bench_torch.py``,
  affine coupling only, float32) when torch is installed (and sees a GPU, off smoke).

Every measurement is bounded: a time budget (``--budget_s``, default 330 s of the
6 minutes) skips what no longer fits, recorded as skipped. Prints a table and writes
``benchmarks/results/gpu_check-<time>.json`` (or ``--out``). The first call of every
variant (tracing, XLA compilation) is reported apart from the timed calls.
"""

from __future__ import annotations

import gc
import platform
import statistics
import sys
import tempfile
import time

import _harness
from absl import flags

flags.DEFINE_bool("smoke", False, "Tiny sizes, CPU allowed: checks the script itself.")
flags.DEFINE_integer("budget_s", 330, "Seconds of measurements; what no longer fits is skipped.")
flags.DEFINE_integer("steps", 10, "Timed training steps (and sampling calls) per variant.")
flags.DEFINE_string("out", "", "JSON path (default benchmarks/results/gpu_check-<time>.json).")
FLAGS = flags.FLAGS

# name -> image size, levels L, steps K, width, batch, coupling, bits
SIZES = {
    "bench-32": dict(image=32, levels=3, steps=8, width=128, batch=16, coupling="affine", bits=8),
    "paper-cifar10": dict(image=32, levels=3, steps=32, width=512, batch=64, coupling="affine", bits=8),
    "celebahq256": dict(image=256, levels=6, steps=32, width=512, batch=2, coupling="additive", bits=5),
}
SMOKE_SIZES = {
    "bench-32": dict(image=8, levels=2, steps=2, width=8, batch=4, coupling="affine", bits=8),
    "paper-cifar10": dict(image=8, levels=2, steps=3, width=16, batch=4, coupling="affine", bits=8),
    "celebahq256": dict(image=16, levels=3, steps=3, width=8, batch=2, coupling="additive", bits=5),
}
DTYPES = ("float32", "bfloat16", "float16")
# XLA compiles take ~15 s each on a CPU: the smoke run compiles at one size only.
SMOKE_XLA = "smoke run: XLA is checked at bench-32 only"
BACKPROP = ("standard", "checkpointing", "reversible")


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _config(size: dict, compute_dtype: str = "float32", jit: bool = False, backprop: str = "standard"):
    from glow_tf import config_lib

    config = config_lib.default_config()
    config.data.name, config.data.image_size, config.data.channels = "digits", size["image"], 3
    config.data.n_bits = size["bits"]
    config.model.num_levels, config.model.num_steps = size["levels"], size["steps"]
    config.model.hidden_width, config.model.coupling = size["width"], size["coupling"]
    config.model.lu_decomposed, config.model.learn_top = True, True
    config.model.compute_dtype = compute_dtype
    config.train.batch_size = config.train.n_init = size["batch"]
    config.train.backprop, config.train.jit_compile = backprop, jit
    config.optim.ema_decay = 0.0
    config.optim.learning_rate = 1e-4  # finite steps at width 512 without warm-up
    config.optim.warmup_images = 0
    return config


def _device() -> str:
    import tensorflow as tf

    return "GPU:0" if tf.config.list_logical_devices("GPU") else "CPU:0"


def _median_rate(times: list[float], items: int) -> float:
    return items / statistics.median(times)


def measure_glow_tf(size: dict, steps: int, compute_dtype: str, jit: bool, backprop: str = "standard") -> dict:
    """Train and sample img/s, first-call seconds and the step's peak memory of one glow_tf variant."""
    import tensorflow as tf

    from glow_tf import train_lib

    device = _device()
    with tempfile.TemporaryDirectory() as workdir:
        trainer = train_lib.Trainer(_config(size, compute_dtype, jit, backprop), workdir)
        trainer.initialize()
        batch = next(iter(trainer.make_dataset(0)))
        start = time.perf_counter()
        metrics = trainer.train_step(batch)
        float(metrics["loss"])
        first_train = time.perf_counter() - start
        tf.config.experimental.reset_memory_stats(device)
        before = tf.config.experimental.get_memory_info(device)["current"]
        times, finite = [], True
        for _ in range(steps):
            start = time.perf_counter()
            metrics = trainer.train_step(batch)
            finite &= bool(metrics["finite"]) or bool(metrics["overflow"])
            times.append(time.perf_counter() - start)
        peak = tf.config.experimental.get_memory_info(device)["peak"] - before
        model, n = trainer.model, size["batch"]
        sample = tf.function(lambda: model.sample(n, 0.7), jit_compile=jit)
        start = time.perf_counter()
        sample().numpy()
        first_sample = time.perf_counter() - start
        sample_times = []
        for _ in range(steps):
            start = time.perf_counter()
            images = sample().numpy()
            sample_times.append(time.perf_counter() - start)
        result = {
            "train_images_per_s": _median_rate(times, n),
            "sample_images_per_s": _median_rate(sample_times, n),
            "first_train_step_s": first_train,
            "first_sample_s": first_sample,
            "step_peak_mib": peak / 2**20,
            "step_peak_mib_per_image": peak / 2**20 / n,
            "finite": finite and bool(tf.reduce_all(tf.math.is_finite(images))),
            "batch_shards": trainer.model.batch_shards,
        }
        if trainer.loss_scale is not None:
            result["loss_scale"] = float(trainer.loss_scale.scale.numpy())
    del trainer
    gc.collect()
    return result


def measure_torch(size: dict, steps: int) -> dict:
    """``torch_glow`` (float32, affine) train and sample img/s and the step's peak memory per image."""
    import numpy as np
    from _bench_torch import _torch_model

    ns = _torch_model()
    torch = ns.torch
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    n = size["batch"]
    shape = (size["image"], size["image"], 3)
    model = ns.Glow(shape, size["levels"], size["steps"], size["width"]).to(device)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-0.5, 0.5, (n, 3, *shape[:2])).astype(np.float32)).to(device)
    with torch.no_grad():
        model.train()
        model(x)  # data-dependent actnorm init
    optimizer = torch.optim.Adamax(model.parameters(), lr=1e-4)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def train():
        optimizer.zero_grad()
        loss = model.bits_per_dim(x).mean()
        loss.backward()
        optimizer.step()
        sync()

    train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - before) if cuda else float("nan")
    model.eval()
    sample_times = []
    with torch.no_grad():
        for _ in range(steps + 1):
            start = time.perf_counter()
            model.sample(n, 0.7)
            sync()
            sample_times.append(time.perf_counter() - start)
    return {
        "train_images_per_s": _median_rate(times, n),
        "sample_images_per_s": _median_rate(sample_times[1:], n),
        "step_peak_mib_per_image": peak / 2**20 / n,
        "device": str(device),
        "torch_version": torch.__version__,
        "note": "torch_glow implements affine coupling only: the 256x256 row uses affine, glow_tf's additive",
    }


def _torch_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return FLAGS.smoke or torch.cuda.is_available()


def _run(rows: list, budget: Budget, system: str, size_name: str, variant: str, fn, *args, estimate: float):
    """Runs one measurement unless the budget is out; records the row (or why it is missing)."""
    row = {"system": system, "size": size_name, "variant": variant}
    if budget.left() < estimate:
        row["skipped"] = f"time budget: {budget.left():.0f} s left, about {estimate:.0f} s needed"
    else:
        start = time.perf_counter()
        try:
            row.update(fn(*args))
        except Exception as err:  # noqa: BLE001 - report it, keep the other measurements
            row["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
        row["seconds"] = time.perf_counter() - start
    rows.append(row)
    _print_row(row)
    return row


def _print_row(row: dict) -> None:
    head = f"{row['system']:<10} {row['size']:<14} {row['variant']:<24}"
    if "skipped" in row or "error" in row:
        print(f"{head} {row.get('skipped') or row.get('error')}", flush=True)
        return
    parts = []
    for key, label in (("train_images_per_s", "train"), ("sample_images_per_s", "sample")):
        if key in row:
            parts.append(f"{label} {row[key]:8.1f} img/s")
    if "step_peak_mib_per_image" in row:
        parts.append(f"peak {row['step_peak_mib_per_image']:8.1f} MiB/img")
    if "first_train_step_s" in row:
        parts.append(f"1st step {row['first_train_step_s']:5.1f} s")
    print(f"{head} {'  '.join(parts)}", flush=True)


def main():
    import tensorflow as tf

    sizes = SMOKE_SIZES if FLAGS.smoke else SIZES
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not FLAGS.smoke:
        sys.exit("gpu_check: TensorFlow sees no GPU here; run it on a GPU machine, or pass --smoke on a CPU.")
    if not gpus:
        from glow_tf import parallelism

        parallelism.configure_cpu_threads()
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    steps = 2 if FLAGS.smoke else FLAGS.steps
    budget = Budget(FLAGS.budget_s)
    started = time.perf_counter()
    rows: list[dict] = []
    print(f"glow_tf GPU check on {gpus[0].name if gpus else 'CPU (smoke)'}; TensorFlow {tf.__version__}")
    for size_name in ("bench-32", "paper-cifar10"):
        estimate = 5 if FLAGS.smoke else (15 if size_name == "bench-32" else 30)
        for dtype in DTYPES:
            for jit in (False, True):
                variant = f"{dtype}{' xla' if jit else ''}"
                if jit and FLAGS.smoke and size_name != "bench-32":
                    rows.append({"system": "glow_tf", "size": size_name, "variant": variant, "skipped": SMOKE_XLA})
                    continue
                _run(rows, budget, "glow_tf", size_name, variant, measure_glow_tf, sizes[size_name], steps, dtype, jit,
                     estimate=estimate * (2 if jit else 1))  # fmt: skip
    for backprop in BACKPROP:
        _run(rows, budget, "glow_tf", "celebahq256", f"float32 {backprop}", measure_glow_tf, sizes["celebahq256"],
             max(2, steps // 3), "float32", False, backprop, estimate=5 if FLAGS.smoke else 40)  # fmt: skip
    if _torch_available():
        for size_name in ("bench-32", "paper-cifar10", "celebahq256"):
            _run(rows, budget, "torch_glow", size_name, "float32", measure_torch, sizes[size_name], steps,
                 estimate=5 if FLAGS.smoke else 20)  # fmt: skip
    else:
        rows.append({"system": "torch_glow", "skipped": "torch is not installed (or sees no GPU)"})
        print("torch_glow skipped: torch is not installed (or sees no GPU)")
    result = {
        "smoke": FLAGS.smoke,
        "device": gpus[0].name if gpus else "CPU",
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
        "sizes": sizes,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    path = _harness.write_json(result, FLAGS.out or _harness.result_path(f"gpu_check-{_harness.timestamp()}"))
    print(f"{result['seconds']:.0f} s in all; wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
