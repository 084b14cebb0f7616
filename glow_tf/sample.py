"""Sampling and latent-space tools on the command line, from a training workdir or a SavedModel.

Each sub-command calls the Python function of the same name (hyphens for
underscores) in :mod:`glow_tf.latent_tools` / :mod:`glow_tf.attributes`, all
re-exported here, and writes PNG files::

    python -m glow_tf.sample sample-grids --model=RUN_OR_SAVEDMODEL --out_dir=DIR \\
        [--temperatures=0,0.5,0.7,1] [--num_samples=16] [--classes=0,3] [--seed=0]
    python -m glow_tf.sample interpolate --model=... --image_a=A.png --image_b=B.png --out=strip.png \\
        [--steps=8] [--labels=1,7] [--resize]
    python -m glow_tf.sample attribute-directions --model=... --out=directions.npz \\
        (--dataset=celeba [--data_dir=...] [--split=train] [--max_examples=N] | --folder=DIR --csv=labels.csv)
    python -m glow_tf.sample manipulate --model=... --directions=directions.npz --attribute=Smiling \\
        --image=face.png --out=strip.png [--alphas=-1,-0.5,0,0.5,1] [--label=3] [--resize]

``--model`` is a SavedModel folder (from ``python -m glow_tf.export``) or a training
workdir (with ``--checkpoint=latest|best``; EMA weights when the run kept them).
A user error (missing file, wrong image size, unknown attribute, negative
temperature, ...) prints one line on stderr and exits with status 1.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
from collections.abc import Sequence  # noqa: E402

from glow_tf import _cli, data, parallelism, summaries  # noqa: E402
from glow_tf.attributes import (  # noqa: E402
    DirectionAccumulator,
    Directions,
    attribute_directions,
    directions_from_csv,
    directions_from_dataset,
    read_attribute_csv,
)
from glow_tf.inference import InferenceModel, load_inference_model  # noqa: E402
from glow_tf.latent_tools import interpolate, load_image, manipulate, sample_grids, save_pngs  # noqa: E402

__all__ = [
    "DirectionAccumulator",
    "Directions",
    "InferenceModel",
    "attribute_directions",
    "directions_from_csv",
    "directions_from_dataset",
    "interpolate",
    "load_image",
    "load_inference_model",
    "main",
    "manipulate",
    "read_attribute_csv",
    "sample_grids",
    "save_pngs",
]


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _run_sample_grids(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    grids = sample_grids(model, args.temperatures, args.num_samples, args.classes, args.seed)
    return save_pngs(grids, args.out_dir, prefix="samples_")


def _run_interpolate(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    image_a = load_image(args.image_a, model.image_shape, args.resize)
    image_b = load_image(args.image_b, model.image_shape, args.resize)
    strip = interpolate(model, image_a, image_b, args.steps, args.labels)
    return [summaries.write_png(args.out, summaries.image_grid(strip, rows=1))]


def _run_attribute_directions(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    if bool(args.dataset) == bool(args.folder or args.csv):
        raise ValueError("attribute-directions needs either --dataset or both --folder and --csv.")
    if args.dataset:
        cfg = data.default_config()
        cfg.name, cfg.image_size, cfg.channels = args.dataset, model.image_shape[0], model.image_shape[2]
        cfg.data_dir = args.data_dir
        directions = directions_from_dataset(model, cfg, args.split, args.max_examples, args.batch_size)
    else:
        if not (args.folder and args.csv):
            raise ValueError("attribute-directions from files needs both --folder and --csv.")
        directions = directions_from_csv(model, args.folder, args.csv, args.batch_size, args.resize)
    print(
        f"{len(directions.names)} directions from {int(directions.num_positive[0] + directions.num_negative[0])} images"
    )
    return [directions.save(args.out)]


def _run_manipulate(model: InferenceModel, args: argparse.Namespace) -> list[str]:
    directions = Directions.load(args.directions)
    if directions.image_shape and tuple(directions.image_shape) != model.image_shape:
        raise ValueError(
            f"{args.directions} was computed for images {directions.image_shape}, not {model.image_shape}."
        )
    direction = directions.get(args.attribute)
    image = load_image(args.image, model.image_shape, args.resize)
    strip = manipulate(model, image, direction, args.alphas, args.label)
    return [summaries.write_png(args.out, summaries.image_grid(strip, rows=1))]


_COMMANDS = {
    "sample-grids": _run_sample_grids,
    "interpolate": _run_interpolate,
    "attribute-directions": _run_attribute_directions,
    "manipulate": _run_manipulate,
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glow_tf.sample", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = _cli.model_arguments()

    p = sub.add_parser("sample-grids", parents=[common], help="grids of samples at several temperatures")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--temperatures", type=_floats, default=[0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    p.add_argument("--num_samples", type=int, default=16)
    p.add_argument("--classes", type=_ints, default=None, help="class ids (class-conditional models; default all)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("interpolate", parents=[common], help="a strip from one reconstruction to another")
    p.add_argument("--image_a", required=True)
    p.add_argument("--image_b", required=True)
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--labels", type=_ints, default=None, help="label_a,label_b (class-conditional models)")
    p.add_argument("--resize", action="store_true", help="centre-crop and resize images of another size")

    p = sub.add_parser("attribute-directions", parents=[common], help="mean(eps|attr) - mean(eps|not attr)")
    p.add_argument("--out", required=True, help=".npz file")
    p.add_argument("--dataset", default="", help="a dataset with attributes (celeba)")
    p.add_argument("--data_dir", default=None, help="TFDS data_dir")
    p.add_argument("--split", default="train", choices=("train", "test"))
    p.add_argument("--max_examples", type=int, default=None)
    p.add_argument("--folder", default="", help="image folder (with --csv)")
    p.add_argument("--csv", default="", help="CSV: header 'file,<attr>,...'; values 0/1 or -1/1")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--resize", action="store_true", help="centre-crop and resize images of another size")

    p = sub.add_parser("manipulate", parents=[common], help="a strip of one image edited along a direction")
    p.add_argument("--directions", required=True, help=".npz from attribute-directions")
    p.add_argument("--attribute", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--alphas", type=_floats, default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    p.add_argument("--label", type=int, default=None, help="class id (class-conditional models)")
    p.add_argument("--resize", action="store_true", help="centre-crop and resize an image of another size")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 for a user error, reported on stderr)."""
    args = _parser().parse_args(argv)
    parallelism.configure_cpu_threads()
    return _cli.run_model_command("glow_tf.sample", args, _COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
