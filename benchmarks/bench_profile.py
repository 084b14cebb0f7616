"""Op-level profile of a glow_tf step (train, eval or sample) at a benchmark config.

Runs the same ``tf.function`` as ``bench_model.py`` (built by
``_bench_systems.build_glow_tf``), warms it up, records ``--steps`` steps with
``tf.profiler.experimental`` and reads the trace (the XPlane protobuf) directly.
Every op execution on the executor threads is attributed by

* op type (after grappler / oneDNN rewrites, e.g. ``_MklNativeConv2DBackpropFilter``);
* its name, which carries glow_tf's name scopes (``glow_tf._scopes``): the direction
  (ops under ``gradients/`` or ``gradient_tape/`` are the backward pass,
  ``ResourceApply*`` the optimizer), the level (``level0``) and the layer
  (``coupling/conv1``, ``actnorm``, ``split_prior``, ...; the layers are read from the
  names of the model's variables). Ops inside a level's traced flow-step function
  serve every step, so times are per level and layer, summed over the steps.

Times are summed op durations per step. With 2 inter-op threads two ops can run at
once, so the sum can exceed the step's wall time; shares are of the summed time.

Usage::

    python benchmarks/bench_profile.py                  # train step, bench-32
    python benchmarks/bench_profile.py --fn=eval --top=20

Writes ``benchmarks/results/bench_profile-<fn>-<timestamp>.json`` and prints the tables.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
from _bench_systems import CONFIGS, RunOptions, _images, _import_tf, build_glow_tf
from absl import flags

_SKIP_PREFIXES = ("ThreadpoolListener", "ExecutorState")


def _define_flags() -> None:
    """The script's flags, defined only when it runs (tests import its functions next to train.py's flags)."""
    flags.DEFINE_enum("config", "bench-32", sorted(CONFIGS), "Benchmark config.")
    flags.DEFINE_enum("fn", "train", ["train", "eval", "sample"], "The step to profile.")
    flags.DEFINE_integer("steps", 5, "Profiled steps.")
    flags.DEFINE_integer("warmup", 5, "Untimed steps before profiling.")
    flags.DEFINE_integer("threads", 2, "CPU threads.")
    flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "The model's compute_dtype.")
    flags.DEFINE_bool("tf_threads", False, "TF's default threading instead of glow_tf.parallelism's.")
    flags.DEFINE_integer("top", 25, "Rows per table.")
    flags.DEFINE_string("out", _harness.RESULTS, "Folder for the JSON result.")


FLAGS = flags.FLAGS


# ------------------------------------------------------------------ names
_LEVEL = re.compile(r"^level\d+$")
_STEP = re.compile(r"^step\d*$")  # step3 where ops are traced per step; step inside a level's step function
_GRADIENT_SCOPES = ("gradients", "gradient_tape")
_GRAPPLER_PREFIX = re.compile(r"^[A-Za-z]+Optimizer/[A-Za-z]+_(Internal_\d+_)?")
_WEIGHTLESS_LAYERS = ("squeeze",)  # glow_tf layers without variables (the others are named by their variables)


def layer_names(variables) -> set[str]:
    """Every layer scope below the level and step scopes, from the variables' names.

    ``level0/step3/coupling/conv1/actnorm/bias:0`` gives ``coupling``, ``coupling/conv1``
    and ``coupling/conv1/actnorm`` (the scopes of ``glow_tf._scopes``).
    """
    names = set(_WEIGHTLESS_LAYERS)
    for variable in variables:
        parts = [p for p in variable.name.split(":")[0].split("/")[:-1] if not (_LEVEL.match(p) or _STEP.match(p))]
        names.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


def attribute(name: str, op_type: str, layers: set[str]) -> tuple[str, str, str]:
    """``(direction, level, layer)`` of an executed op from its name.

    The direction is ``optimizer`` (``ResourceApply*``), ``backward`` (an op under a
    gradient scope) or ``forward``; the level is the innermost ``level{i}`` scope (``-``
    outside the levels: top prior, loss, optimizer); the layer is the longest layer
    scope that the rest of the name starts with, the level and step scopes left out
    (``coupling/conv1`` for ``gradients/level0/step/coupling/conv1/Conv2D_grad/...``),
    or ``(other)``: the slicing of the batch, the loss, tensors summed over layers.
    """
    parts = _GRAPPLER_PREFIX.sub("", name).split("/")[:-1]  # the scopes, without the op's own name
    if op_type.startswith("ResourceApply"):
        direction = "optimizer"
    elif any(p in _GRADIENT_SCOPES for p in parts):
        direction = "backward"
    else:
        direction = "forward"
    parts = [p for p in parts if p not in _GRADIENT_SCOPES and not p.endswith("_grad")]
    levels = [i for i, p in enumerate(parts) if _LEVEL.match(p)]
    level = parts[levels[-1]] if levels else "-"
    rest = [p for p in parts[levels[-1] + 1 :] if not _STEP.match(p)] if levels else parts
    layer = next(("/".join(rest[:i]) for i in range(len(rest), 0, -1) if "/".join(rest[:i]) in layers), "(other)")
    return direction, level, layer


# ------------------------------------------------------------------ trace parsing
def read_op_events(logdir: str) -> list[tuple[str, str, float]]:
    """``(op name, op type, milliseconds)`` of every op run on the executor threads."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    if not files:
        raise RuntimeError(f"no XPlane trace written under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(files[0]).read_bytes())
    events = []
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                if ":" not in meta.name or meta.name.startswith(_SKIP_PREFIXES):
                    continue
                events.append((meta.name.split(":")[0], meta.display_name, event.duration_ps / 1e9))
    return events


def aggregate(events, layers: set[str], steps: int) -> dict[str, list[dict[str, Any]]]:
    """Per-step milliseconds grouped by op type, by layer and direction, by direction and level, and by all three."""
    groups: dict[str, collections.Counter] = {
        k: collections.Counter() for k in ("op_type", "layer", "dir_level", "op_type_layer")
    }
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in groups}
    for name, op_type, ms in events:
        direction, level, layer = attribute(name, op_type, layers)
        keys = {
            "op_type": op_type,
            "layer": f"{layer} [{direction}]",
            "dir_level": f"{direction} {level}",
            "op_type_layer": f"{op_type} in {layer} [{direction}]",
        }
        for group, key in keys.items():
            groups[group][key] += ms / steps
            counts[group][key] += 1
    total = sum(groups["op_type"].values())
    return {
        group: [
            {"key": k, "ms_per_step": v, "share": v / total, "ops_per_step": counts[group][k] / steps}
            for k, v in counter.most_common()
        ]
        for group, counter in groups.items()
    }


