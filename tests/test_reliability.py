"""A run is never destroyed by another, and every user mistake gets one clear line (issue 10).

The data-loss tests run ``train.py`` in a subprocess on ``configs/test.py`` and compare
every file of the workdir (size and SHA-256) before and after.
"""

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import helpers
import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import checkpointing, config_lib, data, export, latent_tools, train_lib, workdirs
from glow_tf.bijectors import ActNorm, AffineCoupling, LUInvertibleConv1x1, Squeeze
from glow_tf.data import tfds_sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 180
TRAIN = [sys.executable, os.path.join(REPO, "train.py")]
# TensorFlow's C++ start-up lines (no environment variable silences them) and absl log records.
_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|To enable the following|rebuild TensorFlow|\s*$)")


def run_cli(*args, timeout=TIMEOUT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([*TRAIN, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def message_lines(stderr: str) -> list[str]:
    """What the user reads on stderr besides TF's start-up lines and log records."""
    return [line for line in stderr.splitlines() if not _LOG_LINE.match(line)]


def assert_one_clear_line(proc, *needles):
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = message_lines(proc.stderr)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder) -> dict:
    """``relative path -> (size, sha256)`` of every file under ``folder``."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
    return files


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A finished run of configs/test.py made by the CLI (20 steps, width 16)."""
    workdir = str(tmp_path_factory.mktemp("saved") / "run")
    proc = run_cli("--dataset=test", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture
def run_copy(saved_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(saved_run, workdir)
    return workdir


# ----------------------------------------------------------------- data loss
@pytest.mark.slow
def test_resuming_with_another_architecture_stops_and_touches_nothing(run_copy):
    before = snapshot(run_copy)
    proc = run_cli("--dataset=test", f"--workdir={run_copy}", "--config.model.hidden_width=32")
    line = assert_one_clear_line(proc, "Cannot resume", "model.hidden_width: 16 in the run, 32 now", "--start_over")
    assert "new --workdir" in line
    assert snapshot(run_copy) == before
    assert "falling back" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "field, value",
    [
        ("model.coupling", "additive"),
        ("model.num_steps", 3),
        ("data.n_bits", 5),
        ("data.image_size", 16),
        ("data.name", "npz"),
        ("optim.ema_decay", 0.0),
    ],
)
def test_every_field_that_defines_the_run_must_match(run_copy, field, value, test_config):
    before = snapshot(run_copy)
    config = test_config(**{field: value})
    if field == "data.name":
        config.data.path = "/nowhere.npz"
    with pytest.raises(workdirs.IncompatibleRunError, match=re.escape(field)):
        train_lib.Trainer(config, run_copy)
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_seed_must_match(run_copy, test_config):
    config = test_config()
    config.seed = 1
    with pytest.raises(workdirs.IncompatibleRunError, match="seed: 0 in the run, 1 now"):
        train_lib.Trainer(config, run_copy)


def test_resume_differences_classify_fields(test_config):
    saved = test_config()
    new = test_config(**{"train.num_steps": 40, "optim.learning_rate": 5e-4, "eval.max_examples": 64})
    new.sample.temperatures = (0.7,)
    new.data.random_flip = True
    new.data.path = "/elsewhere"  # not used by the digits dataset
    incompatible, changed = config_lib.resume_differences(saved, new)
    assert incompatible == []
    assert {f for f, _, _ in changed} == {
        "train.num_steps",
        "optim.learning_rate",
        "eval.max_examples",
        "sample.temperatures",
        "data.random_flip",
        "data.path",
    }
    saved.data.name = new.data.name = "folder"
    assert [f for f, _, _ in config_lib.resume_differences(saved, new)[0]] == ["data.path"]
    new = test_config(**{"optim.ema_decay": 0.99})  # another decay, still averaging
    assert config_lib.resume_differences(test_config(), new)[0] == []


@pytest.mark.slow
def test_allowed_changes_are_logged_and_the_run_resumes(run_copy, caplog, test_config):
    config = test_config(**{"train.num_steps": 22, "optim.learning_rate": 5e-4})
    with caplog.at_level(logging.INFO, logger="absl"):  # absl's logger may have been set to WARNING
        trainer = train_lib.Trainer(config, run_copy)
    assert "Changed on resume: optim.learning_rate: 0.001 -> 0.0005; train.num_steps: 20 -> 22" in caplog.text
    assert trainer.restored_from.endswith("ckpt-20")
    assert trainer.train().step == 22
    assert config_lib.load_config_json(run_copy).train.num_steps == 22


@pytest.mark.slow
def test_start_over_moves_the_old_run_aside_intact(run_copy):
    before = snapshot(run_copy)
    proc = run_cli(
        "--dataset=test", f"--workdir={run_copy}", "--config.model.hidden_width=32", "--start_over",
        "--config.train.num_steps=2", "--config.train.eval_every=0", "--config.train.sample_every=0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent = os.path.dirname(run_copy)
    moved = [os.path.join(parent, d) for d in os.listdir(parent) if d.startswith("run.old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before
    assert f"Moved the previous run in {run_copy} to {moved[0]}" in proc.stderr
    assert config_lib.load_config_json(run_copy).model.hidden_width == 32
    assert [os.path.basename(p) for p in workdirs.checkpoint_prefixes(run_copy, "latest")] == ["ckpt-2", "ckpt-0"]


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_an_error_not_a_torn_file(run_copy, caplog, test_config):
    os.remove(os.path.join(run_copy, "config.json"))  # nothing to compare with: the restore itself must notice
    before = snapshot(run_copy)
    with caplog.at_level(logging.WARNING), pytest.raises(checkpointing.CheckpointMismatchError) as info:
        train_lib.Trainer(test_config(**{"model.hidden_width": 32}), run_copy)
    assert "ckpt-20 does not match" in str(info.value) and "incompatible tensor with shape" in str(info.value)
    assert "falling back" not in caplog.text
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_a_run_whose_checkpoints_are_all_torn_is_never_restarted_from_scratch(run_copy, test_config):
    for prefix in workdirs.checkpoint_prefixes(run_copy, "latest"):
        with open(prefix + ".data-00000-of-00001", "r+b") as f:
            f.truncate(8)
    before = snapshot(run_copy)
    with pytest.raises(checkpointing.NoReadableCheckpointError, match="None of the 3 checkpoint"):
        train_lib.Trainer(test_config(), run_copy)
    assert snapshot(run_copy) == before


@pytest.mark.slow
def test_best_without_latest_is_not_overwritten(run_copy, test_config):
    shutil.rmtree(os.path.join(run_copy, "checkpoints"))
    before = snapshot(run_copy)
    with pytest.raises(checkpointing.CheckpointError, match="best/ checkpoints but no checkpoints/ckpt-N"):
        train_lib.Trainer(test_config(), run_copy)
    assert snapshot(run_copy) == before


def _edit_config(workdir, **changes):
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        saved = json.load(f)
    for field, value in changes.items():
        section, key = field.split(".")
        saved[section][key] = value
    with open(path, "w") as f:
        json.dump(saved, f)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["latest", "best"])
def test_inference_tools_name_both_files_when_config_and_checkpoint_disagree(run_copy, kind, capsys):
    _edit_config(run_copy, **{"model.hidden_width": 32})
    with pytest.raises(checkpointing.CheckpointMismatchError) as info:
        train_lib.restore_for_inference(run_copy, kind)
    assert os.path.join(run_copy, "config.json") in str(info.value)
    assert ("checkpoints" if kind == "latest" else "best") in str(info.value)
    assert export.main(["--workdir", run_copy, "--checkpoint", kind]) == 1
    from glow_tf import sample

    assert sample.main(["sample-grids", "--model", run_copy, "--checkpoint", kind, "--out_dir", "/tmp/x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("does not match" in line and "config.json" in line for line in err)


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_always_leaves_a_restorable_run(tmp_path):
    """Each round resumes the run and is killed (SIGKILL) while it writes a checkpoint every step."""
    workdir = str(tmp_path / "killed")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    args = [
        *TRAIN, "--dataset=test", f"--workdir={workdir}", "--config.train.num_steps=100000",
        "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=2",
        "--config.train.eval_every=0", "--config.train.sample_every=0", "--config.train.log_every=1",
    ]  # fmt: skip
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(3):
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            saves = 0
            deadline = time.monotonic() + TIMEOUT
            for line in proc.stderr:  # a few checkpoints in, then kill at a random moment
                saves += "Saved checkpoint" in line
                if saves >= 3 or time.monotonic() > deadline:
                    break
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait(TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert saves >= 3
        model, config, info = train_lib.restore_for_inference(workdir, with_info=True)
        assert model.initialized and config.train.checkpoint_every == 1
        steps.append(info["step"])
    assert steps == sorted(steps) and steps[-1] > steps[0]  # every round resumed the previous one


# -------------------------------------------------------- one clear line
CLI_MISTAKES = {
    "no arguments": ([], ["Pass --dataset=<name>"]),
    "unknown key": (["--dataset=test", "--config.train.bach_size=8"], ["--config.train.bach_size", '"batch_size"']),
    "bad value": (["--dataset=test", "--config.train.batch_size=abc"], ["--config.train.batch_size=abc"]),
    "unknown dataset": (["--dataset=nope"], ["Unknown --dataset='nope'"]),
    "stray argument": (["--dataset=test", "extra"], ["Unexpected argument", "extra"]),
    "missing config file": (["--config=/nonexistent/config.py"], ["Cannot load the config", "/nonexistent/config.py"]),
    "eval without workdir": (["--mode=eval"], ["--mode=eval needs --workdir"]),
    "eval of a missing run": (["--mode=eval", "--workdir=/nonexistent/run"], ["/nonexistent/run"]),
}


@pytest.fixture(scope="module")
def cli_mistakes():
    """Every command of CLI_MISTAKES, run concurrently (each pays TensorFlow's start-up)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    procs = {
        name: subprocess.Popen([*TRAIN, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (args, _) in CLI_MISTAKES.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=TIMEOUT)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI_MISTAKES))
def test_cli_mistakes_get_one_line_and_no_traceback(cli_mistakes, name):
    assert_one_clear_line(cli_mistakes[name], *CLI_MISTAKES[name][1])


@pytest.mark.slow
def test_workdir_that_is_a_file_gets_one_line_and_is_left_alone(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me")
    assert_one_clear_line(run_cli("--dataset=test", f"--workdir={path}"), "is an existing file, not a folder")
    assert path.read_text() == "keep me"


@pytest.mark.slow
def test_dataset_flag_with_a_space_works_like_with_an_equals_sign(tmp_path):
    proc = run_cli("--dataset", "test", "--workdir", str(tmp_path / "w"), "--config.train.num_steps=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert workdirs.checkpoint_prefixes(str(tmp_path / "w"), "latest")


def test_trainer_rejects_a_workdir_that_is_a_file(tmp_path, test_config):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="existing file"):
        train_lib.Trainer(test_config(), str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    """A 2-slice 8x8x1 Glow (K=1) and its SavedModel."""
    model = tiny_model([8, 8, 1], 8, num_steps=1, batch_shards=2)
    path = str(tmp_path_factory.mktemp("export") / "saved")
    export.export_model(model, path)
    return model, tf.saved_model.load(path)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 16, 16, 1), (2, 8, 4, 1), (8, 8, 1)])
@pytest.mark.parametrize("name", ["encode", "encode_deterministic", "log_prob", "bits_per_dim"])
def test_saved_model_rejects_images_of_the_wrong_shape_naming_the_expected_one(tiny, name, shape):
    _, loaded = tiny
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        loaded.signatures[name](images=tf.zeros(shape, tf.uint8))
    expected = r"Shape of tensor images \[[\d,]+\] is not compatible with expected shape \[\?,8,8,1\]"
    assert re.search(expected, str(info.value))


@pytest.mark.slow
def test_saved_model_rejects_latents_of_the_wrong_shape(tiny):
    _, loaded = tiny
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"latent_0 \[1,4,4,3\].*expected shape \[\?,4,4,2\]"):
        loaded.signatures["decode"](latent_0=tf.zeros([1, 4, 4, 3]), latent_1=tf.zeros([1, 2, 2, 8]))


@pytest.mark.slow
def test_zero_samples_give_an_empty_batch_everywhere(tiny):
    model, loaded = tiny
    empty = loaded.signatures["sample"](num_samples=tf.constant(0), temperature=tf.constant(0.7))["images"]
    assert empty.shape == (0, 8, 8, 1) and empty.dtype == tf.uint8
    assert model.sample(0).shape == (0, 8, 8, 1)
    assert tf.function(lambda n: model.sample(n))(tf.constant(0)).shape == (0, 8, 8, 1)
    for wrapped in (latent_tools.InferenceModel(loaded), latent_tools.InferenceModel.from_model(model)):
        assert wrapped.sample(0).shape == (0, 8, 8, 1)
        assert wrapped.bits_per_dim(np.zeros([0, 8, 8, 1], np.uint8)).shape == (0,)
    assert loaded.signatures["bits_per_dim"](images=tf.zeros([0, 8, 8, 1], tf.uint8))["bits_per_dim"].shape == (0,)


def test_numpy_integers_are_accepted_wherever_python_integers_are(test_config):
    i = np.int64
    model = glow_tf.Glow(
        [i(8), i(8), i(1)], num_levels=i(2), num_steps=i(1), hidden_width=i(8), num_classes=i(10), n_bits=i(5)
    )
    assert model.num_classes == 10 and type(model.num_classes) is int and model.n_bits == 5
    model.batch_shards = np.int32(2)
    assert ActNorm(i(4)).module.channels == 4
    assert LUInvertibleConv1x1(i(4)).channels == 4
    assert AffineCoupling(i(4), hidden_width=i(8)).channels == 4
    assert Squeeze(i(2)).factor == 2
    assert glow_tf.quantization.validate_n_bits(np.uint8(3)) == 3
    assert data.make_eval_dataset(test_config().data, i(4)).element_spec[0].shape[0] is None
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0, got True"):
        glow_tf.Glow([8, 8, 1], num_levels=2, num_steps=1, hidden_width=8, num_classes=True)
    with pytest.raises(ValueError, match="hidden_width must be a positive integer, got 8.0"):
        glow_tf.Glow([8, 8, 1], num_levels=2, num_steps=1, hidden_width=8.0)


def test_squeeze_rejects_latent_channels_not_divisible_by_four():
    with pytest.raises(ValueError, match="channels must be divisible by 4"):
        Squeeze().forward_event_shape([4, 4, 3])
    with pytest.raises(ValueError, match="divisible by 4"):
        Squeeze().forward(tf.zeros([1, 4, 4, 6]))
    assert Squeeze().forward_event_shape([4, 4, 12]) == [8, 8, 3]


@pytest.mark.parametrize("have, want", [(1, 3), (3, 1), (4, 3)])
def test_tools_convert_channels_with_a_note_naming_the_file(tmp_path, have, want, caplog):
    path = str(tmp_path / "img.png")
    pixels = np.random.default_rng(0).integers(0, 256, [8, 8, have]).astype(np.uint8)
    tf.io.write_file(path, tf.io.encode_png(pixels))
    with caplog.at_level(logging.WARNING):
        image = latent_tools.load_image(path, (8, 8, want))
    assert image.shape == (8, 8, want)
    assert path in caplog.text and "converting a" in caplog.text
    caplog.clear()
    latent_tools.load_image(path, (8, 8, have))
    assert "converting" not in caplog.text


class _Builder:
    """Stands in for a TFDS builder that is not prepared yet and downloads from one host."""

    url_infos = {"https://data.example.org/files/set.tar.gz": type("Info", (), {"filename": "set.tar.gz"})()}

    def __init__(self):
        self.download_started = False

    def is_prepared(self):
        return False

    def download_and_prepare(self):
        self.download_started = True
        raise RuntimeError("downloading")


def test_unreachable_download_host_fails_in_seconds(monkeypatch, tmp_path, test_config):
    builder = _Builder()
    monkeypatch.setattr("tensorflow_datasets.builder", lambda *a, **k: builder)
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)

    def refuse(address, timeout=None):
        assert timeout <= tfds_sources.DOWNLOAD_PROBE_TIMEOUT
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(tfds_sources.socket, "create_connection", refuse)
    config = test_config().data
    config.name, config.data_dir = "cifar10", str(tmp_path)
    config.image_size, config.channels = 32, 3
    start = time.monotonic()
    with pytest.raises(data.DatasetUnavailableError) as info:
        data.load_split(config, "test")
    assert time.monotonic() - start < 5 and not builder.download_started
    message = str(info.value)
    assert "download host data.example.org cannot be reached" in message and "downloads/manual" in message

    os.makedirs(tmp_path / "downloads" / "manual")
    (tmp_path / "downloads" / "manual" / "set.tar.gz").write_bytes(b"x")  # a manual file: no host to reach
    with pytest.raises(data.DatasetUnavailableError, match="downloading"):
        data.load_split(config, "test")
    assert builder.download_started


class _Connection:
    def close(self):
        pass


def test_reachable_download_host_goes_on_to_download(monkeypatch):
    reached = []
    monkeypatch.setattr(
        tfds_sources.socket, "create_connection", lambda address, **k: reached.append(address) or _Connection()
    )
    tfds_sources.check_download_hosts(_Builder(), "/nonexistent")
    assert reached == [("data.example.org", 443)]


# ---------------------------------------------------- multi-replica eval
MIRRORED_EVAL = f"""
import json, os, sys
sys.path.insert(0, {REPO!r})
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from configs import test
from glow_tf import data, train_lib
from glow_tf.evaluation import Evaluator

config = test.get_config()
out = {{}}
strategies = [("two", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])), ("one", tf.distribute.get_strategy())]
for name, strategy in strategies:
    with strategy.scope():
        model = train_lib.build_model(config)
        model.initialize(data.model_inputs(next(iter(data.make_train_dataset(config.data, 16, 0)))[0], 4, 0))
    evaluator = Evaluator(model, config, strategy)
    out[name] = {{str(m): evaluator.bits_per_dim(m)[1] for m in (0, 100, 1, 64)}}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_eval_scores_exactly_max_examples_on_two_replicas(test_config):
    counts = helpers.run_json_script(MIRRORED_EVAL, timeout=TIMEOUT)
    whole = data.dataset_info(test_config().data).num_test
    expected = {"0": whole, "100": 100, "1": 1, "64": 64}
    assert counts["two"] == expected and counts["one"] == expected
