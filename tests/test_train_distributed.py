"""Distributed training in subprocesses: MirroredStrategy over 2 logical CPUs, 2-worker MultiWorkerMirroredStrategy.

Both need a fresh TF runtime (logical devices and collectives are fixed at start-up),
hence subprocesses with bounded run times.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from glow_tf import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240

PRELUDE = f"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, {REPO!r})
import numpy as np
import tensorflow as tf
"""


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


MIRRORED = """
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from configs import test
from glow_tf import data, train_lib

workdir = sys.argv[1]
config = test.get_config()
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
config.train.batch_size = 15
try:
    train_lib.Trainer(config, workdir + "/odd", mirrored)
    odd = "no error"
except ValueError as err:
    odd = str(err)
config.train.batch_size = 16
two = train_lib.Trainer(config, workdir + "/two", mirrored)
one = train_lib.Trainer(config, workdir + "/one", tf.distribute.get_strategy())
two.initialize()
one.initialize()
init_equal = all(
    np.array_equal(copy.numpy(), ref.numpy())
    for var, ref in zip(two.model.variables, one.model.variables)
    for copy in var.values
)
images, labels = next(iter(data.make_train_dataset(config.data, 16, seed=5)))
x = data.model_inputs(images, config.data.n_bits, seed=5, step=0)
loss1, bpd1, grads1 = one.compute_gradients(x)
halves = mirrored.experimental_distribute_values_from_function(
    lambda ctx: x[8 * ctx.replica_id_in_sync_group : 8 * (ctx.replica_id_in_sync_group + 1)]
)
loss2, bpd2, grads2 = two.compute_gradients(halves)
grad_diff = max(float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(grads1, grads2))
grad_scale = max(float(np.max(np.abs(a.numpy()))) for a in grads1)
batches = iter(two.make_dataset(0))
steps = [bool(two.train_step(next(batches))["finite"]) for _ in range(3)]
replicas_equal = all(np.array_equal(var.values[0].numpy(), var.values[1].numpy()) for var in two.model.variables)
print(json.dumps(dict(
    odd=odd, init_equal=init_equal, loss=[float(loss1), float(loss2)], bpd=[float(bpd1), float(bpd2)],
    grad_diff=grad_diff, grad_scale=grad_scale, steps=steps, step=int(two.step.numpy()),
    replicas_equal=replicas_equal,
)))
"""


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PRELUDE + MIRRORED, str(tmp_path)],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = _last_json(out.stdout)
    assert "not divisible by the 2 replicas" in r["odd"]
    assert r["init_equal"], "data-dependent init must give identical variables on every replica"
    assert r["loss"][0] == pytest.approx(r["loss"][1], rel=1e-6, abs=1e-6)
    assert r["bpd"][0] == pytest.approx(r["bpd"][1], rel=1e-6, abs=1e-6)
    # Same maths, different summation order over the batch: float32 round-off only.
    assert r["grad_diff"] <= 1e-5 * max(1.0, r["grad_scale"]), r
    assert r["steps"] == [True] * 3 and r["step"] == 3 and r["replicas_equal"]


WORKER = """
from configs import test
from glow_tf import distribute, train_lib

workdir, out = sys.argv[1], sys.argv[2]
strategy = distribute.make_strategy()
config = test.get_config()
config.train.num_steps = 4
config.train.eval_every = 0
config.train.sample_every = 0
config.eval.max_examples = 64
config.sample.temperatures = (0.7,)
trainer = train_lib.Trainer(config, workdir, strategy)
result = trainer.train()
np.savez(out, *[v.numpy() for v in trainer.model.variables])
print(json.dumps(dict(
    replicas=strategy.num_replicas_in_sync, chief=trainer.is_chief, step=result.step,
    eval=result.last_eval_bits_per_dim,
)))
"""


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_agree(tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    workdir = str(tmp_path / "run")
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", PRELUDE + WORKER, workdir, str(tmp_path / f"w{index}.npz")],
                cwd=REPO,
                env=_env(TF_CONFIG=tf_config),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(_last_json(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [o["replicas"] for o in outputs] == [2, 2]
    assert [o["chief"] for o in outputs] == [True, False]
    assert outputs[0]["step"] == outputs[1]["step"] == 4
    assert outputs[0]["eval"] == outputs[1]["eval"]
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 10
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    assert os.path.exists(os.path.join(workdir, "checkpoints", "ckpt-4.index"))
    assert sorted(os.listdir(workdir)) == sorted(["best", "checkpoints", "config.json", "eval", "samples", "train"])


# ------------------------------------------------ who is chief, in-process (no cluster is started)
class _MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
    """A MultiWorkerMirroredStrategy as distribute.py sees it, without starting collectives or servers."""

    def __init__(self):  # the real one would connect to the cluster in TF_CONFIG
        self._resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()

    @property
    def cluster_resolver(self):
        return self._resolver


def _tf_config(task_type, index, chief=False):
    cluster = {"worker": ["localhost:1", "localhost:2"], **({"chief": ["localhost:3"]} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize(
    "task_type, index, chief, expected",
    [
        ("worker", 0, False, (True, 0, 2)),  # no chief in the cluster: worker 0 writes
        ("worker", 1, False, (False, 1, 2)),
        ("chief", 0, True, (True, 0, 3)),
        ("worker", 0, True, (False, 0, 3)),  # a chief exists: worker 0 is not it
        ("worker", 1, True, (False, 1, 3)),
    ],
)
def test_is_chief_worker_index_and_num_workers_follow_tf_config(monkeypatch, task_type, index, chief, expected):
    monkeypatch.setenv("TF_CONFIG", _tf_config(task_type, index, chief))
    strategy = _MultiWorker()
    got = (distribute.is_chief(strategy), distribute.worker_index(strategy), distribute.num_workers(strategy))
    assert got == expected


def test_single_process_strategies_are_chief_whatever_tf_config_says(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 1))
    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy) and distribute.worker_index(strategy) == 0
    assert distribute.num_workers(strategy) == 1