# ------------------------------------------------------------------ main
def _build():
    """The system's callables and the function to profile, with its argument."""
    tf = _import_tf(FLAGS.threads, not FLAGS.tf_threads)
    config = CONFIGS[FLAGS.config]
    images = _images(config, 0)
    fns, _ = build_glow_tf(config, RunOptions(threads=FLAGS.threads), False, images, FLAGS.compute_dtype)
    x = tf.constant(images)
    if FLAGS.fn == "train":
        return config, fns.train, (x,)
    if FLAGS.fn == "eval":
        return config, fns.evaluate, (x,)
    return config, fns.sample, ()


def _print(title: str, rows: list[dict[str, Any]], top: int) -> None:
    print(f"\n-- {title} --")
    print(f"{'ms/step':>9}{'share':>7}{'ops':>6}  key")
    for row in rows[:top]:
        print(f"{row['ms_per_step']:9.2f}{100 * row['share']:6.1f}%{row['ops_per_step']:6.0f}  {row['key']}")


def main() -> dict[str, Any]:
    """Profiles the chosen function and prints / writes the breakdown."""
    import tensorflow as tf

    config, fn, fn_args = _build()
    for _ in range(FLAGS.warmup):
        _ = fn(*fn_args).numpy()
    wall = []
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(FLAGS.steps):
            start = time.perf_counter()
            _ = fn(*fn_args).numpy()
            wall.append(time.perf_counter() - start)
        tf.profiler.experimental.stop()
        events = read_op_events(logdir)
    tables = aggregate(events, layer_names(fn.get_concrete_function(*fn_args).variables), FLAGS.steps)
    wall_ms = 1000 * sorted(wall)[len(wall) // 2]
    summed = sum(r["ms_per_step"] for r in tables["op_type"])
    print(
        f"{FLAGS.fn} step at {FLAGS.config}: median wall {wall_ms:.1f} ms (profiler on), summed op time {summed:.1f} ms"
    )
    _print("by op type", tables["op_type"], FLAGS.top)
    _print("by layer and direction", tables["layer"], FLAGS.top)
    _print("by direction and level", tables["dir_level"], FLAGS.top)
    _print("by op type, layer and direction", tables["op_type_layer"], FLAGS.top)
    report = {
        "config": FLAGS.config,
        "fn": FLAGS.fn,
        "compute_dtype": FLAGS.compute_dtype,
        "wall_ms_median": wall_ms,
        "summed_op_ms": summed,
        **tables,
    }
    path = _harness.write_json(
        report, _harness.result_path(f"bench_profile-{FLAGS.fn}-{_harness.timestamp()}", FLAGS.out)
    )
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    _define_flags()
    _harness.run(main)
