"""The benchmarks' shared harness (benchmarks/_harness.py): fast checks, no TensorFlow, no benchmark run."""

import ast
import importlib
import json
import os
import pathlib
import resource
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def harness():
    """benchmarks/_harness.py, imported without leaving its environment variables or sys.path behind."""
    environ, path = dict(os.environ), list(sys.path)
    sys.path.insert(0, str(BENCH))
    try:
        module = importlib.import_module("_harness")
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.path[:] = path
    return module


def test_space_separated_list_flags_are_joined(harness):
    names = {"--systems", "--configs"}
    argv = ["prog", "--systems", "a", "b", "--repeats", "1", "--configs=x", "y", "--out", "/tmp/o"]
    assert harness.joined_lists(argv, names) == [
        "prog",
        "--systems=a,b",
        "--repeats",
        "1",
        "--configs=x,y",
        "--out",
        "/tmp/o",
    ]
    assert harness.joined_lists(["prog", "--systems=a,b"], names) == ["prog", "--systems=a,b"]


def test_child_round_trip_and_failure(harness, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(
        textwrap.dedent(
            """
            import os

            import _harness
            from absl import flags

            flags.DEFINE_integer("scale", 1, "")
            _harness.define_child_flags()
            FLAGS = flags.FLAGS


            def main():
                job = _harness.child_job()
                if job.get("fail"):
                    raise SystemExit("child failed on purpose")
                env = {k: os.environ.get(k) for k in ("TF_CPP_MIN_LOG_LEVEL", "TF_USE_LEGACY_KERAS")}
                _harness.write_child_result({"x": job["x"] * FLAGS.scale, "env": env})


            _harness.run(main)
            """
        )
    )
    result = harness.run_child(str(script), {"x": 21}, ["--scale=2"], timeout_s=60)
    legacy_keras = os.environ.get("TF_USE_LEGACY_KERAS", "1")  # the harness sets it unless it is set
    assert result == {"x": 42, "env": {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": legacy_keras}}
    with pytest.raises(harness.ChildError, match="exit 1: .*child failed on purpose"):
        harness.run_child(str(script), {"fail": True}, timeout_s=60)


def test_peak_rss_is_this_process(harness):
    """VmHWM: this process's peak (``ru_maxrss`` can also count the image the process was exec'd from)."""
    rss = harness.peak_rss_mib()
    assert 10 < rss <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1


def test_write_json_and_result_path(harness, tmp_path):
    path = harness.write_json({"a": [1, 2]}, harness.result_path("bench-1", tmp_path / "new"))
    assert path == str(tmp_path / "new" / "bench-1.json")
    assert json.loads(pathlib.Path(path).read_text()) == {"a": [1, 2]}
    assert harness.result_path("x") == os.path.join(str(BENCH), "results", "x.json")
    assert {"python", "cpu_count", "platform"} <= set(harness.machine_info())
    assert len(harness.timestamp()) == len("20250101-120000")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_use_the_harness(script):
    """Each script imports _harness before TensorFlow, uses absl flags, and keeps no plumbing of its own."""
    source = script.read_text()
    tree = ast.parse(source)
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    assert "_harness" in imported
    assert "argparse" not in imported
    if "tensorflow" in imported:
        assert imported.index("_harness") < imported.index("tensorflow")
    for plumbing in ("TF_USE_LEGACY_KERAS", "VmHWM", "sys.path.insert", "sys.path[:0]", "subprocess", "json.dump("):
        assert plumbing not in source, plumbing
    assert source.rstrip().endswith("_harness.run(main)")


def test_bad_flag_is_a_usage_error():
    """absl rejects a system bench_model does not know, before any child process or TensorFlow."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_model.py"), "--systems", "glow_tf", "no_such_system"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--systems takes one or more of" in proc.stderr
