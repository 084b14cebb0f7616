"""Throughput of the glow_tf.data training pipelines alone (images/s), not a test.

Measures ``make_train_dataset`` (shuffle, decode, crop/resize, augmentation, batching,
prefetch; no model) on generated data written to a temporary directory:

* ``cifar32-memory``: 10,000 32x32x3 images in a .npz, held in memory (the path that
  cifar10 / mnist / digits / npz take), random shift 10% + flips.
* ``cifar32-png-folder``: 32x32 PNG files decoded every epoch (``cache=False``).
* ``folder64-jpeg``: CelebA-like 218x178 JPEGs, central square crop, area resize to
  64x64, decoded every epoch (``cache=False``) and cached in memory (``cache=True``).
* ``folder64-png``: 64x64 PNG files decoded every epoch.
* ``mnist-npz``: ../shared/data/mnist_t10k.npz when present.

What a training step consumes, for comparison: a measured forward+backward step of a
small Glow on this CPU (``--model_check``), and the paper models' consumption on a GPU
estimated from their FLOPs (benchmarks/_bench_flops.py) at an ASSUMED sustained
``--gpu_tflops``. Other processes may share the machine: numbers are noisy.

    python benchmarks/data_pipeline.py [--seconds=4] [--repeats=3] [--files=1500]

Writes ``benchmarks/results/data_pipeline-<timestamp>.json`` and prints a table.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import _harness  # first: TensorFlow's environment and sys.path
import numpy as np
import tensorflow as tf
from absl import flags

from glow_tf import data

SHARED_NPZ = os.path.join(_harness.REPO, "..", "shared", "data", "mnist_t10k.npz")

flags.DEFINE_float("seconds", 4.0, "Timed seconds per repeat.")
flags.DEFINE_integer("repeats", 3, "Repeats per case (median reported).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("files", 1500, "Image files per generated folder.")
flags.DEFINE_integer("model_check", 1, "1: time a small Glow train step on this CPU.")
flags.DEFINE_float("gpu_tflops", 100.0, "Assumed sustained GPU TFLOP/s.")
flags.DEFINE_string("out", _harness.RESULTS, "Folder for the JSON result.")
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------------- generated data
def natural_like(rng: np.random.Generator, n: int, height: int, width: int, channels: int = 3) -> np.ndarray:
    """Smooth random images (bilinear-upsampled 8x8 noise plus mild pixel noise): compress like photos."""
    coarse = tf.constant(rng.uniform(0, 255, (n, 8, 8, channels)), tf.float32)
    smooth = tf.image.resize(coarse, [height, width], method="bilinear").numpy()
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def write_folder(root: str, images: np.ndarray, fmt: str) -> str:
    os.makedirs(root, exist_ok=True)
    for i, image in enumerate(images):
        encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=90)
        tf.io.write_file(os.path.join(root, f"{i:06d}.{fmt}"), encoded)
    return root


def make_cases(tmp: str, files: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    npz = os.path.join(tmp, "cifar_like.npz")
    np.savez(npz, images=natural_like(rng, 10_000, 32, 32), labels=rng.integers(0, 10, 10_000))
    png32 = write_folder(os.path.join(tmp, "png32"), natural_like(rng, files, 32, 32), "png")
    jpeg218 = write_folder(os.path.join(tmp, "jpeg218"), natural_like(rng, files, 218, 178), "jpg")
    png64 = write_folder(os.path.join(tmp, "png64"), natural_like(rng, files, 64, 64), "png")
    aug = dict(random_shift=0.1, random_flip=True)
    cases = {
        "cifar32-memory": dict(name="npz", path=npz, image_size=32, channels=3, **aug),
        "cifar32-png-folder": dict(name="folder", path=png32, image_size=32, channels=3, cache=False, **aug),
        "folder64-jpeg": dict(name="folder", path=jpeg218, image_size=64, channels=3, cache=False, random_flip=True),
        "folder64-jpeg-cached": dict(name="folder", path=jpeg218, image_size=64, channels=3, random_flip=True),
        "folder64-png": dict(name="folder", path=png64, image_size=64, channels=3, cache=False, random_flip=True),
    }
    if os.path.exists(SHARED_NPZ):
        cases["mnist-npz"] = dict(name="npz", path=os.path.abspath(SHARED_NPZ), image_size=28, channels=1)
    return cases


# ----------------------------------------------------------------------------- measurement
def config_of(fields: dict[str, Any]):
    cfg = data.default_config()
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def time_pipeline(cfg, batch_size: int, seconds: float, seed: int) -> dict[str, float]:
    """images/s of one freshly built training stream (after a warm-up of 10 batches)."""
    start = time.perf_counter()
    iterator = iter(data.make_train_dataset(cfg, batch_size, seed=seed))
    next(iterator)
    first_batch_s = time.perf_counter() - start
    for _ in range(10):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(iterator)
        count += 1
    elapsed = time.perf_counter() - start
    return {"images_per_s": count * batch_size / elapsed, "first_batch_s": first_batch_s}


def glow_step_images_per_s(batch_size: int = 16, steps: int = 3) -> dict[str, Any] | None:
    """Measured forward+backward throughput of a small Glow (32x32x3, L=3, K=8, width 128) on this CPU."""
    try:
        from glow_tf.model import Glow
    except Exception as e:  # the model is developed in parallel; the data numbers stand alone
        return {"error": f"{type(e).__name__}: {e}"}
    model = Glow(image_shape=(32, 32, 3), num_levels=3, num_steps=8, hidden_width=128)
    images = tf.constant(natural_like(np.random.default_rng(1), batch_size, 32, 32))
    x = data.model_inputs(images, 8, seed=0, step=0)
    model.initialize(x)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x)["loss"])
        return tape.gradient(loss, model.trainable_variables)

    step(x)
    start = time.perf_counter()
    for _ in range(steps):
        step(x)
    rate = steps * batch_size / (time.perf_counter() - start)
    return {"model": "Glow 32x32x3 L=3 K=8 width=128, batch 16, fwd+bwd, no optimizer", "images_per_s": rate}


def gpu_estimates(tflops: float) -> dict[str, Any] | None:
    """Images/s a GPU would consume on the paper's models at an assumed sustained FLOP rate."""
    try:
        from _bench_flops import glow_flops
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    models = {
        "cifar10 32x32 L=3 K=32 w=512": ((32, 32, 3), 3, 32, 512, 64),
        "imagenet64 64x64 L=4 K=48 w=512": ((64, 64, 3), 4, 48, 512, 16),
    }
    out = {"assumed_sustained_tflops": tflops}
    for name, (shape, levels, steps, width, batch) in models.items():
        train = glow_flops(shape, levels, steps, width, batch_size=batch).train
        out[name] = {"train_gflop_per_image": train / 1e9, "images_per_s": tflops * 1e12 / train}
    return out


