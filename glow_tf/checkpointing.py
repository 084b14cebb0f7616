"""Checkpoints of a training run: latest, best-by-eval, corruption fallback, preemption.

Layout under the workdir::

    checkpoints/ckpt-<save#>.{index,data-*}   every N steps, at the end, on SIGTERM/SIGINT
    best/best-<save#>.{index,data-*}          the lowest eval bits/dim so far (+ best.json)

Only the chief writes into these folders; other workers of a multi-worker run save
into a private temporary folder (every worker must take part in a save) that is
then removed. A checkpoint is only written when every variable is finite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading

import numpy as np
import tensorflow as tf
from absl import logging

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "NoReadableCheckpointError",
    "CheckpointSet",
    "PreemptionWatcher",
    "all_finite",
    "checkpoint_candidates",
    "restore_first_good",
    "verify_readable",
]


class CheckpointError(ValueError):
    """A checkpoint that exists cannot be restored; nothing was changed on disk."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint holds another model (different shapes or structure) than the one built."""


class NoReadableCheckpointError(CheckpointError):
    """Every checkpoint of a folder is torn or corrupt."""


def _first_line(error: BaseException, limit: int = 400) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


def all_finite(variables) -> bool:
    """True when every entry of every variable is finite (floating variables only)."""
    for v in variables:
        if v.dtype.is_floating and not np.all(np.isfinite(v.numpy())):
            return False
    return True


def verify_readable(prefix: str) -> None:
    """Reads every tensor of a checkpoint, so a torn or corrupt file fails here (CRC checks).

    Raises:
      tf.errors.OpError or ValueError: when the checkpoint cannot be read completely.
    """
    reader = tf.train.load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)


class CheckpointSet:
    """The run's ``latest`` and ``best`` checkpoint managers around one ``tf.train.Checkpoint``.

    Args:
      workdir: the run's folder.
      checkpoint: the ``tf.train.Checkpoint`` of everything that makes up the state.
      variables: the variables whose finiteness gates every save.
      max_to_keep: latest checkpoints to keep.
      is_chief: False on non-chief workers (saves go to a temporary folder).
      worker_index: used to name the temporary folder of a non-chief worker.
    """

    def __init__(
        self,
        workdir: str,
        checkpoint: tf.train.Checkpoint,
        variables,
        max_to_keep: int = 3,
        is_chief: bool = True,
        worker_index: int = 0,
    ):
        self.workdir = workdir
        self.checkpoint = checkpoint
        self.variables = list(variables)
        self.is_chief = is_chief
        root = workdir if is_chief else os.path.join(workdir, f".worker{worker_index}_tmp")
        self._tmp_root = None if is_chief else root
        self.latest = _manager(checkpoint, os.path.join(root, "checkpoints"), max_to_keep, "ckpt")
        self.best = _manager(checkpoint, os.path.join(root, "best"), 1, "best")
        self._saved: set[str] = set()

    def _save(self, manager: tf.train.CheckpointManager, step: int) -> str | None:
        if not all_finite(self.variables):
            logging.error("Not saving a checkpoint at step %d: some weights are not finite.", step)
            return None
        path = manager.save(checkpoint_number=step)
        self._saved.add(path)
        if self._tmp_root is not None:
            shutil.rmtree(self._tmp_root, ignore_errors=True)
        else:
            logging.info("Saved checkpoint %s", path)
        return path

    def save(self, step: int) -> str | None:
        """Saves a ``latest`` checkpoint for ``step`` unless this run already did; returns its path or None."""
        path = os.path.join(self.latest.directory, f"ckpt-{step}")
        if path in self._saved:
            return path
        return self._save(self.latest, step)

    def save_best(self, step: int, bits_per_dim: float) -> str | None:
        """Saves the ``best`` checkpoint and writes ``best/best.json`` with the step and value."""
        path = self._save(self.best, step)
        if path and self.is_chief:
            target = os.path.join(self.workdir, "best", "best.json")
            with open(target + ".tmp", "w", encoding="utf-8") as f:
                json.dump({"step": step, "bits_per_dim": bits_per_dim, "checkpoint": os.path.basename(path)}, f)
            os.replace(target + ".tmp", target)
        return path

    def restore_latest(self, what: str = "this run's model") -> str | None:
        """Restores the newest readable ``latest`` checkpoint.

        A torn or corrupt newest checkpoint is skipped with a warning and the one
        before it is tried, and so on.

        Args:
          what: the model's origin, for error messages (e.g. "the model of runs/x/config.json").

        Returns:
          The restored checkpoint's path, or None when the run has no ``latest``
          checkpoint at all.

        Raises:
          CheckpointMismatchError: a readable checkpoint holds another model.
          NoReadableCheckpointError: checkpoints exist but none is readable.
        """
        # Every worker restores from the chief's folder (a shared file system is assumed).
        candidates = checkpoint_candidates(os.path.join(self.workdir, "checkpoints"), "ckpt")
        return restore_first_good(self.checkpoint, candidates, what=what) if candidates else None


