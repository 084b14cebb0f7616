"""glow_tf.relayout: a run copied into the other step-variable layout holds the same state and resumes bit for bit."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_values, by_step_name, make_test_config

from glow_tf import config_lib, inference, relayout, train_lib

CHECKPOINTS = ["checkpoints/ckpt-0", "checkpoints/ckpt-2", "checkpoints/ckpt-4", "best/best-4"]


@pytest.fixture(scope="module")
def per_step_run(tmp_path_factory):
    """A finished 4-step run with per-step variables: checkpoints at 0, 2 and 4, a best one, events and samples."""
    workdir = str(tmp_path_factory.mktemp("relayout") / "per_step")
    overrides = {"model.stack_variables": False, "train.num_steps": 4, "train.checkpoint_every": 2}
    overrides.update({"train.eval_every": 2, "train.sample_every": 4})
    train_lib.Trainer(make_test_config(**overrides), workdir).train()
    return workdir


def file_digests(folder: str) -> dict:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def assert_same_checkpoint(a_prefix: str, b_prefix: str) -> set:
    """Both checkpoints hold the same keys and tensors (the save counter included); returns the keys."""
    a, b = tf.train.load_checkpoint(a_prefix), tf.train.load_checkpoint(b_prefix)
    keys = set(a.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert keys == set(b.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    for key in keys:
        np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key), err_msg=f"{a_prefix} {key}")
    return keys


def restored_state(workdir: str, checkpoint: str) -> train_lib.RunState:
    config = config_lib.load_config_json(workdir)
    state = train_lib.build_run_state(config, inference.build_model(config), config.train.batch_size)
    state.checkpoint.restore(os.path.join(workdir, checkpoint)).assert_existing_objects_matched()
    return state


def state_by_step_name(state: train_lib.RunState) -> dict:
    """Everything a checkpoint holds, with stacked rows under their steps' names (independent of relayout's keys)."""
    out = {f"model {k}": v for k, v in by_step_name(state.model.variables).items()}
    for slot in ("m", "v"):
        slots = [state.optimizer.get_slot(v, slot).numpy() for v in state.variables]
        out.update({f"{slot} {k}": v for k, v in by_step_name(state.variables, slots).items()})
    averages = [a.numpy() for a in state.ema.averages]
    out.update({f"ema {k}": v for k, v in by_step_name(state.variables, averages).items()})
    counters = dict(step=state.step, best=state.best_bits_per_dim, iterations=state.optimizer.iterations)
    out.update({name: v.numpy() for name, v in counters.items()}, ema_updates=state.ema.num_updates.numpy())
    return out


def test_the_copy_holds_every_number_of_every_checkpoint(per_step_run, tmp_path):
    before = file_digests(per_step_run)
    done = relayout.relayout(per_step_run, str(tmp_path / "stacked"))
    assert done.stack_variables and done.checkpoints == CHECKPOINTS
    assert file_digests(per_step_run) == before  # the run is only read
    config = config_lib.load_config_json(done.workdir)
    assert config.model.stack_variables is True
    differences = config_lib.resume_differences(config_lib.load_config_json(per_step_run), config)
    assert differences == ([("model.stack_variables", False, True)], [])  # the only field that differs
    for checkpoint in CHECKPOINTS:
        old, new = restored_state(per_step_run, checkpoint), restored_state(done.workdir, checkpoint)
        assert new.model.stack_variables and len(new.variables) < len(old.variables)
        assert int(new.step.numpy()) == int(checkpoint.rsplit("-", 1)[1])
        assert_same_values(state_by_step_name(old), state_by_step_name(new), what=checkpoint)
    copied = file_digests(done.workdir)
    for name in ("best/best.json", *(n for n in before if n.startswith(("train/", "eval/", "samples/")))):
        assert copied[name] == before[name], name


def test_the_copy_resumes_the_run_bit_for_bit(per_step_run, tmp_path):
    original = str(tmp_path / "original")
    shutil.copytree(per_step_run, original)
    copy = relayout.relayout(per_step_run, str(tmp_path / "stacked")).workdir
    config = make_test_config(**{"train.num_steps": 6, "train.checkpoint_every": 2, "train.eval_every": 2})
    trainers = [train_lib.Trainer(config, workdir) for workdir in (original, copy)]
    assert [t.model.stack_variables for t in trainers] == [False, True]  # each in its checkpoints' layout
    results = [t.train() for t in trainers]
    assert [r.step for r in results] == [6, 6]
    assert results[0].last_eval_bits_per_dim == results[1].last_eval_bits_per_dim
    assert_same_values(*(by_step_name(t.model.variables) for t in trainers), what="weights")
    averages = [by_step_name(t.variables, [a.numpy() for a in t.ema.averages]) for t in trainers]
    assert_same_values(*averages, what="EMA")


def test_back_to_per_step_gives_the_original_checkpoints_tensor_for_tensor(per_step_run, tmp_path):
    stacked = relayout.relayout(per_step_run, str(tmp_path / "stacked")).workdir
    back = relayout.relayout(stacked, str(tmp_path / "back"), stack_variables=False)
    assert not back.stack_variables and back.checkpoints == CHECKPOINTS
    for checkpoint in CHECKPOINTS:
        assert_same_checkpoint(os.path.join(per_step_run, checkpoint), os.path.join(back.workdir, checkpoint))


def test_what_it_refuses_leaves_everything_as_it_was(per_step_run, tmp_path, monkeypatch):
    before = file_digests(per_step_run)
    with pytest.raises(ValueError, match="already keeps per-step step variables.*--stack_variables"):
        relayout.relayout(per_step_run, str(tmp_path / "x"), stack_variables=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        relayout.relayout(per_step_run, str(tmp_path / "full"))
    for inside in (per_step_run, os.path.join(per_step_run, "copy")):
        with pytest.raises(ValueError, match="outside the run"):
            relayout.relayout(per_step_run, inside)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        relayout.relayout(str(tmp_path / "missing"), str(tmp_path / "y"))

    def fail(*args):
        raise ValueError("disk full")

    monkeypatch.setattr(relayout, "_copy_state", fail)
    with pytest.raises(ValueError, match="disk full"):
        relayout.relayout(per_step_run, str(tmp_path / "z"))
    assert sorted(os.listdir(tmp_path)) == ["full"]  # no copy, no staging folder left behind
    assert file_digests(per_step_run) == before


def test_the_command_line(per_step_run, tmp_path, capsys):
    target = str(tmp_path / "stacked")
    assert relayout.main(["--workdir", per_step_run, "--output_workdir", target]) == 0
    out = capsys.readouterr().out
    assert "with stacked step variables" in out and "4 checkpoints" in out
    assert relayout.main([f"--workdir={target}", f"--output_workdir={tmp_path / 'again'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("glow_tf.relayout: error:") and "already keeps stacked" in err and "\n" not in err
    assert relayout.main([f"--workdir={target}", f"--output_workdir={tmp_path / 'back'}", "--nostack_variables"]) == 0
    assert config_lib.load_config_json(str(tmp_path / "back")).model.stack_variables is False


def test_a_float16_run_without_ema_round_trips_its_loss_scale(tmp_path):
    workdir = str(tmp_path / "run")
    overrides = {"model.stack_variables": False, "model.compute_dtype": "float16", "optim.ema_decay": 0.0}
    train_lib.Trainer(make_test_config(**overrides, **{"train.num_steps": 2}), workdir).train()
    stacked = relayout.relayout(workdir, str(tmp_path / "stacked")).workdir
    back = relayout.relayout(stacked, str(tmp_path / "back"), stack_variables=False).workdir
    keys = assert_same_checkpoint(*(os.path.join(w, "checkpoints/ckpt-2") for w in (workdir, back)))
    assert any(k.startswith("loss_scale/") for k in keys) and not any(k.startswith("ema/") for k in keys)
