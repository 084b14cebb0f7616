"""Op-level profile of a glow_tf step (train, eval or sample) at a benchmark config.

Runs the same ``tf.function`` as ``bench_model.py`` (built by
``_bench_systems.build_glow_tf``), warms it up, records ``--steps`` steps with
``tf.profiler.experimental`` and reads the trace (the XPlane protobuf) directly.
Every op execution on the executor threads is attributed by

* op type (after grappler / oneDNN rewrites, e.g. ``_MklNativeConv2DBackpropFilter``);
* direction (``gradient_tape/`` ops are the backward pass, ``ResourceApply*`` the optimizer);
* layer role, from the op's shapes in the traced graph: convolutions by their filter
  shape (coupling conv1 / conv2 / conv_out, split prior, top prior, edge-bias
  border), everything else by the spatial size of its output (level 0/1/2).

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
_CONV_TYPES = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "DepthwiseConv2dNative")

flags.DEFINE_enum("config", "bench-32", sorted(CONFIGS), "Benchmark config.")
flags.DEFINE_enum("fn", "train", ["train", "eval", "sample"], "The step to profile.")
flags.DEFINE_integer("steps", 5, "Profiled steps.")
flags.DEFINE_integer("warmup", 5, "Untimed steps before profiling.")
flags.DEFINE_integer("threads", 2, "CPU threads.")
flags.DEFINE_bool("tf_threads", False, "TF's default threading instead of glow_tf.parallelism's.")
flags.DEFINE_integer("top", 25, "Rows per table.")
flags.DEFINE_string("out", _harness.RESULTS, "Folder for the JSON result.")
FLAGS = flags.FLAGS


# ------------------------------------------------------------------ graph shapes
def _shape(tensor) -> tuple[int, ...] | None:
    dims = tensor.shape
    if dims.rank is None:
        return None
    return tuple(-1 if d is None else int(d) for d in dims)


def _filter_shape(op) -> tuple[int, ...] | None:
    """Filter shape of a convolution op (forward or either gradient)."""
    if op.type == "Conv2DBackpropFilter":
        return _shape(op.outputs[0])
    return _shape(op.inputs[1])


def _level_of(spatial: int, config) -> str:
    """Level index from an activation's spatial height."""
    height = config.image_shape[0]
    for level in range(config.num_levels):
        if spatial == height // 2 ** (level + 1):
            return f"L{level}"
    return f"{spatial}px"


def _conv_role(filt: tuple[int, ...], width: int) -> str:
    kh, _, cin, cout = filt
    if cin == 1:
        return "edge-bias border conv"
    if kh == 1 and cin == width and cout == width:
        return "coupling conv2 1x1"
    if kh == 3 and cout == width:
        return "coupling conv1 3x3"
    if kh == 3 and cin == width:
        return "coupling conv_out 3x3"
    if kh == 3:
        return "prior conv 3x3 (split/top)"
    return f"conv {filt}"


def _activation_spatial(op, spatial_sizes: set[int]) -> int | None:
    """Height of the largest activation (``[B, h, h, C]`` with ``h`` a level's size) an op touches."""
    best, height = -1, None
    for t in [*op.inputs, *op.outputs]:
        s = _shape(t)
        if s and len(s) == 4 and s[1] in spatial_sizes and s[1] == s[2]:
            size = abs(s[0]) * s[1] * s[2] * s[3]
            if size > best:
                best, height = size, s[1]
    return height


def _conv_type(op_type: str) -> bool:
    return any(op_type.replace("_MklNative", "").replace("_Mkl", "").endswith(t) for t in _CONV_TYPES)


def _producer_conv(op, depth: int = 3):
    """The nearest convolution feeding ``op`` (grappler fuses ``conv + add [+ relu]`` under the add's name)."""
    frontier = [op]
    for _ in range(depth):
        frontier = [t.op for o in frontier for t in o.inputs]
        for candidate in frontier:
            if _conv_type(candidate.type):
                return candidate
    return None


def describe_ops(graph, config) -> dict[str, dict[str, str]]:
    """Op name -> ``{'role', 'conv_role', 'level'}`` for every op in the traced graph.

    ``conv_role`` is the role of the op's own or nearest producing convolution: grappler
    fuses ``conv + add`` into one kernel named after the add.
    """
    height = config.image_shape[0]
    sizes = {height // 2 ** (level + 1) for level in range(config.num_levels)}
    table = {}
    for op in graph.get_operations():
        conv = op if _conv_type(op.type) else _producer_conv(op)
        conv_role = "conv"
        if conv is not None:
            filt = _filter_shape(conv)
            conv_role = _conv_role(filt, config.hidden_width) if filt and len(filt) == 4 else "conv"
        spatial = _activation_spatial(op, sizes)
        table[op.name] = {
            "role": conv_role if _conv_type(op.type) else "elementwise/other",
            "conv_role": conv_role,
            "level": _level_of(spatial, config) if spatial else "-",
        }
    return table


_GRAPPLER_PREFIX = re.compile(r"^[A-Za-z]+Optimizer/[A-Za-z]+_(Internal_\d+_)?")


def _lookup(described: dict[str, dict[str, str]], name: str) -> dict[str, str] | None:
    """The description of a traced op, undoing grappler's renaming prefixes."""
    return described.get(name) or described.get(_GRAPPLER_PREFIX.sub("", name))


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


def _direction(name: str, op_type: str) -> str:
    if op_type.startswith("ResourceApply"):
        return "optimizer"
    return "backward" if name.startswith("gradient_tape/") else "forward"


def aggregate(events, described, steps: int) -> dict[str, list[dict[str, Any]]]:
    """Per-step milliseconds grouped by op type, by layer role and by (direction, level)."""
    groups: dict[str, collections.Counter] = {k: collections.Counter() for k in ("op_type", "role", "dir_level")}
    counts: dict[str, collections.Counter] = {k: collections.Counter() for k in groups}
    for name, op_type, ms in events:
        info = _lookup(described, name) or {"role": "unmatched", "conv_role": "unmatched", "level": "-"}
        direction = _direction(name, op_type)
        role = info["conv_role"] if _conv_type(op_type) else op_type
        keys = {"op_type": op_type, "role": f"{role} [{direction}]", "dir_level": f"{direction} {info['level']}"}
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
    fns, _ = build_glow_tf(config, RunOptions(threads=FLAGS.threads), False, images)
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
    graph = fn.get_concrete_function(*fn_args).graph
    tables = aggregate(events, describe_ops(graph, config), FLAGS.steps)
    wall_ms = 1000 * sorted(wall)[len(wall) // 2]
    summed = sum(r["ms_per_step"] for r in tables["op_type"])
    print(
        f"{FLAGS.fn} step at {FLAGS.config}: median wall {wall_ms:.1f} ms (profiler on), summed op time {summed:.1f} ms"
    )
    _print("by op type", tables["op_type"], FLAGS.top)
    _print("by layer role and direction", tables["role"], FLAGS.top)
    _print("by direction and level", tables["dir_level"], FLAGS.top)
    report = {"config": FLAGS.config, "fn": FLAGS.fn, "wall_ms_median": wall_ms, "summed_op_ms": summed, **tables}
    path = _harness.write_json(
        report, _harness.result_path(f"bench_profile-{FLAGS.fn}-{_harness.timestamp()}", FLAGS.out)
    )
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    _harness.run(main)
