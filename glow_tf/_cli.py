"""The shared body of the model tools' command lines (``glow_tf.sample``, ``glow_tf.score``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping

from glow_tf.inference import load_inference_model


def model_arguments() -> argparse.ArgumentParser:
    """The arguments every model subcommand takes (a parent parser): ``--model`` and ``--checkpoint``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="SavedModel folder or training workdir")
    common.add_argument("--checkpoint", default="latest", choices=("latest", "best"), help="for a workdir")
    return common


def run_model_command(tool: str, args: argparse.Namespace, commands: Mapping[str, Callable]) -> int:
    """Loads ``args.model`` (``args.checkpoint``), runs ``commands[args.command]`` on it, prints what it wrote.

    Returns the exit status: 0, or 1 for a user error (a missing or mismatched run, a
    bad value), reported as one line on stderr without a traceback.
    """
    try:
        model = load_inference_model(args.model, args.checkpoint)
        paths = commands[args.command](model, args)
    except (FileNotFoundError, ValueError) as error:
        print(f"{tool} {args.command}: error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0
