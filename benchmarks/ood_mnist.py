"""The out-of-distribution experiment on MNIST: bits/dim histograms, AUROC, typicality, per-level bits.

    python benchmarks/ood_mnist.py [--data_path=../shared/data/mnist_t10k.npz] [--steps=2500]

Trains configs/mnist.py (L=2, K=8, width 128, affine, EMA) with the Trainer on the
MNIST test set shipped as an .npz, zero-padded from 28x28 to 32x32 as the original
(and glow_tf's TFDS ``mnist``) do: 9,000 images train, 1,000 held out (``run:test``).
Then scores, with glow_tf.scoring (seeded noise, one draw):

* in distribution: the 1,000 held-out MNIST images;
* ``digits32``: scikit-learn's 1,797 8x8 digits, grey levels ``v in 0..16`` mapped to
  ``floor(v * 255 / 16 + 0.5)``, then bilinearly resized to 32x32 (1 channel, uint8);
* ``digits_pad``: the same 8x8 digits zero-padded (centred) to 32x32 instead, as glow_tf's
  ``digits`` dataset does at ``image_size=32``: small digits on a black field;
* ``rotated``: the held-out MNIST images rotated by 90 degrees (counter-clockwise);
* ``inverted``: the held-out MNIST images as ``255 - x`` (the padding becomes white too);

and reports the AUROC of bits/dim (higher = OOD), the typicality test's AUROC
(batches of M=10, reference: the mean bits/dim of 2,000 training images), the mean
bits/dim of every set and its per-level split. Writes
benchmarks/results/ood_mnist.json, benchmarks/results/ood_mnist_hist.png and a copy of
the figure in docs/ood_mnist_hist.png. Not a test; the machine may be shared.
"""

import dataclasses
import json
import os
import shutil
import time

import _harness
from _bench_configs import run_config
from absl import flags, logging

flags.DEFINE_string(
    "data_path", os.path.join(_harness.REPO, "..", "shared", "data", "mnist_t10k.npz"), "MNIST as an .npz."
)
flags.DEFINE_integer("steps", 2500, "Training steps (batch 64).")
flags.DEFINE_string("workdir", "/tmp/glow_ood_mnist", "Run folder (emptied first) and the OOD .npz files.")
flags.DEFINE_integer("typicality_batch", 10, "M, images per batch of the typicality test.")
flags.DEFINE_integer("train_examples", 2000, "Training images scored for the typicality reference.")
flags.DEFINE_integer("seed", 0, "Dequantisation noise seed of the scores.")
flags.DEFINE_bool(
    "train", True, "Train first; --notrain re-scores the run already in --workdir (training numbers kept)."
)
FLAGS = flags.FLAGS


def _write_npz(path: str, images, labels=None) -> str:
    import numpy as np

    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(path, **arrays)
    return path


def _prepare(workdir: str) -> str:
    """MNIST padded to 32x32 (the training data) as an .npz; returns its path."""
    import numpy as np

    with np.load(FLAGS.data_path) as f:
        images, labels = f["images"], f["labels"]
    images = images.reshape(-1, 28, 28, 1)
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    return _write_npz(os.path.join(workdir, "mnist32.npz"), padded, labels.astype(np.int32))


