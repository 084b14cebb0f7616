"""The prepared GPU check (benchmarks/gpu_check.py) runs end to end: its ``--smoke`` mode on the CPU."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_check.py")


def _run(*args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.mark.slow
def test_smoke_run_measures_every_variant(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = _run("--smoke", f"--out={out}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True
    rows = {(r["system"], r.get("size"), r.get("variant")): r for r in result["rows"]}
    dtypes = ("float32", "bfloat16", "float16")
    expected = [("glow_tf", "bench-32", f"{dtype}{jit}") for dtype in dtypes for jit in ("", " xla")]
    expected += [("glow_tf", "paper-cifar10", dtype) for dtype in dtypes]
    expected += [("glow_tf", "celebahq256", f"float32 {mode}") for mode in ("standard", "checkpointing", "reversible")]
    for dtype in dtypes:  # the smoke run compiles XLA at one size only
        assert "XLA" in rows[("glow_tf", "paper-cifar10", f"{dtype} xla")]["skipped"]
    for key in expected:
        row = rows[key]
        assert "error" not in row and "skipped" not in row, (key, row)
        assert row["finite"], (key, row)
        for field in ("train_images_per_s", "sample_images_per_s", "first_train_step_s"):
            assert math.isfinite(row[field]) and row[field] > 0, (key, field, row)
        # tiny smoke sizes may keep nothing measurable alive on a CPU: a number, not necessarily > 0
        assert math.isfinite(row["step_peak_mib_per_image"]) and row["step_peak_mib_per_image"] >= 0, (key, row)
    assert rows[("glow_tf", "bench-32", "float16")]["loss_scale"] > 0
    torch_rows = [r for r in result["rows"] if r["system"] == "torch_glow"]
    assert torch_rows, "torch_glow rows (measured or skipped) missing"
    for row in torch_rows:
        assert "error" not in row, row
    # the table is printed as well as written
    assert "celebahq256" in proc.stdout and "wrote" in proc.stdout


@pytest.mark.slow
def test_without_gpu_and_without_smoke_says_so_in_one_line():
    proc = _run(timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "sees no GPU" in proc.stderr and "--smoke" in proc.stderr
