"""End-to-end training on configs/test.py: outputs, SIGTERM and resume, fallbacks, the non-finite guard."""

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from glow_tf import checkpointing, data, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 180  # seconds, bounds every subprocess


def checkpoint_tensors(prefix):
    """Every tensor of a checkpoint but the save counter (which counts saves, not training)."""
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "save_counter" not in k}


@pytest.fixture(scope="module")
def run(tmp_path_factory, test_config):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = test_config()
    trainer = train_lib.Trainer(config, workdir)
    result = trainer.train()
    return types.SimpleNamespace(workdir=workdir, config=config, trainer=trainer, result=result)


@pytest.mark.slow
def test_run_reaches_the_last_step_and_writes_checkpoints(run):
    assert run.result.step == 20 and run.result.interrupted_by is None
    ckpts = checkpointing.checkpoint_candidates(os.path.join(run.workdir, "checkpoints"), "ckpt")
    assert [os.path.basename(p) for p in ckpts][:2] == ["ckpt-20", "ckpt-10"]
    assert os.path.exists(os.path.join(run.workdir, "best", "best.json"))
    assert np.isfinite(run.result.last_eval_bits_per_dim)


@pytest.mark.slow
def test_config_json_is_the_resolved_config(run):
    loaded = train_lib.config_lib.load_config_json(run.workdir)
    assert loaded.to_dict() == train_lib.config_lib.config_from_json(run.config.to_json()).to_dict()


@pytest.mark.slow
def test_png_grids_exist_for_every_temperature_and_reconstruction(run):
    files = set(os.listdir(os.path.join(run.workdir, "samples")))
    for step in (10, 20):
        for t in run.config.sample.temperatures:
            assert f"step{step:08d}_samples_T{t:.2f}.png" in files
        assert f"step{step:08d}_reconstructions.png" in files
    grid = tf.io.decode_png(tf.io.read_file(os.path.join(run.workdir, "samples", "step00000020_samples_T0.70.png")))
    # 16 samples of 8x8 in a 4x4 grid with 1-pixel padding (37 px), upscaled 6x (nearest) to stay visible
    assert grid.shape == (6 * 37, 6 * 37, 1)


@pytest.mark.slow
def test_reconstructions_reproduce_the_inputs(run):
    grid = tf.io.decode_png(tf.io.read_file(os.path.join(run.workdir, "samples", "step00000020_reconstructions.png")))
    grid = grid.numpy()
    factor = grid.shape[0] // (1 + 2 * 9)  # two rows of 8x8 tiles with 1-pixel padding, upscaled (nearest)
    grid = grid[::factor, ::factor]
    originals, reconstructions = grid[1:9], grid[10:18]
    np.testing.assert_array_equal(originals, reconstructions)
    assert originals.max() > 0


def _tags(logdir):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc, {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in acc.Tags()["tensors"]}


@pytest.mark.slow
def test_event_files_hold_scalars_images_and_config(run):
    acc, tags = _tags(os.path.join(run.workdir, "train"))
    for scalar in ("bits_per_dim", "learning_rate", "grad_norm", "images_per_sec"):
        assert tags[scalar] == "scalars"
    assert [e.step for e in acc.Tensors("bits_per_dim")] == [5, 10, 15, 20]
    lrs = [float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors("learning_rate")]
    assert lrs == sorted(lrs) and lrs[-1] <= 1e-3  # linear warm-up
    for t in run.config.sample.temperatures:
        assert tags[f"samples/T{t:.2f}"] == "images"
    assert tags["reconstructions"] == "images" and tags["config"] == "text"
    text = tf.make_ndarray(acc.Tensors("config")[0].tensor_proto).item().decode()
    assert '"num_steps": 20' in text
    eval_acc, eval_tags = _tags(os.path.join(run.workdir, "eval"))
    assert eval_tags["bits_per_dim"] == "scalars"
    assert [e.step for e in eval_acc.Tensors("bits_per_dim")] == [10, 20]


@pytest.mark.slow
def test_restore_for_inference_returns_the_ema_weights(run):
    model, config = train_lib.restore_for_inference(run.workdir, "latest")
    assert config.model.hidden_width == run.config.model.hidden_width
    averages = [a.numpy() for a in run.trainer.ema.averages]
    for var, avg in zip(model.trainable_variables, averages):
        np.testing.assert_array_equal(var.numpy(), avg)
    raw = [v.numpy() for v in run.trainer.model.trainable_variables]
    assert any(not np.array_equal(a, r) for a, r in zip(averages, raw))
    best, _ = train_lib.restore_for_inference(run.workdir, "best")
    assert best.initialized


@pytest.mark.slow
def test_restore_for_inference_errors(run, tmp_path):
    with pytest.raises(ValueError, match="latest"):
        train_lib.restore_for_inference(run.workdir, "newest")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_lib.restore_for_inference(str(tmp_path / "missing"))
    shutil.copy(os.path.join(run.workdir, "config.json"), tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="No 'best' checkpoint"):
        train_lib.restore_for_inference(str(tmp_path), "best")


@pytest.mark.slow
def test_eval_mode_covers_the_whole_test_split(run):
    result = train_lib.evaluate_checkpoint(run.workdir, "best")
    assert result["num_examples"] == data.dataset_info(run.config.data).num_test
    assert result["step"] == 20 and np.isfinite(result["bits_per_dim"])
    again = train_lib.evaluate_checkpoint(run.workdir, "best")
    assert again["bits_per_dim"] == result["bits_per_dim"]  # stateless noise: deterministic