def main() -> dict[str, Any]:
    results: dict[str, Any] = {
        "timestamp": _harness.timestamp(),
        "machine": {"cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
        "caveat": "Shared machine: other processes may run at the same time; numbers are indicative.",
        "batch_size": FLAGS.batch_size,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cases = make_cases(tmp, FLAGS.files)
        print(
            f"generated data in {time.perf_counter() - start:.0f} s; {FLAGS.repeats} x {FLAGS.seconds:.0f} s per case"
        )
        print(f"{'case':<24}{'images/s':>12}{'min':>10}{'max':>10}{'1st batch s':>13}")
        for name, fields in cases.items():
            cfg = config_of(fields)
            runs = [time_pipeline(cfg, FLAGS.batch_size, FLAGS.seconds, seed) for seed in range(FLAGS.repeats)]
            rates = [r["images_per_s"] for r in runs]
            summary = {
                "config": fields | {"path": os.path.basename(fields["path"])},
                "images_per_s_median": statistics.median(rates),
                "images_per_s": rates,
                "first_batch_s": [r["first_batch_s"] for r in runs],
            }
            results["cases"][name] = summary
            print(
                f"{name:<24}{summary['images_per_s_median']:>12,.0f}{min(rates):>10,.0f}{max(rates):>10,.0f}"
                f"{runs[0]['first_batch_s']:>13.2f}"
            )
    if FLAGS.model_check:
        results["glow_cpu_step"] = glow_step_images_per_s()
        print("training-step consumption, measured here:", results["glow_cpu_step"])
    results["gpu_estimate"] = gpu_estimates(FLAGS.gpu_tflops)
    print("training-step consumption, GPU estimate from FLOPs:", results["gpu_estimate"])
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    path = _harness.write_json(results, _harness.result_path(f"data_pipeline-{results['timestamp']}", FLAGS.out))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    _harness.run(main)