def _manager(checkpoint: tf.train.Checkpoint, directory: str, max_to_keep: int, name: str):
    """A ``CheckpointManager``; a corrupt ``checkpoint`` state file is set aside with a warning."""
    try:
        return tf.train.CheckpointManager(checkpoint, directory, max_to_keep, checkpoint_name=name)
    except Exception as err:  # a torn state file fails to parse with a protobuf error
        state = os.path.join(directory, "checkpoint")
        logging.warning("Unreadable checkpoint state %s (%s); rebuilding it from the files present.", state, err)
        os.replace(state, state + ".corrupt")
        return tf.train.CheckpointManager(checkpoint, directory, max_to_keep, checkpoint_name=name)


def checkpoint_candidates(directory: str, name: str) -> list[str]:
    """Prefixes ``directory/name-N`` that have an index file, highest ``N`` first."""
    if not tf.io.gfile.isdir(directory):
        return []
    found = []
    for filename in tf.io.gfile.listdir(directory):
        match = re.fullmatch(re.escape(name) + r"-(\d+)\.index", filename)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, filename[: -len(".index")])))
    return [prefix for _, prefix in sorted(found, reverse=True)]


def restore_first_good(
    checkpoint: tf.train.Checkpoint, candidates, partial: bool = False, what: str = "the model built here"
) -> str:
    """Restores the first readable checkpoint among ``candidates`` (newest first).

    Only a genuinely torn or corrupt file (one whose tensors fail to read, CRC
    checks included) is skipped, with a warning. A readable checkpoint whose
    shapes or structure differ from ``checkpoint``'s is another model, not a torn
    file: that stops the restore with an error, whatever older checkpoints exist.

    Args:
      checkpoint: the object graph to restore into.
      candidates: checkpoint prefixes, newest first (at least one).
      partial: allow the checkpoint to hold more than ``checkpoint`` needs (inference).
      what: where the model came from, for error messages.

    Returns:
      The restored prefix.

    Raises:
      CheckpointMismatchError: naming the checkpoint, ``what`` and the first mismatch.
      NoReadableCheckpointError: when no candidate is readable (or there is none).
    """
    candidates = list(candidates)
    for prefix in candidates:
        try:
            verify_readable(prefix)
        except Exception as err:  # torn files surface as OpError, IndexError, ValueError, ...
            logging.warning(
                "Checkpoint %s is unreadable (%s); falling back to the previous one.", prefix, _first_line(err)
            )
            continue
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            status.assert_existing_objects_matched()
        except Exception as err:  # a shape mismatch (ValueError), a missing object (AssertionError), ...
            raise CheckpointMismatchError(
                f"Checkpoint {prefix} does not match {what}: {_first_line(err)}. They come from different runs or "
                "configs; nothing was changed."
            ) from None
        logging.info("Restored %s", prefix)
        return prefix
    folder = os.path.dirname(candidates[0]) if candidates else "(no checkpoints)"
    raise NoReadableCheckpointError(
        f"None of the {len(candidates)} checkpoint(s) in {folder} is readable (torn or corrupt files); nothing was "
        "changed. Restore the folder from a backup, or train in a new --workdir."
    )


class PreemptionWatcher:
    """Turns SIGTERM / SIGINT into a "save and stop" request while the context is open.

    The training loop polls :attr:`requested` after each step. A second SIGINT
    raises ``KeyboardInterrupt`` at once. Outside the main thread (where handlers
    cannot be installed) the watcher is inert.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        """True once a watched signal arrived."""
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning("Received %s: saving a checkpoint and stopping after this step.", signal.Signals(signum).name)
        self.signum = signum

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