@pytest.mark.slow
def test_sigterm_then_resume_is_bit_identical_to_the_uninterrupted_run(run, tmp_path, test_config):
    """``train.py`` SIGTERMed after its first step saves and exits; resuming to step 20 gives ``run``'s state.

    Tolerance: bit-identical. On CPU with a fixed seed every source of randomness is
    stateless and keyed by the step (dequantisation noise, data order, sample noise),
    and the checkpoint holds model, optimizer slots and iterations, EMA, step and best
    value, so the resumed run executes the same float operations in the same order.
    """
    workdir = str(tmp_path / "preempted")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--dataset=test", f"--workdir={workdir}"]
    proc = subprocess.Popen([*cmd, "--config.train.log_every=1"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    killer = threading.Timer(TIMEOUT, proc.kill)
    killer.start()
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if re.search(r"step \d+/20", line) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # right after the first step: eval and sample tracing follow
                break
        log.extend(proc.stderr)  # drain until the process exits
        proc.wait(TIMEOUT)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
    text = "".join(log)
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "Received SIGTERM" in text and "Stopped by a signal" in text
    stopped_at = int(re.search(r"Stopped by a signal at step (\d+)", text).group(1))
    assert 1 <= stopped_at < 20

    resumed = train_lib.Trainer(test_config(), workdir)
    assert resumed.restored_from.endswith(f"ckpt-{stopped_at}") and int(resumed.step.numpy()) == stopped_at
    assert not resumed.initialize()  # data-dependent init skipped on resume
    assert resumed.train().step == 20
    expected = checkpoint_tensors(os.path.join(run.workdir, "checkpoints", "ckpt-20"))
    got = checkpoint_tensors(os.path.join(workdir, "checkpoints", "ckpt-20"))
    assert expected.keys() == got.keys() and len(got) > 50
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)

    out = subprocess.run(
        [*cmd[:2], "--mode=eval", f"--workdir={workdir}", "--checkpoint=best"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    match = re.search(r"test bits/dim (\d+\.\d+) over (\d+) images", out.stdout)
    assert match and int(match.group(2)) == data.dataset_info(run.config.data).num_test


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(run, tmp_path, caplog, test_config):
    workdir = str(tmp_path / "copy")
    shutil.copytree(run.workdir, workdir)
    data_file = os.path.join(workdir, "checkpoints", "ckpt-20.data-00000-of-00001")
    with open(data_file, "r+b") as f:  # a torn write: the tail of the file is lost
        f.truncate(os.path.getsize(data_file) // 2)
    with caplog.at_level(logging.WARNING):
        trainer = train_lib.Trainer(test_config(), workdir)
    assert trainer.restored_from.endswith("ckpt-10") and int(trainer.step.numpy()) == 10
    assert "ckpt-20 is unreadable" in caplog.text
    model, _ = train_lib.restore_for_inference(workdir, "latest")
    assert model.initialized
    with open(os.path.join(workdir, "checkpoints", "checkpoint"), "w") as f:
        f.write("\x00garbage{{")  # a torn state file
    assert train_lib.Trainer(test_config(), workdir).restored_from.endswith("ckpt-10")


@pytest.mark.slow
def test_exploding_learning_rate_trips_the_guard_and_keeps_a_good_checkpoint(tmp_path, caplog, test_config):
    workdir = str(tmp_path / "nan")
    config = test_config(**{"optim.learning_rate": 1e30, "optim.warmup_images": 0, "optim.ema_decay": 0.0})
    trainer = train_lib.Trainer(config, workdir)
    with caplog.at_level(logging.WARNING), pytest.raises(train_lib.NonFiniteLossError, match="3 non-finite"):
        trainer.train()
    assert "update skipped" in caplog.text
    assert int(trainer.step.numpy()) < 10
    model, _ = train_lib.restore_for_inference(workdir, "latest")
    assert checkpointing.all_finite(model.variables)
    x = data.deterministic_inputs(next(iter(data.make_eval_dataset(config.data, 8)))[0], config.data.n_bits)
    assert np.all(np.isfinite(model.bits_per_dim(x).numpy()))
    trainer.model.trainable_variables[0].assign(tf.fill(trainer.model.trainable_variables[0].shape, np.nan))
    assert trainer.save() is None  # NaN weights never reach a checkpoint


@pytest.mark.slow
def test_class_conditional_training_and_sampling(tmp_path, test_config):
    config = test_config(
        **{"model.class_conditional": True, "model.weight_y": 0.01, "train.num_steps": 2, "train.eval_every": 0}
    )
    config.train.sample_every = 0
    trainer = train_lib.Trainer(config, str(tmp_path))
    assert trainer.model.num_classes == 10
    result = trainer.train()
    assert result.step == 2 and np.isfinite(result.last_eval_bits_per_dim)
    assert os.path.exists(os.path.join(tmp_path, "samples", "step00000002_samples_T0.70.png"))


def test_gradient_checkpointing_flag_reaches_the_model(test_config):
    model = train_lib.build_model(test_config(**{"train.gradient_checkpointing": True}))
    assert model.gradient_checkpointing


def test_class_conditional_needs_labels(test_config):
    config = test_config(**{"model.class_conditional": True})
    info = dataclasses.replace(data.dataset_info(config.data), num_classes=0)
    with pytest.raises(ValueError, match="no class labels"):
        train_lib.build_model(config, info)
