"""The plumbing every benchmark script shares: environment, flags, child processes, peak RSS, JSON.

Import it before anything that imports TensorFlow (ruff's import order puts it first
among the third-party imports)::

    import _harness

Importing it sets ``TF_CPP_MIN_LOG_LEVEL=3`` and ``TF_USE_LEGACY_KERAS=1`` (as
``train.py``: TensorFlow then skips importing Keras 3) unless they are set already,
and puts the repository root and ``benchmarks/`` on ``sys.path``. It imports neither
TensorFlow nor NumPy. Then:

* flags are ``absl.flags``, as in ``train.py``; :func:`run` runs a script's
  ``main()`` under ``absl.app``. A list flag marked with :func:`choices` takes
  ``--name=a,b`` and, as the benchmarks' former argparse flags did, ``--name a b``;
* :func:`define_child_flags`, :func:`run_child`, :func:`child_job` and
  :func:`write_child_result`: a script that measures each variant in a fresh process
  (so peak RSS and tracing are per variant) re-invokes itself with
  ``--_child=<the job as JSON>`` and reads back the JSON result the child writes;
* :func:`peak_rss_mib`, :func:`machine_info`, :func:`timestamp`, :func:`result_path`
  and :func:`write_json` (results go to ``benchmarks/results/`` by default).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # as train.py: TensorFlow then skips importing Keras 3

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path[:0] = [path for path in (REPO, HERE) if path not in sys.path]

__all__ = [
    "HERE",
    "REPO",
    "RESULTS",
    "ChildError",
    "child_job",
    "choices",
    "define_child_flags",
    "joined_lists",
    "machine_info",
    "peak_rss_mib",
    "result_path",
    "run",
    "run_child",
    "timestamp",
    "write_child_result",
    "write_json",
]

FLAGS = flags.FLAGS
_SPACED_LISTS: set[str] = set()  # "--name" of the list flags that also take space-separated values


# ------------------------------------------------------------------ flags and main
def choices(holder: flags.FlagHolder, allowed: Sequence[str]) -> flags.FlagHolder:
    """Makes a ``flags.DEFINE_list`` flag take one or more of ``allowed``, also as ``--name a b``."""
    allowed = list(allowed)
    flags.register_validator(
        holder.name,
        lambda values: bool(values) and set(values) <= set(allowed),
        message=f"--{holder.name} takes one or more of {', '.join(allowed)}",
    )
    _SPACED_LISTS.add(f"--{holder.name}")
    return holder


def joined_lists(argv: Sequence[str], names: set[str] | None = None) -> list[str]:
    """``argv`` with ``--name a b`` written as ``--name=a,b`` for the list flags ``names`` (``--name``)."""
    names = _SPACED_LISTS if names is None else names
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, has_value, value = arg.partition("=")
        i += 1
        if name not in names:
            out.append(arg)
            continue
        values = [value] if has_value else []
        while i < len(argv) and not argv[i].startswith("-"):
            values.append(argv[i])
            i += 1
        out.append(f"{name}={','.join(values)}")
    return out


def run(main: Callable[[], Any]) -> None:
    """Parses the flags (absl) and runs ``main()``; a stray positional argument is an error."""

    def checked(argv: list[str]) -> None:
        if len(argv) > 1:
            sys.exit(f"Unexpected argument(s) {argv[1:]}: flags take the form --name=value (see --help).")
        main()

    app.run(checked, flags_parser=lambda argv: app.parse_flags_with_usage(joined_lists(argv)))


# ------------------------------------------------------------------ child processes
class ChildError(RuntimeError):
    """A child process failed (its exit status and the end of its stderr) or ran out of time."""


def define_child_flags() -> None:
    """The internal flags of :func:`run_child`: ``--_child`` (the job, JSON) and ``--_result``."""
    flags.DEFINE_string("_child", "", "Internal: one job as JSON; this process runs it and writes its JSON result.")
    flags.DEFINE_string("_result", "", "Internal: the file the child writes its JSON result to (default: stdout).")


def child_job() -> dict[str, Any] | None:
    """The job this process runs as a child (``--_child``), or None in the parent."""
    return json.loads(FLAGS._child) if FLAGS._child else None


def write_child_result(result: dict[str, Any]) -> None:
    """Hands the child's result to the parent: to ``--_result``, or as the last line of stdout."""
    if FLAGS._result:
        Path(FLAGS._result).write_text(json.dumps(result))
    else:
        print(json.dumps(result))


def run_child(script: str, job: dict[str, Any], args: Sequence[str] = (), timeout_s: float | None = None) -> dict:
    """Runs ``script --_child=<job> args`` in a fresh Python process; returns the JSON result it wrote.

    The child logs TensorFlow errors only and finds the repository and ``benchmarks/``
    on ``PYTHONPATH``. Raises :class:`ChildError` when it exits non-zero, writes no
    result or runs past ``timeout_s``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, os.path.abspath(script), f"--_child={json.dumps(job)}", f"--_result={out}", *args]
        path = os.pathsep.join([REPO, HERE, *filter(None, [os.environ.get("PYTHONPATH")])])
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=path)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as err:
            raise ChildError(f"timed out after {timeout_s} s: {err}") from None
        if proc.returncode != 0 or not out.exists():
            raise ChildError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
        return json.loads(out.read_text())


# ------------------------------------------------------------------ measurements and results
def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``VmHWM`` in /proc/self/status).

    Without /proc: ``getrusage``'s ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (2**20 if sys.platform == "darwin" else 1024)


def machine_info() -> dict[str, Any]:
    """Python version, CPU count, platform and (with psutil) total memory in GiB."""
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_gib"] = psutil.virtual_memory().total / 2**30
    except ImportError:
        pass
    return info


def timestamp() -> str:
    """The local time as ``YYYYmmdd-HHMMSS`` (the result files' suffix)."""
    return time.strftime("%Y%m%d-%H%M%S")


def result_path(name: str, folder: str | os.PathLike | None = None) -> str:
    """``<folder>/<name>.json``; the folder defaults to ``benchmarks/results``."""
    return os.path.join(folder or RESULTS, f"{name}.json")


def write_json(data: Any, path: str | os.PathLike) -> str:
    """Writes ``data`` as indented JSON to ``path`` (creating its folder); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path
