"""Model benchmark: glow_tf against ``tfp.bijectors.Glow`` at the same config, in one run.

For each config and system it measures, in a fresh child process (so peak RSS is per
system): training images/s (log-likelihood + gradients + optimizer update in one
``tf.function``; median over timed steps after warm-up), sampling images/s (16
images at T = 0.7), eval (``log_prob`` only) images/s, peak RSS, and the time to
the first training step (model construction + first step including tracing; the
data-dependent init is reported separately). Systems are interleaved
(A, B, A, B, ... over ``--repeats``) so drift in machine load hits all of them, and
the glow_tf / tfb.Glow ratios are taken within each repeat (paired) before the
median. The machine's float32 matmul GFLOP/s is measured in the same run (before
and after each config) and each training step's achieved GFLOP/s is reported as a
fraction of it, with FLOPs counted analytically (see ``_bench_flops.METHOD``).

Usage::

    python benchmarks/bench_model.py                      # bench-32, the default systems, 2 repeats
    python benchmarks/bench_model.py --configs=bench-32,paper-width --jit --repeats=1
    python benchmarks/bench_model.py --systems=glow_tf --steps=50

List flags take commas or spaces (``--systems glow_tf tfb_glow``). Writes
``benchmarks/results/bench_model-<timestamp>.json`` and prints a table.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import _harness
from _bench_flops import METHOD, glow_flops
from _bench_systems import CONFIGS, JIT_SYSTEMS, SYSTEMS, RunOptions, matmul_gflops, measure
from absl import flags

DEFAULT_SYSTEMS = ("glow_tf_trainer", "glow_tf_trainer_bf16", "glow_tf", "tfb_glow", "torch_glow")
PEERS = ("tfb_glow", "torch_glow")  # ratios are taken against systems whose names start with these
# The performance issue's targets: the speed-up over the PyTorch port (measured here as torch_glow) in
# training and sampling images/s, the time to the first training step and to the first sample (tracing
# included), and (bench-32) the peak RSS.
TARGETS = {
    "bench-32": dict(speedup=3.0, first_call_s=5.0, peak_rss_mib=1024.0),
    "paper-width": dict(speedup=2.0, first_call_s=10.0, peak_rss_mib=None),
}
CHILD_TIMEOUT_S = 1800
# summary metric -> whether higher is better (for reading the glow_tf / tfb.Glow ratios)
HIGHER_IS_BETTER = {
    "train_images_per_s": True,
    "sample_images_per_s": True,
    "eval_images_per_s": True,
    "peak_rss_mib": False,
    "time_to_first_step_s": False,
}


# ------------------------------------------------------------------ flags
_harness.choices(flags.DEFINE_list("configs", ["bench-32"], f"Configs, of {', '.join(CONFIGS)}."), sorted(CONFIGS))
_harness.choices(
    flags.DEFINE_list("systems", list(DEFAULT_SYSTEMS), f"Systems to time, of {', '.join(SYSTEMS)}."), sorted(SYSTEMS)
)
flags.DEFINE_bool("jit", False, f"Also time {', '.join(JIT_SYSTEMS)}.")
flags.DEFINE_integer("steps", None, "Timed training steps (default: per config).", lower_bound=1)
flags.DEFINE_integer("repeats", 2, "Interleaved repeats of every system.", lower_bound=1)
flags.DEFINE_integer("threads", 2, "Intra- and inter-op threads.", lower_bound=1)
flags.DEFINE_string("out", _harness.RESULTS, "Folder for the JSON result.")
_harness.define_child_flags()
FLAGS = flags.FLAGS


def _systems() -> list[str]:
    """``--systems``, plus the XLA systems with ``--jit``."""
    systems = list(FLAGS.systems)
    if FLAGS.jit:
        systems += [s for s in JIT_SYSTEMS if s not in systems]
    return systems


# ------------------------------------------------------------------ child side
def child_main(job: dict[str, str]) -> None:
    """Runs one measurement (``job``: what and config) in this process and hands its JSON to the parent."""
    options = RunOptions(threads=FLAGS.threads, steps=FLAGS.steps)
    if job["what"] == "matmul":
        result = matmul_gflops(FLAGS.threads)
    else:
        result = measure(job["what"], CONFIGS[job["config"]], options)
    _harness.write_child_result(result)


# ------------------------------------------------------------------ parent side
def run_child(what: str, config: str) -> dict[str, Any]:
    """Runs ``what`` (a system or ``'matmul'``) in a fresh Python process."""
    args = [f"--threads={FLAGS.threads}"] + ([f"--steps={FLAGS.steps}"] if FLAGS.steps is not None else [])
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        result = _harness.run_child(__file__, {"what": what, "config": config}, args, CHILD_TIMEOUT_S)
    except _harness.ChildError as err:
        result = {"error": str(err)}
    wall_s = time.perf_counter() - start
    result.update(what=what, config_name=config, wall_s=wall_s, loadavg_1min_before=load_before)
    return result


def _get(run: dict[str, Any], metric: str) -> float | None:
    """One scalar metric of a run (``<phase>_images_per_s`` or a top-level key), or None if it failed."""
    if metric.endswith("_images_per_s"):
        return run.get(metric.removesuffix("_images_per_s"), {}).get("images_per_s")
    return run.get(metric)


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(config: str, runs: list[dict], matmuls: list[dict], systems: list[str]) -> dict[str, Any]:
    """Medians per system, paired ratios glow_tf* / tfb_glow*, and the fraction of matmul peak."""
    cfg = CONFIGS[config]
    flops = glow_flops(cfg.image_shape, cfg.num_levels, cfg.num_steps, cfg.hidden_width, True, cfg.batch_size)
    # the best matmul rate seen in this run: other load lowers medians far more than the best call
    peak = max((m["gflops_best"] for m in matmuls if "gflops_best" in m), default=None)
    per_system: dict[str, Any] = {}
    for system in systems:
        mine = [r for r in runs if r["what"] == system]
        row = {m: _median([_get(r, m) for r in mine]) for m in HIGHER_IS_BETTER}
        row["init_s"] = _median([r.get("init_s") for r in mine])
        row["sample_first_call_s"] = _median([r.get("sample_first_call_s") for r in mine])
        row["repeats"] = len(mine)
        row["errors"] = sorted({str(v)[:300] for r in mine for k, v in r.items() if k.endswith("error")})
        row["notes"] = sorted({note for r in mine for note in _sanity_notes(r)})
        if row["train_images_per_s"] is not None:
            row["train_gflops"] = row["train_images_per_s"] * flops.train / 1e9
            row["fraction_of_matmul_peak"] = row["train_gflops"] / peak if peak else None
        per_system[system] = row
    ratios = {}
    for ours in (s for s in systems if s.startswith("glow_tf")):
        for theirs in (s for s in systems if s.startswith(PEERS)):
            ratios[f"{ours}/{theirs}"] = _paired_ratios(runs, ours, theirs)
    return {
        "flops": {"method": METHOD, **flops.as_dict()},
        "matmul_gflops_best": peak,
        "matmul_gflops_median": _median([m.get("gflops_median") for m in matmuls]),
        "systems": per_system,
        "ratios": ratios,
        "targets": _targets(per_system, ratios, TARGETS[config]) if config in TARGETS else [],
    }


def _targets(per_system: dict[str, Any], ratios: dict[str, Any], goals: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for each glow_tf training-step system that ran beside torch_glow."""
    rows = []
    for system in (s for s in per_system if s.startswith("glow_tf_trainer")):
        row, vs_torch = per_system[system], ratios.get(f"{system}/torch_glow", {})
        checks = [
            ("train vs torch_glow", vs_torch.get("train_images_per_s"), goals["speedup"], True),
            ("sample vs torch_glow", vs_torch.get("sample_images_per_s"), goals["speedup"], True),
            ("first step s", row["time_to_first_step_s"], goals["first_call_s"], False),
            ("first sample s", row["sample_first_call_s"], goals["first_call_s"], False),
        ]
        if goals["peak_rss_mib"]:
            checks.append(("peak RSS MiB", row["peak_rss_mib"], goals["peak_rss_mib"], False))
        for name, value, target, higher in checks:
            met = None if value is None else (value >= target if higher else value <= target)
            rows.append({"system": system, "target": name, "value": value, "goal": target, "met": met})
    return rows


