"""Convert OpenAI's original Glow runs into glow_tf runs, and glow_tf runs into the original's format.

A logdir of openai/glow's ``train.py`` (``train.txt`` / ``test.txt`` whose first line is
the hps JSON, and the TF1 checkpoint ``model_best_loss.ckpt``) becomes a normal glow_tf
workdir: ``config.json`` (from the hps, see :mod:`glow_tf.openai_hps`), a step-0
checkpoint in ``checkpoints/`` with every weight mapped (see the table in
:mod:`glow_tf.openai_layout`), the actnorm init flags set and a fresh Adamax state, plus
``config.py`` (the same config for ``train.py --config=``), ``openai_hps.json`` (the
original hps) and ``converted_from.json`` (provenance). Every glow_tf tool then works on
it unchanged::

    python -m glow_tf.convert --openai_logdir=DIR --workdir=OUT [--checkpoint=NAME] [--ema]
        [--data_name=npz --data_path=FILE] [--data_dir=TFDS_DIR]
    python train.py --mode=eval --workdir=OUT
    python -m glow_tf.sample sample-grids --model=OUT --out_dir=grids
    python -m glow_tf.export --workdir=OUT
    python train.py --config=OUT/config.py --workdir=OUT --config.train.num_steps=N   # fine-tune

``--ema`` takes the checkpoint's Polyak averages (``<name>/ExponentialMovingAverage``)
instead of the raw weights; ``--data_*`` replace the dataset the original's ``problem``
maps to (for data available locally). The Adamax state is not carried over.

The reverse direction writes a glow_tf run as an original-format logdir (TF1 checkpoint
with the original's variable names, its EMA copies and a fresh Adamax state, the hps as
the first line of ``train.txt`` and ``test.txt``, and the Saver's ``checkpoint`` file),
so the original's ``train.py --restore_path=LOGDIR/model_best_loss.ckpt`` restores it::

    python -m glow_tf.convert --to_openai --workdir=RUN --openai_logdir=OUT [--checkpoint=latest|best]
        [--problem=cifar10] [--category=bedroom]

Both directions refuse to overwrite an existing run and write into a temporary sibling
folder that is renamed into place at the end, so a failed conversion leaves nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from glow_tf import checkpointing, config_lib, data, inference, openai_hps, openai_layout, train_lib, workdirs  # noqa: E402
from glow_tf.model import Glow  # noqa: E402

__all__ = [
    "CONFIG_SCRIPT",
    "DEFAULT_CHECKPOINT",
    "HPS_FILE",
    "SOURCE_FILE",
    "Conversion",
    "OpenAIRun",
    "from_openai",
    "main",
    "original_checkpoint",
    "to_openai",
    "write_run",
]

DEFAULT_CHECKPOINT = "model_best_loss.ckpt"  # the only checkpoint the original's train.py writes
HPS_FILE = "openai_hps.json"  # in a converted workdir: the original run's hps
SOURCE_FILE = "converted_from.json"  # provenance of a converted workdir or logdir
CONFIG_SCRIPT = "config.py"  # in a converted workdir: its config.json for train.py --config=
_ORIGINAL_ENTRIES = ("train.txt", "test.txt", "checkpoint", DEFAULT_CHECKPOINT + ".index")

_CONFIG_SCRIPT_TEXT = '''"""This run's config.json, for python train.py --config=<this file> --workdir=<this folder>."""

import os

from glow_tf import config_lib


def get_config():
    """The config.json next to this file."""
    return config_lib.load_config_json(os.path.dirname(os.path.abspath(__file__)))
