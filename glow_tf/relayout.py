"""A run rewritten in the other flow-step variable layout: per-step <-> stacked, every checkpoint, exactly.

A run keeps the variable layout its checkpoints were written in (``model.stack_variables``,
see :mod:`glow_tf.workdirs`), so runs from before stacked variables (:mod:`glow_tf.stacking`)
resume per-step, with per-step start-up times. This tool writes a copy of such a run in
the stacked layout (or back), which then resumes, evaluates, samples and exports as if it
had been trained that way::

    python -m glow_tf.relayout --workdir=OLD --output_workdir=NEW [--nostack_variables]

What is carried over, for every checkpoint in ``checkpoints/`` and ``best/`` (same
numbers, same ``best.json``): the model's variables, the Adamax slots ``m`` and ``v``,
the EMA averages, the step, the best bits/dim, the optimizer's and the EMA's counters
and the float16 loss scale. A variable of step ``k`` and row ``k`` of its stacked
variable hold the same numbers, so the values are copied, not recomputed: resuming the
copy continues the original run bit for bit. The run's other files (TensorBoard
events, sample grids, ...) are copied as they are; ``config.json`` differs in
``model.stack_variables`` only; ``relayout_from.json`` records the source.

The source run is only read. The copy is written into a temporary sibling folder and
renamed into place at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from glow_tf import checkpointing, config_lib, inference, stacking, train_lib, workdirs  # noqa: E402

__all__ = ["SOURCE_FILE", "Relayout", "relayout", "main"]

SOURCE_FILE = "relayout_from.json"  # in the copy: where it came from
_LAYOUTS = {False: "per-step", True: "stacked"}


@dataclasses.dataclass
class Relayout:
    """What :func:`relayout` wrote: the new run, its layout and the checkpoints (``checkpoints/ckpt-20``, ...)."""

    workdir: str
    stack_variables: bool
    checkpoints: list[str]


def _cells(state: train_lib.RunState) -> dict[str, tuple[tf.Variable, int | None]]:
    """Every number of a run's checkpoint, keyed the same in both layouts: ``{key: (variable, row or None)}``.

    A model variable is keyed by its per-step name (``level0/step3/coupling/conv1/kernel:0``;
    row ``k`` of a stacked variable by step ``k``'s), its Adamax slots and EMA average by
    that name and ``|m``, ``|v``, ``|ema``; every other variable of the checkpoint (step,
    best, the optimizer's and EMA's counters, the loss scale) by its own name.
    """
    model = state.model
    stacked = {v.ref() for level in model.levels for v in level.stacked_step_variables}

    def keyed(variable: tf.Variable, suffix: str = "", like: tf.Variable | None = None) -> dict:
        like = variable if like is None else like
        if like.ref() in stacked:
            return {stacking.step_name(like.name, k) + suffix: (variable, k) for k in range(int(like.shape[0]))}
        return {like.name + suffix: (variable, None)}

    cells: dict = {}
    for v in model.variables:
        cells.update(keyed(v))
    for v in state.variables:
        for slot in state.optimizer.get_slot_names():
            cells.update(keyed(state.optimizer.get_slot(v, slot), f"|{slot}", like=v))
    averaged = []
    if state.ema is not None:
        averaged = state.ema.averages
        for average, v in zip(averaged, state.ema.averaged_variables()):
            cells.update(keyed(average, "|ema", like=v))
    known = {v.ref() for v in [*model.variables, *averaged]}
    others = [
        o
        for o in tf.train.TrackableView(state.checkpoint).descendants()
        if isinstance(o, tf.Variable) and o.ref() not in known
    ]
    names = [v.name for v in others]
    if len(set(names)) != len(names):  # keyed by name: a new kind of state must get a key of its own
        raise ValueError(f"Two checkpointed variables share a name among {sorted(names)}; cannot match them.")
    cells.update({f"|{v.name}": (v, None) for v in others})
    return cells


def _copy_state(source: dict, target: dict) -> None:
    """Assigns every target variable from the source cells of the same keys (rows stacked or split)."""
    if sorted(source) != sorted(target):
        missing = sorted(set(source) ^ set(target))
        raise ValueError(f"The two layouts do not hold the same state; unmatched: {missing[:5]}.")
    values: dict = {}  # one read per source variable

    def read(key: str) -> np.ndarray:
        variable, row = source[key]
        if variable.ref() not in values:
            values[variable.ref()] = variable.numpy()
        value = values[variable.ref()]
        return value if row is None else value[row]

    rows: dict = {}
    for key, (variable, row) in target.items():
        rows.setdefault(variable.ref(), (variable, {}))[1][row] = read(key)
    for variable, by_row in rows.values():
        value = by_row[None] if None in by_row else np.stack([by_row[k] for k in range(len(by_row))])
        variable.assign(value)


def _run_state(config) -> tuple[train_lib.RunState, dict]:
    """A fresh run state (model, optimizer with its slots, EMA, ...) for ``config``, and its :func:`_cells`."""
    state = train_lib.build_run_state(config, inference.build_model(config), config_lib.global_batch_size(config, 1))
    return state, _cells(state)


def _number(prefix: str) -> int:
    return int(re.search(r"-(\d+)$", prefix).group(1))


def relayout(workdir: str, output_workdir: str, stack_variables: bool = True) -> Relayout:
    """Writes the run in ``workdir`` to ``output_workdir`` with ``model.stack_variables = stack_variables``.

    Args:
      workdir: a training run (read only).
      output_workdir: the copy's folder; must not exist or be empty.
      stack_variables: the copy's layout (True: one ``[K, ...]`` variable per level and
        kind of step variable; False: one variable per step).

    Returns:
      What was written.

    Raises:
      FileNotFoundError: ``workdir`` or its config.json is missing, or it holds no checkpoint.
      FileExistsError: ``output_workdir`` is not empty.
      ValueError: the run already has that layout, or its config.json is invalid.
      checkpointing.CheckpointError: a checkpoint does not fit the run's config, or is unreadable.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"Workdir {workdir!r} does not exist.")
    config = config_lib.load_config_json(workdir)
    source_layout, stack_variables = bool(config.model.stack_variables), bool(stack_variables)
    if source_layout == stack_variables:
        raise ValueError(
            f"{workdir} already keeps {_LAYOUTS[stack_variables]} step variables (model.stack_variables="
            f"{stack_variables}); nothing to do. The other is --{'no' if stack_variables else ''}stack_variables."
        )
    prefixes = {kind: workdirs.checkpoint_prefixes(workdir, kind) for kind in workdirs.CHECKPOINT_KINDS}
    if not any(prefixes.values()):
        raise FileNotFoundError(f"{workdir} holds no checkpoint (checkpoints/ckpt-N or best/best-N) to rewrite.")
    source_dir = os.path.abspath(workdir)
    if os.path.commonpath([source_dir, os.path.abspath(output_workdir)]) == source_dir:
        raise ValueError("--output_workdir must be a new folder outside the run (which is never changed).")
    workdirs.check_new_folder(output_workdir, workdirs.RUN_ENTRIES, "output_workdir")

    source, source_cells = _run_state(config)
    target_config = config_lib.load_config_json(workdir)
    target_config.model.stack_variables = stack_variables
    target, target_cells = _run_state(target_config)
    what = f"the model that {os.path.join(workdir, workdirs.CONFIG_FILE)} describes"
    written = []
    with workdirs.staged(output_workdir) as staging:
        for name in sorted(os.listdir(workdir)):
            if name in workdirs.RUN_ENTRIES or name.startswith("."):
                continue  # rewritten below; hidden: a worker's temporary folder
            path = os.path.join(workdir, name)
            (shutil.copytree if os.path.isdir(path) else shutil.copy2)(path, os.path.join(staging, name))
        config_lib.save_config(target_config, staging)
        keep = max(config.train.keep_checkpoints, len(prefixes["latest"]))
        saver = checkpointing.CheckpointSet(staging, target.checkpoint, list(target.model.variables), max_to_keep=keep)
        managers = {"latest": saver.latest, "best": saver.best}
        for kind in workdirs.CHECKPOINT_KINDS:
            for prefix in reversed(prefixes[kind]):  # oldest first, as the run wrote them
                checkpointing.restore_first_good(source.checkpoint, [prefix], what=what)
                _copy_state(source_cells, target_cells)
                # The save counter (tf.train.Checkpoint's own, which the manager's save adds one to) as well.
                target.checkpoint.save_counter.assign(source.checkpoint.save_counter - 1)
                path = managers[kind].save(checkpoint_number=_number(prefix))
                logging.info("Rewrote %s as %s", prefix, path)
                written.append(os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path)))
        best = os.path.join(workdir, "best", "best.json")
        if os.path.isfile(best):
            shutil.copy2(best, os.path.join(staging, "best", "best.json"))
        record = {"workdir": source_dir, "stack_variables": [source_layout, stack_variables]}
        with open(os.path.join(staging, SOURCE_FILE), "w", encoding="utf-8") as f:
            json.dump({**record, "checkpoints": written}, f, indent=2)
            f.write("\n")
    return Relayout(output_workdir, stack_variables, written)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glow_tf.relayout",
        description="Copy a glow_tf run with stacked (or per-step) flow-step variables; the run is only read.",
    )
    parser.add_argument("--workdir", required=True, help="the run to read")
    parser.add_argument("--output_workdir", required=True, help="the new run's folder (must not exist or be empty)")
    parser.add_argument(
        "--stack_variables",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the copy's layout: stacked (default) or, with --nostack_variables, one variable per step",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 for a user error, reported on stderr)."""
    argv = [("--no-stack_variables" if a == "--nostack_variables" else a) for a in (argv or sys.argv[1:])]
    args = _parser().parse_args(argv)
    try:
        done = relayout(args.workdir, args.output_workdir, args.stack_variables)
    except (OSError, ValueError) as error:
        print(f"glow_tf.relayout: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(
        f"Wrote {args.workdir} with {_LAYOUTS[done.stack_variables]} step variables to {done.workdir} "
        f"({len(done.checkpoints)} checkpoints: {', '.join(done.checkpoints)})."
    )
    print(f"Resume it with the run's own train.py command and --workdir={done.workdir} (the layout is the run's).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