def _sanity_notes(run: dict[str, Any]) -> list[str]:
    """Warnings about a run's outputs (non-finite loss or samples)."""
    notes = []
    if run.get("loss_finite") is False:
        notes.append("training loss became non-finite")
    for phase in ("sample", "eval"):
        if run.get(f"{phase}_finite") is False:
            notes.append(f"{phase} output has non-finite values")
    return notes


def _paired_ratios(runs: list[dict], ours: str, theirs: str) -> dict[str, float | None]:
    """Median over repeats of (ours / theirs) taken within the same repeat."""
    out = {}
    for metric in HIGHER_IS_BETTER:
        pairs = []
        for rep in sorted({r["repeat"] for r in runs}):
            a = next((_get(r, metric) for r in runs if r["what"] == ours and r["repeat"] == rep), None)
            b = next((_get(r, metric) for r in runs if r["what"] == theirs and r["repeat"] == rep), None)
            pairs.append(a / b if a and b else None)
        out[metric] = _median(pairs)
    return out


# ------------------------------------------------------------------ printing
def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(config: str, summary: dict[str, Any]) -> None:
    """A readable table of one config's summary."""
    flops = summary["flops"]
    print(f"\n== {config}: medians over repeats ==")
    print(
        f"matmul fp32 2048^3: best {_fmt(summary['matmul_gflops_best'], '.1f')} GFLOP/s "
        f"(median {_fmt(summary['matmul_gflops_median'], '.1f')}; '% matmul' uses the best); "
        f"counted cost {flops['forward_gflop_per_image']:.3f} GFLOP/img forward, "
        f"{flops['train_gflop_per_image']:.3f} GFLOP/img train"
    )
    header = f"{'system':<28}{'train img/s':>12}{'sample img/s':>13}{'eval img/s':>11}"
    header += f"{'peak RSS MiB':>13}{'1st step s':>11}{'init s':>8}{'GFLOP/s':>9}{'% matmul':>9}"
    print(header)
    for system, row in summary["systems"].items():
        frac = row.get("fraction_of_matmul_peak")
        print(
            f"{system:<28}{_fmt(row['train_images_per_s'], '12.1f')}{_fmt(row['sample_images_per_s'], '13.1f')}"
            f"{_fmt(row['eval_images_per_s'], '11.1f')}{_fmt(row['peak_rss_mib'], '13.0f')}"
            f"{_fmt(row['time_to_first_step_s'], '11.1f')}{_fmt(row['init_s'], '8.1f')}"
            f"{_fmt(row.get('train_gflops'), '9.1f')}{_fmt(None if frac is None else 100 * frac, '9.1f')}"
        )
        for err in row["errors"]:
            print(f"    error: {err[:200]}")
        for note in row["notes"]:
            print(f"    note: {note}")
    if summary["ratios"]:
        print("ratios (paired within repeats, median); >1 is better for glow_tf on img/s, <1 on RSS/1st step:")
        labels = ("train", "sample", "eval", "peak RSS", "1st step")
        print(f"{'pair':<40}" + "".join(f"{m:>10}" for m in labels))
        for pair, vals in summary["ratios"].items():
            print(f"{pair:<40}" + "".join(_fmt(vals[m], "10.2f") for m in HIGHER_IS_BETTER))
    if summary["targets"]:
        print("targets (the performance issue's, for this config):")
        for t in summary["targets"]:
            verdict = {True: "met", False: "NOT met", None: "-"}[t["met"]]
            print(f"  {t['system']:<28}{t['target']:<22}{_fmt(t['value'], '10.2f')}  goal {t['goal']:g}: {verdict}")
    print(f"FLOP counting: {flops['method']}")


