"""Likelihood scoring on the command line: per-image bits/dim (per level) and the OOD comparison.

::

    python -m glow_tf.score per-image --model=RUN_OR_SAVEDMODEL --source=mnist:test --out=scores.csv \\
        [--checkpoint=latest|best] [--batch_size=64] [--seed=0] [--draws=1] [--max_examples=N] [--data_dir=DIR]
    python -m glow_tf.score per-image --model=... --files a.png b.png --out=scores.csv [--resize]
    python -m glow_tf.score compare --model=... --ood_source=svhn:test [--ood_source=...] --out_dir=DIR \\
        [--in_source=run:test] [--train_source=run:train] [--train_examples=2000] [--typicality_batch=10] \\
        [--max_examples=N] [--bins=40]

``per-image`` writes ``file_or_index,label,bits_per_dim,n_bits,level0_flow,level0_prior,...,top_prior``
(one row per image; the columns after ``bits_per_dim`` add up to it, see
:mod:`glow_tf.scoring`). ``compare`` writes ``DIR/compare.json`` (every number),
``DIR/histogram.png`` and one CSV per source. Sources: ``NAME[:train|test]`` (any
``config.data.name`` with a download-free or prepared dataset), ``npz:PATH[:all|train|test]``,
``folder:DIR[:all|train|test]``, ``files:A.png,B.png``, ``run[:train|test]`` (the model's
own training data). Also installed as the ``glow-score`` command. A user error prints
one line on stderr and exits with status 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import re  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from glow_tf import _cli, _validate, parallelism, scoring  # noqa: E402
from glow_tf.inference import InferenceModel  # noqa: E402

__all__ = ["main"]


def _scores(model: InferenceModel, text: str, args: argparse.Namespace, max_examples: int) -> scoring.Scores:
    source = scoring.open_source(text, model, args.data_dir, getattr(args, "resize", False))
    for note in source.notes:
        print(f"note: {note}")
    return scoring.score_source(model, source, args.batch_size, args.seed, args.draws, max_examples)


def _file_name(text: str) -> str:
    """A file-name-safe form of a source spec."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(text.rstrip("/")) if "/" in text else text).strip("_")


def _run_per_image(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    if bool(args.source) == bool(args.files):
        raise ValueError("per-image needs either --source=SPEC or --files FILE [FILE ...].")
    text = args.source or "files:" + ",".join(args.files)
    scores = _scores(model, text, args, args.max_examples)
    print(scoring.level_table([scores]))
    return [scores.write_csv(args.out)]


def _run_compare(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    _validate.positive_int(args.typicality_batch, "typicality_batch")  # before minutes of scoring
    _validate.positive_int(args.bins, "bins")
    in_scores = _scores(model, args.in_source, args, args.max_examples)
    train_scores = _scores(model, args.train_source, args, args.train_examples)
    ood = [_scores(model, text, args, args.max_examples) for text in args.ood_source]
    results = scoring.compare(in_scores, ood, train_scores, args.typicality_batch, args.seed)
    out = args.out_dir
    paths = [scoring.write_json(results, os.path.join(out, "compare.json"))]
    named = {s.source: s.bits_per_dim for s in (in_scores, *ood)}
    title = f"{model.source}: bits/dim per image"
    paths.append(scoring.histogram_png(os.path.join(out, "histogram.png"), named, title, args.bins))
    for kind, s in [("in", in_scores), *(("ood", s) for s in ood)]:
        paths.append(s.write_csv(os.path.join(out, f"{kind}_{_file_name(s.source)}.csv")))
    print(scoring.level_table([in_scores, train_scores, *ood]))
    print(f"typicality: M={args.typicality_batch}, train mean {results['typicality']['train_mean_bits_per_dim']:.4f}")
    for r in results["ood"]:
        flag = "  (< 0.5: the OOD set is MORE likely)" if r["ood_more_likely"] else ""
        print(
            f"{r['source']}: AUROC bits/dim {r['auroc_bits_per_dim']:.4f}{flag}; "
            f"typicality AUROC {r['typicality']['auroc']:.4f}"
        )
    return paths


_COMMANDS = {"per-image": _run_per_image, "compare": _run_compare}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glow_tf.score", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = _cli.model_arguments()
    common.add_argument("--batch_size", type=int, default=64)
    common.add_argument("--seed", type=int, default=0, help="dequantisation noise seed (per image: seed, index)")
    common.add_argument("--draws", type=int, default=1, help="average bits/dim over K noise draws per image")
    common.add_argument("--max_examples", type=int, default=0, help="score only the first N images (0: all)")
    common.add_argument("--data_dir", default=None, help="TFDS data_dir")

    p = sub.add_parser("per-image", parents=[common], help="bits/dim of every image, per level, as CSV")
    p.add_argument("--source", default="", help="NAME[:split], npz:PATH[:split], folder:DIR[:split], run[:split]")
    p.add_argument("--files", nargs="+", default=None, help="image files (instead of --source)")
    p.add_argument("--resize", action="store_true", help="centre-crop and resize files of another size")
    p.add_argument("--out", required=True, help="CSV file")

    p = sub.add_parser("compare", parents=[common], help="in-distribution vs OOD: histogram, AUROC, typicality")
    p.add_argument("--in_source", default="run:test", help="in-distribution test images (default run:test)")
    p.add_argument("--ood_source", action="append", required=True, help="an OOD source (repeat for several)")
    p.add_argument("--train_source", default="run:train", help="training images: the typicality reference")
    p.add_argument("--train_examples", type=int, default=2000, help="training images scored (0: all)")
    p.add_argument("--typicality_batch", type=int, default=10, help="M, images per typicality-test batch")
    p.add_argument("--bins", type=int, default=40, help="histogram bins per set")
    p.add_argument("--out_dir", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 for a user error, reported on stderr)."""
    args = _parser().parse_args(argv)
    # TensorFlow's default threads: the scoring graph (as exported) has no batch slices to spread over cores.
    parallelism.configure_graph_optimizer()
    return _cli.run_model_command("glow_tf.score", args, _COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
