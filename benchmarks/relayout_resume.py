"""Resuming a per-step run against resuming its stacked copy (``glow_tf.relayout``): time to the first step.

    python benchmarks/relayout_resume.py --config=paper-width --repeats=2

A child process writes a run of the config with per-step variables (the layout of every
run from before ``glow_tf.stacking``; the Trainer of ``first_calls.py`` on digits, with
EMA, trained 1 step). Another copies it with ``relayout.relayout`` (timed alone, and
with the process's Python and TensorFlow start-up, as ``python -m glow_tf.relayout``
would take). Then
each repeat resumes the original and the copy, alternately, each in a fresh process set
up as ``train.py``: ``Trainer(config, workdir)`` (construction and the restore of the
latest checkpoint) and its first ``train_step`` on the next batch. The two resumed
steps must give the same loss bit for bit (the copy continues the run exactly).

Prints one line per resume and writes ``benchmarks/results/relayout_resume-<config>-<time>.json``.
"""

from __future__ import annotations

import os
import tempfile
import time

import _bench_systems
import _harness
from absl import flags

flags.DEFINE_enum("config", "paper-width", sorted(_bench_systems.CONFIGS), "Model size (as bench_model.py).")
flags.DEFINE_integer("repeats", 2, "Resumes of each run, alternated.")
flags.DEFINE_string("out", "", "JSON path (default benchmarks/results/relayout_resume-<config>-<time>.json).")
_harness.define_child_flags()
FLAGS = flags.FLAGS


def _config(stack_variables: bool):
    config = _bench_systems.trainer_config(
        _bench_systems.CONFIGS[FLAGS.config], _bench_systems.RunOptions(), stack_variables=stack_variables
    )
    config.optim.ema_decay = 0.999
    config.train.num_steps, config.train.eval_every, config.eval.max_examples = 1, 0, 16
    return config


def _child(job: dict) -> dict:
    from glow_tf import parallelism

    parallelism.configure_cpu_threads()
    from glow_tf import train_lib

    if job["kind"] == "make":
        train_lib.Trainer(_config(False), job["workdir"]).train()
        return {}
    if job["kind"] == "relayout":
        from glow_tf import relayout

        start = time.perf_counter()
        relayout.relayout(job["workdir"], job["output_workdir"])
        return {"relayout_s": time.perf_counter() - start}
    start = time.perf_counter()
    trainer = train_lib.Trainer(_config(True), job["workdir"])  # the run's own layout is kept on resume
    construction = time.perf_counter() - start
    batch = next(iter(trainer.make_dataset(int(trainer.step.numpy()))))
    start = time.perf_counter()
    loss = float(trainer.train_step(batch)["loss"])
    return {
        "stack_variables": bool(trainer.model.stack_variables),
        "construction_and_restore_s": construction,
        "first_train_step_s": time.perf_counter() - start,
        "loss": loss,
    }


def main():
    job = _harness.child_job()
    if job is not None:
        _harness.write_child_result(_child(job))
        return
    result = {"config": FLAGS.config, "machine": _harness.machine_info(), "resumes": []}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"per-step": os.path.join(tmp, "per_step"), "stacked copy": os.path.join(tmp, "stacked")}
        child_flags = [f"--config={FLAGS.config}"]
        _harness.run_child(__file__, {"kind": "make", "workdir": runs["per-step"]}, child_flags)
        start = time.perf_counter()
        job = {"kind": "relayout", "workdir": runs["per-step"], "output_workdir": runs["stacked copy"]}
        result.update(_harness.run_child(__file__, job, child_flags))
        result["relayout_process_s"] = time.perf_counter() - start
        print(
            f"{FLAGS.config:<12} relayout {result['relayout_s']:6.1f} s"
            f" ({result['relayout_process_s']:.1f} s with the process's start-up)"
        )
        for repeat in range(FLAGS.repeats):
            for name, workdir in runs.items():
                resumed = _harness.run_child(__file__, {"kind": "resume", "workdir": workdir}, child_flags)
                result["resumes"].append({"run": name, "repeat": repeat, **resumed})
                built, step = resumed["construction_and_restore_s"], resumed["first_train_step_s"]
                print(
                    f"{FLAGS.config:<12} {name:<13} construction+restore {built:5.1f} s  first step {step:5.1f} s"
                    f"  total {built + step:5.1f} s  loss {resumed['loss']!r}"
                )
    losses = {r["loss"] for r in result["resumes"]}
    result["same_loss"] = len(losses) == 1
    print(f"same loss in every resume: {result['same_loss']}")
    name = f"relayout_resume-{FLAGS.config}-{_harness.timestamp()}"
    path = _harness.write_json(result, FLAGS.out or _harness.result_path(name))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