def _ood_sets(config, workdir: str) -> dict[str, str]:
    """The OOD .npz files: digits resized to 32x32, and the held-out MNIST split rotated and inverted."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = np.floor(digits.images * (255.0 / 16.0) + 0.5).astype(np.uint8)[..., None]
    resized = tf.image.resize(tf.constant(grey, tf.float32), [32, 32], method="bilinear")
    digits32 = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()
    from glow_tf import data

    test = [(image.numpy(), int(label)) for image, label in data.load_split(config.data, "test")]
    images = np.stack([t[0] for t in test])
    labels = np.asarray([t[1] for t in test], np.int32)
    padded = np.pad(grey, [(0, 0), (12, 12), (12, 12), (0, 0)])  # glow_tf's digits dataset at image_size=32
    return {
        "digits32": _write_npz(os.path.join(workdir, "digits32.npz"), digits32, digits.target.astype(np.int32)),
        "digits_pad": _write_npz(os.path.join(workdir, "digits_pad.npz"), padded, digits.target.astype(np.int32)),
        "rotated": _write_npz(os.path.join(workdir, "rotated.npz"), np.rot90(images, 1, axes=(1, 2)).copy(), labels),
        "inverted": _write_npz(os.path.join(workdir, "inverted.npz"), 255 - images, labels),
    }


def main():
    import numpy as np
    import tensorflow as tf

    from glow_tf import latent_tools, parallelism, scoring, train_lib

    parallelism.configure_cpu_threads()  # as train.py: one thread per op, one batch shard per core (training)
    start = time.perf_counter()
    workdir = FLAGS.workdir
    run_dir = os.path.join(workdir, "run")
    results_dir = _harness.RESULTS
    json_path = _harness.result_path("ood_mnist")
    if FLAGS.train:
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        config = run_config("mnist", _prepare(workdir), FLAGS.steps, FLAGS.steps)
        config.data.image_size = 32  # 28x28 padded to 32x32 in the .npz
        train_start = time.perf_counter()
        trainer = train_lib.Trainer(config, run_dir)
        trainer.train()
        training = {
            "steps": FLAGS.steps,
            "train_seconds": time.perf_counter() - train_start,
            "eval_test_bits_per_dim": trainer.eval_history[-1]["bits_per_dim"] if trainer.eval_history else None,
        }
    else:  # re-score the trained run; keep the training numbers of the run that trained it
        from glow_tf import config_lib

        config = config_lib.load_config_json(run_dir)
        with open(json_path, encoding="utf-8") as f:
            previous = json.load(f)
        training = {k: previous.get(k) for k in ("steps", "train_seconds", "eval_test_bits_per_dim")}

    model = latent_tools.load_inference_model(run_dir, "latest")
    sets = _ood_sets(config, workdir)

    def scored(text: str, max_examples: int = 0) -> scoring.Scores:
        source = scoring.open_source(text, model)
        for note in source.notes:
            print(f"note: {note}")
        return scoring.score_source(model, source, batch_size=250, seed=FLAGS.seed, max_examples=max_examples)

    mnist = scored("run:test")
    train = scored("run:train", FLAGS.train_examples)
    ood = [dataclasses.replace(scored(f"npz:{path}"), source=name) for name, path in sets.items()]
    mnist = dataclasses.replace(mnist, source="mnist")
    results = scoring.compare(mnist, ood, train, FLAGS.typicality_batch, FLAGS.seed)

    for s in (mnist, train, *ood):
        s.write_csv(os.path.join(results_dir, f"ood_mnist_{s.source.replace(':', '_')}.csv"))
    figure = scoring.histogram_png(
        os.path.join(results_dir, "ood_mnist_hist.png"),
        {s.source: s.bits_per_dim for s in (mnist, *ood)},
        f"Glow trained on MNIST ({training['steps']} steps): bits/dim per image",
    )
    os.makedirs(os.path.join(_harness.REPO, "docs"), exist_ok=True)
    shutil.copy(figure, os.path.join(_harness.REPO, "docs", "ood_mnist_hist.png"))

    print(f"\ntraining: {training}")
    print(scoring.level_table([mnist, train, *ood]))
    print(f"\n{'OOD set':<10} {'AUROC bits/dim':>15} {'AUROC typicality':>17}")
    for r in results["ood"]:
        print(f"{r['source']:<10} {r['auroc_bits_per_dim']:>15.4f} {r['typicality']['auroc']:>17.4f}")
    wall = time.perf_counter() - start
    print(f"total wall {wall:.0f} s")
    rates = {s.source: s.num_images / s.seconds for s in (mnist, train, *ood)}
    out = {
        **results,
        **training,
        "wall_seconds": wall,
        "retrained": FLAGS.train,
        "scoring_images_per_second": rates,
        "per_level_table": scoring.level_table([mnist, train, *ood]),
        "config": json.loads(config.to_json()),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "load_average_after": os.getloadavg(),
        "figure": figure,
    }
    path = _harness.write_json(out, json_path)
    logging.info("Wrote %s and %s", path, figure)


if __name__ == "__main__":
    _harness.run(main)