# ------------------------------------------------------------------ main
def run_config(config: str, systems: list[str]) -> tuple[list[dict], list[dict]]:
    """Interleaved runs of every system for one config, with matmul runs before and after."""
    matmuls, runs = [run_child("matmul", config)], []
    for rep in range(FLAGS.repeats):
        for system in systems:
            print(f"[{config}] repeat {rep + 1}/{FLAGS.repeats}: {system} ...", flush=True)
            result = run_child(system, config)
            result["repeat"] = rep
            runs.append(result)
            train = _get(result, "train_images_per_s")
            print(f"    train {_fmt(train, '.1f')} img/s, wall {result['wall_s']:.0f} s", flush=True)
    matmuls.append(run_child("matmul", config))
    return runs, matmuls


def main() -> dict[str, Any]:
    """Runs the benchmark (or, with ``--_child``, one measurement) and writes the JSON."""
    job = _harness.child_job()
    if job is not None:
        child_main(job)
        return {}
    systems = _systems()
    stamp = _harness.timestamp()
    report: dict[str, Any] = {
        "timestamp": stamp,
        "argv": sys.argv[1:],
        "machine": _harness.machine_info(),
        "loadavg_start": os.getloadavg(),
        "caveat": "Absolute numbers depend on other load on the machine; compare the paired ratios.",
        "configs": {},
    }
    start = time.perf_counter()
    for config in FLAGS.configs:
        runs, matmuls = run_config(config, systems)
        summary = summarise(config, runs, matmuls, systems)
        report["configs"][config] = {"summary": summary, "runs": runs, "matmul": matmuls}
        print_table(config, summary)
    report.update(loadavg_end=os.getloadavg(), total_wall_s=time.perf_counter() - start)
    path = _harness.write_json(report, _harness.result_path(f"bench_model-{stamp}", FLAGS.out))
    print(f"\nload average start/end: {report['loadavg_start'][0]:.2f} / {report['loadavg_end'][0]:.2f} (2 cores)")
    print(f"wrote {path} ({report['total_wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    _harness.run(main)