'''


@dataclasses.dataclass
class Conversion:
    """What :func:`from_openai` wrote: the workdir, its config, the converted model and notes."""

    workdir: str
    config: ml_collections.ConfigDict
    model: Glow
    notes: list[str]


@dataclasses.dataclass
class OpenAIRun:
    """What :func:`to_openai` wrote: the logdir, its checkpoint prefix, the hps and notes."""

    logdir: str
    checkpoint: str
    hps: dict
    notes: list[str]


# ----------------------------------------------------------------------------- files
def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_run(config: ml_collections.ConfigDict, model: Glow, workdir: str, files: dict[str, str] | None = None) -> str:
    """Writes a new glow_tf run: ``config.json`` and a step-0 checkpoint of ``model`` with a fresh optimizer.

    The checkpoint has exactly the structure a ``train_lib.Trainer`` saves
    (``train_lib.build_run_state``), so training resumes from it.

    Args:
      config: the run's config (validated).
      model: an initialised model built from ``config``.
      workdir: the new run's folder; must not exist or be empty.
      files: extra text files to write into it, ``{name: text}``.

    Returns:
      ``workdir``.

    Raises:
      FileExistsError: ``workdir`` exists and is not empty.
      ValueError: an invalid config, an uninitialised model or non-finite weights.
    """
    config_lib.validate_config(config)
    workdirs.check_new_folder(workdir, workdirs.RUN_ENTRIES, "workdir")
    if not model.initialized:
        raise ValueError("The model is not initialised (some actnorm init flags are False); nothing was written.")
    with workdirs.staged(workdir) as staging:
        config_lib.save_config(config, staging)
        state = train_lib.build_run_state(config, model, config_lib.global_batch_size(config, 1))
        saver = checkpointing.CheckpointSet(
            staging, state.checkpoint, list(model.variables), max_to_keep=config.train.keep_checkpoints
        )
        if saver.save(0) is None:
            raise ValueError("Some weights are not finite; nothing was written.")
        for name, text in (files or {}).items():
            _write_text(os.path.join(staging, name), text)
    return workdir


# ----------------------------------------------------------------------------- original -> glow_tf
def original_checkpoint(logdir: str, name: str = DEFAULT_CHECKPOINT) -> str:
    """The prefix of checkpoint ``name`` (relative to ``logdir``, or a path) of an original run.

    The Saver's ``checkpoint`` state file is not used: it holds the training machine's
    absolute paths.

    Raises:
      FileNotFoundError: no ``<prefix>.index`` (lists the checkpoints that are there).
    """
    name = re.sub(r"\.(index|data-\d+-of-\d+)$", "", name)
    prefix = name if os.path.isabs(name) else os.path.join(logdir, name)
    if not os.path.isfile(prefix + ".index"):
        found = sorted(f[: -len(".index")] for f in os.listdir(logdir) if f.endswith(".index"))
        raise FileNotFoundError(
            f"No checkpoint {name!r} in {logdir!r} ({prefix}.index does not exist); "
            f"checkpoints there: {', '.join(found) or 'none'}."
        )
    return prefix


def from_openai(
    logdir: str,
    workdir: str,
    checkpoint: str = DEFAULT_CHECKPOINT,
    ema: bool = False,
    data_name: str | None = None,
    data_path: str | None = None,
    data_dir: str | None = None,
) -> Conversion:
    """Converts a logdir of openai/glow's ``train.py`` into a new glow_tf workdir.

    Args:
      logdir: the original run's folder (``train.txt`` or ``test.txt``, the checkpoint).
      workdir: the glow_tf run to write; must not exist or be empty.
      checkpoint: the checkpoint's name in ``logdir`` (or a path prefix).
      ema: use the checkpoint's ``ExponentialMovingAverage`` copies of the weights.
      data_name, data_path, data_dir: replace the dataset of the original's ``problem``
        (``config.data.name``, ``.path``, ``.data_dir``), e.g. ``'npz'`` and a file.

    Returns:
      A :class:`Conversion` (the converted model is live in it too).

    Raises:
      FileNotFoundError: no logdir, no hps file or no such checkpoint.
      FileExistsError: ``workdir`` is not new.
      ValueError: hps glow_tf cannot represent, a checkpoint that does not match the hps
        (missing, extra or mis-shaped tensors), or data that does not fit.
    """
    hps = openai_hps.read_hps(logdir)
    config, notes = openai_hps.config_from_hps(hps, data_name, data_path, data_dir)
    prefix = original_checkpoint(logdir, checkpoint)
    workdirs.check_new_folder(workdir, workdirs.RUN_ENTRIES, "workdir")
    info = data.dataset_info(config.data)
    openai_hps.check_classes(hps, config, info)
    model = inference.build_model(config, info)
    adamax = openai_layout.load_into(model, prefix, ema)
    weights = "ExponentialMovingAverage copies" if ema else "raw weights (--ema: its ExponentialMovingAverage copies)"
    notes.append(f"Weights: the checkpoint's {weights}.")
    notes.append(f"Not carried over: the optimizer state ({adamax} Adamax tensors); the run starts at step 0.")
    source = {"openai_logdir": os.path.abspath(logdir), "checkpoint": os.path.abspath(prefix), "ema": ema}
    files = {
        HPS_FILE: json.dumps(hps, indent=2) + "\n",
        SOURCE_FILE: json.dumps({**source, "notes": notes}, indent=2) + "\n",
        CONFIG_SCRIPT: _CONFIG_SCRIPT_TEXT,
    }
    write_run(config, model, workdir, files)
    for note in notes:
        logging.info("%s", note)
    return Conversion(workdir, config, model, notes)


# ----------------------------------------------------------------------------- glow_tf -> original
def _raw_model(config: ml_collections.ConfigDict, path: str) -> Glow:
    """The model of checkpoint ``path`` with its raw (not averaged) weights."""
    model = inference.build_model(config)
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model


def to_openai(
    workdir: str, logdir: str, checkpoint: str = "latest", problem: str | None = None, category: str | None = None
) -> OpenAIRun:
    """Writes a glow_tf run as a logdir of the original's format.

    The checkpoint holds every tensor the original's ``tf.train.Saver()`` restores: the
    weights under the original's names (relabelled back), their
    ``ExponentialMovingAverage`` copies (the run's EMA weights, or copies of the weights
    without EMA) and a fresh Adamax state. An LU-decomposed 1x1 convolution is written
    as its matrix ``W``.

    Args:
      workdir: the glow_tf run.
      logdir: the folder to write; must not exist or be empty.
      checkpoint: ``'latest'`` or ``'best'``.
      problem: the original's problem for a dataset with no counterpart (npz, folder,
        digits, celeba 64); default: from ``config.data``, else the hps the run was
        converted from.
      category: the LSUN category for the ``lsun*`` problems.

    Returns:
      An :class:`OpenAIRun`.

    Raises:
      FileNotFoundError: no such run or checkpoint.
      FileExistsError: ``logdir`` is not new.
      ValueError: a run the original cannot represent.
    """
    workdirs.check_new_folder(logdir, _ORIGINAL_ENTRIES, "openai_logdir")
    model, config, info = train_lib.restore_for_inference(workdir, checkpoint, with_info=True)
    averaged = None
    if config.optim.ema_decay > 0:  # restore_for_inference swapped the averages in
        averaged, model = model, _raw_model(config, info["path"])
    base = _read_json(os.path.join(workdir, HPS_FILE))
    hps, notes = openai_hps.hps_from_config(config, model.top_shape, model.num_classes, logdir, base, problem, category)
    tensors = openai_layout.original_tensors(model, averaged, beta1=hps["beta1"])
    copies = "the run's EMA weights" if averaged is not None else "the weights (the run has no EMA)"
    notes.append(f"ExponentialMovingAverage copies: {copies}; the Adamax state is fresh (t=1, zero moments).")
    with workdirs.staged(logdir) as staging:
        openai_layout.write_checkpoint(os.path.join(staging, DEFAULT_CHECKPOINT), tensors)
        _write_text(
            os.path.join(staging, "checkpoint"),
            f'model_checkpoint_path: "{DEFAULT_CHECKPOINT}"\nall_model_checkpoint_paths: "{DEFAULT_CHECKPOINT}"\n',
        )
        for name in openai_hps.HPS_FILES:
            _write_text(os.path.join(staging, name), json.dumps(hps) + "\n")
        source = {"workdir": os.path.abspath(workdir), "checkpoint": info["path"], "step": info["step"]}
        _write_text(os.path.join(staging, SOURCE_FILE), json.dumps({**source, "notes": notes}, indent=2) + "\n")
    for note in notes:
        logging.info("%s", note)
    return OpenAIRun(logdir, os.path.join(logdir, DEFAULT_CHECKPOINT), hps, notes)


# ----------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glow_tf.convert",
        description="Convert a run of OpenAI's original Glow into a glow_tf workdir (or, with --to_openai, back).",
    )
    parser.add_argument("--openai_logdir", required=True, help="the original's logdir (written with --to_openai)")
    parser.add_argument("--workdir", required=True, help="the glow_tf run folder (read with --to_openai)")
    parser.add_argument("--to_openai", action="store_true", help="write the glow_tf run as an original logdir")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help=f"the original checkpoint's name (default {DEFAULT_CHECKPOINT}); with --to_openai latest|best",
    )
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's ExponentialMovingAverage weights")
    parser.add_argument("--data_name", default=None, help=f"replace the run's dataset: one of {data.DATASETS}")
    parser.add_argument("--data_path", default=None, help="the .npz file or image folder of --data_name")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir")
    parser.add_argument("--problem", default=None, help=f"--to_openai: the original's problem, {openai_hps.PROBLEMS}")
    parser.add_argument("--category", default=None, help="--to_openai: the LSUN category")
    return parser


def _check_flags(args: argparse.Namespace) -> None:
    """One direction's flags only (a ``ValueError`` naming the stray ones)."""
    other = ("problem", "category") if not args.to_openai else ("ema", "data_name", "data_path", "data_dir")
    stray = [f"--{name}" for name in other if getattr(args, name) not in (None, False)]
    if stray:
        where = "the conversion from the original" if args.to_openai else "--to_openai"
        raise ValueError(f"{', '.join(stray)} {'is' if len(stray) == 1 else 'are'} only for {where}.")
    if args.to_openai and args.checkpoint not in (None, *inference.CHECKPOINT_KINDS):
        raise ValueError(f"With --to_openai, --checkpoint is one of {tuple(inference.CHECKPOINT_KINDS)}.")


def _describe(config: ml_collections.ConfigDict) -> str:
    m, d = config.model, config.data
    top = "learned top" if m.learn_top else "fixed top"
    classes = ", class-conditional" if m.class_conditional else ""
    return (
        f"{d.image_size}x{d.image_size}x{d.channels}, L={m.num_levels}, K={m.num_steps}, width {m.hidden_width}, "
        f"{m.coupling}, {m.permutation}, {top}{classes}, {d.n_bits} bits; data {d.name}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 for a user error, reported on stderr)."""
    args = _parser().parse_args(argv)
    try:
        _check_flags(args)
        if args.to_openai:
            run = to_openai(args.workdir, args.openai_logdir, args.checkpoint or "latest", args.problem, args.category)
            print(f"Wrote {args.workdir} as the original-format logdir {run.logdir} (problem {run.hps['problem']}).")
            notes = run.notes
            print(f"The original restores it with: python train.py --restore_path={run.checkpoint} <the run's flags>")
        else:
            conv = from_openai(
                args.openai_logdir,
                args.workdir,
                args.checkpoint or DEFAULT_CHECKPOINT,
                args.ema,
                args.data_name,
                args.data_path,
                args.data_dir,
            )
            print(f"Converted {args.openai_logdir} to the glow_tf run {conv.workdir}: {_describe(conv.config)}.")
            notes = conv.notes
            w = conv.workdir
            print(f"Evaluate: python train.py --mode=eval --workdir={w}")
            print(f"Sample:   python -m glow_tf.sample sample-grids --model={w} --out_dir={w}/grids")
            print(f"Export:   python -m glow_tf.export --workdir={w}")
            print(f"Fine-tune: python train.py --config={w}/{CONFIG_SCRIPT} --workdir={w} --config.train.num_steps=N")
    except (OSError, ValueError) as error:
        print(f"glow_tf.convert: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
