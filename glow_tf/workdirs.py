"""Run folders: what counts as a saved run, resuming one safely, and setting one aside.

A workdir *holds a run* once it holds a checkpoint (``checkpoints/ckpt-N`` or
``best/best-N``). Such a run is only ever resumed by a config that agrees with its
``config.json`` on the fields that define it (``config_lib.resume_differences``:
the model, the data and the seed); other fields (steps, cadences, learning rate,
eval and sample settings, ...) may change and are logged; ``model.stack_variables``
(the checkpoints' variable layout, not a property of the model) is taken from the run. Anything else stops
before a file is written, with an :class:`IncompatibleRunError` that names each
differing field and the two ways on: a new ``--workdir``, or ``--start_over``,
which moves the old run aside (:func:`move_aside`) and never deletes it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

import ml_collections
from absl import logging

from glow_tf import checkpointing, config_lib

__all__ = [
    "IncompatibleRunError",
    "check_workdir",
    "check_new_folder",
    "holds_run",
    "check_resume",
    "move_aside",
    "staged",
    "CONFIG_FILE",
    "RUN_ENTRIES",
]

CONFIG_FILE = "config.json"
# kind -> (folder under the workdir, checkpoint name)
CHECKPOINT_KINDS = {"latest": ("checkpoints", "ckpt"), "best": ("best", "best")}
RUN_ENTRIES = (CONFIG_FILE, "checkpoints", "best")  # what makes a folder a run, for check_new_folder


class IncompatibleRunError(ValueError):
    """The workdir holds a run that the new config cannot resume."""


def check_workdir(workdir: str) -> str:
    """Returns ``workdir``, or raises ``NotADirectoryError`` when it exists and is not a folder."""
    if not workdir:
        raise ValueError("The workdir must be a non-empty path.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir={workdir!r} is an existing file, not a folder; pass a folder path.")
    return workdir


def check_new_folder(path: str, entries: Sequence[str], what: str) -> None:
    """Refuses a target that exists with content (naming a run's files, ``entries``, when it holds them).

    Raises:
      FileExistsError: ``path`` is a file, holds ``entries`` or is not empty.
    """
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise FileExistsError(f"{what} {path!r} exists and is not a folder.")
    present = sorted(os.listdir(path))
    if not present:
        return
    run = [e for e in entries if e in present]
    if run:
        raise FileExistsError(
            f"{what} {path!r} already holds a run ({', '.join(run)}); choose a new folder (nothing was overwritten)."
        )
    raise FileExistsError(f"{what} {path!r} exists and is not empty; choose a new or empty folder.")


@contextlib.contextmanager
def staged(target: str) -> Iterator[str]:
    """A temporary sibling folder of ``target`` that replaces it (if empty) when the block succeeds.

    When the block fails the folder is removed and ``target`` is as it was: a
    half-written run never appears under its name.
    """
    parent = os.path.dirname(os.path.abspath(target))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(target))}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the run should not be
    try:
        yield staging
        if os.path.isdir(target):
            os.rmdir(target)  # empty: checked before
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def checkpoint_prefixes(workdir: str, kind: str) -> list[str]:
    """The ``latest`` or ``best`` checkpoint prefixes of a run, newest first."""
    folder, name = CHECKPOINT_KINDS[kind]
    return checkpointing.checkpoint_candidates(os.path.join(workdir, folder), name)


def holds_run(workdir: str) -> bool:
    """True when ``workdir`` holds at least one checkpoint (latest or best)."""
    return any(checkpoint_prefixes(workdir, kind) for kind in CHECKPOINT_KINDS)


def _format(value) -> str:
    return "(unset)" if value is None else repr(value)


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Checks that ``config`` may resume the run in ``workdir``; returns the allowed changes.

    Nothing is written. A workdir without checkpoints can always be (re)used.

    Returns:
      ``"field: old -> new"`` lines for the fields that changed legitimately.

    Raises:
      IncompatibleRunError: naming every field that defines the run and differs,
        and how to proceed.
      ValueError: the run's config.json is unreadable.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    if not holds_run(workdir) or not os.path.isfile(path):
        return []  # no checkpoint to protect, or none to compare with (the restore checks the structure)
    try:
        saved = config_lib.load_config_json(workdir)
    except ValueError as err:
        raise ValueError(f"The run's {path} is unreadable ({err}); use a new --workdir or --start_over.") from None
    kept = _keep_variable_layout(saved, config)
    incompatible, changed = config_lib.resume_differences(saved, config)
    if incompatible:
        fields = "; ".join(f"{f}: {_format(a)} in the run, {_format(b)} now" for f, a, b in incompatible)
        raise IncompatibleRunError(
            f"{workdir} holds a run whose model, data or seed differ from this config ({fields}). Its checkpoints "
            f"were left untouched. Train in a new --workdir, or pass --start_over (Trainer(start_over=True)) to move "
            "the old run aside and start a new one there."
        )
    return kept + [f"{f}: {_format(a)} -> {_format(b)}" for f, a, b in changed]


def _keep_variable_layout(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> list[str]:
    """Sets ``config.model.stack_variables`` to the run's: it is how the run's checkpoints lay out the same model.

    So a run saved with per-step variables (every run before the field existed)
    resumes under today's default, and the other way round.
    """
    layout = bool(saved.model.stack_variables)
    if bool(config.model.stack_variables) == layout:
        return []
    config.model.stack_variables = layout
    return [f"model.stack_variables: {layout!r}, the layout of the run's checkpoints, is kept"]


def move_aside(workdir: str) -> str:
    """Renames ``workdir`` to ``<workdir>.old-<YYYYmmdd-HHMMSS>`` (a new suffix if that exists); returns the new path.

    Raises:
      OSError: when the folder cannot be renamed (e.g. a mount point).
    """
    base = os.path.normpath(workdir)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target, n = f"{base}.old-{stamp}", 1
    while os.path.exists(target):
        n += 1
        target = f"{base}.old-{stamp}-{n}"
    os.rename(base, target)
    logging.warning("Moved the previous run in %s to %s (nothing was deleted).", workdir, target)
    return target
