"""glow_tf.keras: GlowModel with compile / fit / evaluate / predict, its callbacks and the stock Keras ones.

Which Keras: ``test_keras3_does_not_track_the_glow_variables`` documents why GlowModel
is a tf_keras (Keras 2) model; if a future Keras 3 changes, that test says so.
"""

import json
import os
import re
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorboard.backend.event_processing import event_accumulator

import glow_tf
import glow_tf.keras as gk
from glow_tf import data, export, optim, train_lib
from glow_tf.evaluation import Evaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240


@pytest.fixture(scope="session")
def small_config(test_config):
    """``small_config(**overrides)``: configs/test.py (8x8 digits, batch 16, L=2) at K=1, width 8, unsharded.

    Small graphs trace fast; sharding is the Glow's business (tested with the model).
    """
    small = {"model.num_steps": 1, "model.hidden_width": 8, "train.batch_shards": 1}
    return lambda **overrides: test_config(**{**small, **overrides})


def train_batches(config, steps=None):
    ds = data.make_train_dataset(config.data, config.train.batch_size, config.seed)
    return ds if steps is None else ds.take(steps)


def eval_batches(config):
    return data.make_eval_dataset(config.data, config.eval.batch_size, "test", max_examples=config.eval.max_examples)


def plain_model(config, optimizer):
    """A GlowModel of ``config``'s Glow compiled with ``optimizer`` (not the Trainer's)."""
    model = gk.GlowModel(train_lib.build_model(config), seed=config.seed)
    model.compile(optimizer=optimizer)
    return model


def values(variables):
    return [v.numpy().copy() for v in variables]


class Record(tf_keras.callbacks.Callback):
    """Every batch's and epoch's logs."""

    def __init__(self):
        super().__init__()
        self.batches, self.epochs = [], []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append(dict(logs))

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(dict(logs))


# --------------------------------------------------------------------------- which Keras
def test_keras3_does_not_track_the_glow_variables(tmp_path, small_config):
    """Keras 3 (TF 2.21's tf.keras) sees none of a Glow's tf.Variables; tf_keras sees them all."""
    import keras  # Keras 3

    assert keras.__version__.startswith("3.")
    if os.environ.get("TF_USE_LEGACY_KERAS", "0").lower() not in ("1", "true"):  # train.py sets it (tf_keras)
        assert tf.keras.Model is keras.Model
    config = small_config()
    glow = train_lib.build_model(config)

    class Keras3Glow(keras.Model):
        def __init__(self, glow):
            super().__init__()
            self.glow = glow

    k3 = Keras3Glow(glow)
    assert len(glow.trainable_variables) == 30 and k3.trainable_weights == [] and k3.weights == []
    # Its optimizer does update raw tf.Variables (one device; under MirroredStrategy only when built up front,
    # see the distributed test) ...
    images = next(iter(train_batches(config)))[0]
    glow.initialize(data.model_inputs(images, config.data.n_bits, 0))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(glow.objective(data.model_inputs(images, config.data.n_bits, 0))["loss"])
    grads = tape.gradient(loss, glow.trainable_variables)
    before = values(glow.trainable_variables)
    keras.optimizers.Adamax(1e-3).apply_gradients(zip(grads, glow.trainable_variables))
    moved = [not np.array_equal(a, v.numpy()) for a, v in zip(before, glow.trainable_variables)]
    assert moved == [bool(np.any(g.numpy() != 0)) for g in grads] and sum(moved) > 10
    # ... but its weight files (save_weights, ModelCheckpoint, BackupAndRestore) hold none of them,
    k3.built = True
    k3.save_weights(str(tmp_path / "k3.weights.h5"))
    with h5py.File(tmp_path / "k3.weights.h5") as f:
        datasets = []
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    assert datasets == []
    # and it refuses the Trainer's optimizer (tf_keras Adamax with the warm-up schedule).
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier"):
        k3.compile(optimizer=optim.make_optimizer(config.optim, 16))
    # tf_keras tracks the Glow's variables as the model's own weights.
    model = gk.GlowModel(glow)
    assert {v.ref() for v in model.trainable_weights} == {v.ref() for v in glow.trainable_variables}


# --------------------------------------------------------------------------- the Trainer's step
@pytest.mark.slow
def test_keras_steps_equal_trainer_steps(tmp_path, small_config):
    """Same weights, same batches: two Keras steps give the Trainer's losses, gradient norms and weights.

    The model is class-conditional with the classifier head (``weight_y``), the Trainer's full objective;
    an unconditional model runs the same step with ``labels=None``.
    """
    config = small_config(**{"model.class_conditional": True, "model.weight_y": 0.5, "train.batch_shards": 2})
    trainer = train_lib.Trainer(config, str(tmp_path / "trainer"))
    trainer.initialize()
    model = gk.from_config(config)
    for mine, theirs in zip(model.glow.variables, trainer.model.variables):
        mine.assign(theirs)
    batches = iter(trainer.make_dataset(0))
    for _ in range(2):
        images, labels = next(batches)
        reference = trainer.train_step((images, labels))
        logs = model.train_on_batch(images, labels, return_dict=True)
        assert logs["loss"] == pytest.approx(float(reference["loss"]), rel=1e-6)
        assert logs["bits_per_dim"] == pytest.approx(float(reference["bits_per_dim"]), rel=1e-6)
        assert logs["grad_norm"] == pytest.approx(float(reference["grad_norm"]), rel=1e-5)
        # loss = bits/dim + weight_y * class bits, per example and so in the means
        assert logs["loss"] == pytest.approx(logs["bits_per_dim"] + 0.5 * logs["class_bits"], rel=1e-6)
        assert logs["class_bits"] > 0
    assert int(model.step.numpy()) == int(trainer.step.numpy()) == 2
    assert int(model.optimizer.iterations.numpy()) == int(trainer.optimizer.iterations.numpy()) == 2
    for mine, theirs in zip(model.glow.trainable_variables, trainer.variables):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6, err_msg=mine.name)


# --------------------------------------------------------------------------- one fit with every callback
@pytest.fixture(scope="module")
def fitted(tmp_path_factory, small_config):
    """2 epochs x 3 steps with validation, our callbacks and the stock TensorBoard, ModelCheckpoint, LR scheduler."""
    logdir = str(tmp_path_factory.mktemp("keras_run"))
    config = small_config()
    model = plain_model(config, tf_keras.optimizers.Adamax(1e-3))  # the new (non-legacy) tf_keras optimizer
    train = train_batches(config)
    init = gk.DataDependentInit(train, num_images=32)
    grids = gk.SampleGrids(logdir, temperatures=[0.0, 0.7], num_samples=4)
    record = Record()
    history = model.fit(
        train,
        epochs=2,
        steps_per_epoch=3,
        validation_data=eval_batches(config),
        verbose=0,
        callbacks=[
            init,
            grids,
            record,
            tf_keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3 / (epoch + 1)),  # adds "lr" to the logs
            tf_keras.callbacks.TensorBoard(logdir),
            tf_keras.callbacks.ModelCheckpoint(os.path.join(logdir, "ckpt", "weights-{epoch}"), save_weights_only=True),
        ],
    )
    return dict(
        logdir=logdir, config=config, model=model, history=history.history, init=init, grids=grids, record=record
    )


@pytest.mark.slow
def test_fit_reports_bits_per_dim_and_loss(fitted):
    h = fitted["history"]
    for key in ("loss", "bits_per_dim", "val_loss", "val_bits_per_dim", "grad_norm", "nonfinite_in_a_row", "lr"):
        assert len(h[key]) == 2, key
    assert h["loss"] == h["bits_per_dim"] and all(np.isfinite(h["loss"] + h["val_loss"]))
    assert h["nonfinite_in_a_row"] == [0, 0]
    # Epoch logs are the means over the epoch's steps (Keras' running means, per image).
    steps = [b["bits_per_dim"] for b in fitted["record"].batches]
    assert len(steps) == 6 and h["bits_per_dim"][1] == pytest.approx(steps[-1])
    assert int(fitted["model"].step.numpy()) == 6 == int(fitted["model"].optimizer.iterations.numpy())


@pytest.mark.slow
def test_data_dependent_init_ran_before_the_first_step(fitted):
    assert fitted["init"].ran and fitted["model"].initialized


@pytest.mark.slow
def test_learning_rate_scheduler_sets_the_rate(fitted):
    assert fitted["history"]["lr"] == pytest.approx([1e-3, 5e-4])
    assert float(fitted["model"].optimizer.learning_rate.numpy()) == pytest.approx(5e-4)


@pytest.mark.slow
def test_evaluate_equals_the_trainers_evaluator(fitted):
    model, config = fitted["model"], fitted["config"]
    keras_bpd = model.evaluate(eval_batches(config), verbose=0, return_dict=True)["bits_per_dim"]
    again = model.evaluate(eval_batches(config), verbose=0, return_dict=True)["bits_per_dim"]
    reference, count = Evaluator(model.glow, config, tf.distribute.get_strategy()).bits_per_dim(
        config.eval.max_examples
    )
    assert count == 128 and keras_bpd == again == pytest.approx(reference, rel=1e-6)
    assert fitted["history"]["val_bits_per_dim"][-1] == pytest.approx(keras_bpd, rel=1e-6)


@pytest.mark.slow
def test_predict_encodes_and_decode_inverts_it(fitted):
    model, config = fitted["model"], fitted["config"]
    latents = model.predict(eval_batches(config), verbose=0)
    assert {k: v.shape for k, v in latents.items()} == {"latent_0": (128, 4, 4, 2), "latent_1": (128, 2, 2, 8)}
    images = next(iter(eval_batches(config)))[0]
    first = model(images)  # the same deterministic latents
    np.testing.assert_allclose(first["latent_0"].numpy(), latents["latent_0"][:64], atol=1e-6)
    bit_reduced = glow_tf.postprocess(glow_tf.preprocess(images, config.data.n_bits), config.data.n_bits)
    np.testing.assert_array_equal(model.decode(first).numpy(), bit_reduced.numpy())


@pytest.mark.slow
def test_sample_returns_uint8_images_reproducibly(fitted):
    model = fitted["model"]
    a, b = model.sample(5, 0.7, seed=[1, 2]), model.sample(5, 0.7, seed=[1, 2])
    assert a.dtype == tf.uint8 and a.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert model.sample(0).shape == (0, 8, 8, 1)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.sample(2, -1.0)


def _tags(logdir):
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc, {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in acc.Tags()["tensors"]}


@pytest.mark.slow
def test_sample_grids_and_tensorboard_logs(fitted):
    logdir = fitted["logdir"]
    names = sorted(os.listdir(os.path.join(logdir, "samples")))
    assert names == [f"step{s:08d}_samples_T{t}.png" for s in (3, 6) for t in ("0.00", "0.70")]
    grid = tf.io.decode_png(tf.io.read_file(os.path.join(logdir, "samples", names[-1])))
    assert grid.shape == (256 // 19 * 19, 256 // 19 * 19, 1)  # 2x2 tiles of 8x8 with padding 1, upscaled
    acc, tags = _tags(os.path.join(logdir, "train"))
    assert tags["samples/T0.70"] == "images" and [e.step for e in acc.Tensors("samples/T0.70")] == [3, 6]
    for tag in ("epoch_loss", "epoch_bits_per_dim", "epoch_grad_norm", "epoch_lr"):  # lr: LearningRateScheduler
        assert tags[tag] == "scalars", tag
    _, val_tags = _tags(os.path.join(logdir, "validation"))
    assert "epoch_bits_per_dim" in val_tags


@pytest.mark.slow
def test_model_checkpoint_weights_restore_and_skip_the_init(fitted, tmp_path):
    config, trained = fitted["config"], fitted["model"]
    path = tf.train.latest_checkpoint(os.path.join(fitted["logdir"], "ckpt"))
    assert path.endswith("weights-2")
    restored = plain_model(config, tf_keras.optimizers.Adamax(1e-3))
    assert not restored.initialized
    restored.load_weights(path)
    for a, b in zip(restored.glow.variables, trained.glow.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert int(restored.step.numpy()) == 6 and int(restored.optimizer.iterations.numpy()) == 6
    init = gk.DataDependentInit(train_batches(config), num_images=32)
    init.set_model(restored)
    init.on_train_begin()  # what fit runs first
    assert not init.ran
    np.testing.assert_array_equal(restored.glow.variables[0].numpy(), trained.glow.variables[0].numpy())


@pytest.mark.slow
def test_export_is_glow_tf_exports_savedmodel(fitted, tmp_path):
    model, config = fitted["model"], fitted["config"]
    mine = tf.saved_model.load(model.export(str(tmp_path / "keras"), metadata={"note": "x"}))
    direct = tf.saved_model.load(export.export_model(model.glow, str(tmp_path / "direct")))
    assert set(mine.signatures) == set(direct.signatures) == set(export.SIGNATURES)
    for name in export.SIGNATURES:
        a, b = mine.signatures[name], direct.signatures[name]
        assert a.structured_input_signature == b.structured_input_signature, name
        assert a.structured_outputs == b.structured_outputs, name
    images = next(iter(eval_batches(config)))[0][:8]
    latents = mine.signatures["encode_deterministic"](images=images)
    for key, value in direct.signatures["encode_deterministic"](images=images).items():
        np.testing.assert_array_equal(latents[key].numpy(), value.numpy())
    np.testing.assert_allclose(latents["latent_1"].numpy(), model.encode(images)["latent_1"].numpy(), atol=1e-5)
    seed = tf.constant([3, 4], tf.int64)
    np.testing.assert_array_equal(
        mine.log_prob_seeded(images, seed)["log_prob"], direct.log_prob_seeded(images, seed)["log_prob"]
    )
    np.testing.assert_array_equal(
        mine.sample_seeded(4, 0.7, seed)["images"].numpy(), direct.sample_seeded(4, 0.7, seed)["images"].numpy()
    )
    with open(tmp_path / "keras" / "assets.extra" / export.METADATA_FILE) as f:
        info = json.load(f)
    assert info["trained_with"] == "glow_tf.keras.GlowModel" and info["step"] == 6 and info["note"] == "x"


# --------------------------------------------------------------------------- preemption and the guard
class StopAt(tf_keras.callbacks.Callback):
    """Simulates a preemption: raises at the start of epoch ``epoch``."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("preempted")


@pytest.mark.slow
def test_backup_and_restore_resumes_an_interrupted_fit_exactly(tmp_path, small_config):
    config = small_config()
    epoch_data = train_batches(config, 3)  # the same 3 batches every epoch; noise keyed by the global step

    def fit(callbacks):
        model = gk.from_config(config)
        init = gk.DataDependentInit(epoch_data, num_images=32)
        history = model.fit(epoch_data, epochs=3, verbose=0, callbacks=[init, *callbacks])
        return model, init, history.history

    reference, _, _ = fit([])
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        fit([tf_keras.callbacks.BackupAndRestore(backup), StopAt(2)])
    resumed, init, history = fit([tf_keras.callbacks.BackupAndRestore(backup)])
    assert not init.ran, "the restored model must skip the data-dependent init"
    assert len(history["loss"]) == 1 and int(resumed.step.numpy()) == 9 == int(reference.step.numpy())
    for a, b in zip(resumed.glow.variables, reference.glow.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.name)


@pytest.mark.slow
def test_non_finite_updates_are_skipped_then_stop_training(tmp_path, small_config):
    config = small_config()
    model = gk.from_config(config)
    images = next(iter(train_batches(config)))[0]
    model.initialize(images)
    good = data.model_inputs(images, config.data.n_bits, 0)
    bad = tf.fill(good.shape, float("nan"))
    stream = tf.data.Dataset.from_tensors(good).concatenate(tf.data.Dataset.from_tensors(bad).repeat(30))
    snapshot = []
    after_first = tf_keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: snapshot.append(values(model.glow.variables)) if batch == 0 else None
    )
    with pytest.raises(train_lib.NonFiniteLossError, match="3 non-finite updates in a row up to step 4"):
        model.fit(stream, verbose=0, callbacks=[gk.NonFiniteGuard(3), after_first])
    assert int(model.optimizer.iterations.numpy()) == 1 and int(model.step.numpy()) == 4
    for a, v in zip(snapshot[0], model.glow.variables):
        np.testing.assert_array_equal(a, v.numpy(), err_msg=v.name)
    with pytest.raises(train_lib.NonFiniteLossError, match="20 non-finite updates in a row"):
        model.fit(stream.skip(1), verbose=0)  # fit's default guard
    assert int(model.optimizer.iterations.numpy()) == 1


# --------------------------------------------------------------------------- user mistakes
def test_user_mistakes_fail_with_one_clear_line(tmp_path, small_config):
    import keras  # Keras 3

    config = small_config()
    model = gk.GlowModel(train_lib.build_model(config))
    with pytest.raises(ValueError, match="tf_keras optimizer .* not the Keras 3 Adamax"):
        model.compile(optimizer=keras.optimizers.Adamax())
    with pytest.raises(ValueError, match="loss= is not supported"):
        model.compile(optimizer="adamax", loss="mse")
    model.compile(optimizer=tf_keras.optimizers.legacy.Adamax(1e-3))
    images = next(iter(train_batches(config)))[0]
    with pytest.raises(ValueError, match="use tf_keras.callbacks.TerminateOnNaN"):
        model.fit(train_batches(config, 1), callbacks=[keras.callbacks.TerminateOnNaN()], verbose=0)
    with pytest.raises(ValueError, match="has not had its data-dependent init; pass glow_tf.keras.DataDependentInit"):
        model.fit(train_batches(config, 1), verbose=0)
    with pytest.raises(ValueError, match="expects uint8 images, or float images .* got dtype int32"):
        model.initialize(tf.cast(images, tf.int32))
    for path in ("w.h5", "w.keras"):
        with pytest.raises(ValueError, match="TensorFlow checkpoint format"):
            model.save_weights(str(tmp_path / path))
    with pytest.raises(NotImplementedError, match="save_weights_only=True"):
        model.save(str(tmp_path / "m"))  # also what ModelCheckpoint(save_weights_only=False) calls
    with pytest.raises(TypeError, match="wraps a glow_tf.Glow"):
        gk.GlowModel(tf.Module())
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        gk.GlowModel(model.glow, seed=-1)
    conditional = gk.from_config(small_config(**{"model.class_conditional": True}))
    with pytest.raises(ValueError, match="class-conditional .* pass labels"):
        conditional.initialize(images)
    conditional.initialize(images, tf.zeros([16], tf.int32))
    with pytest.raises(ValueError, match="class-conditional \\(10 classes\\): pass labels"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="class-conditional .* batches must be \\(images, labels\\)"):
        conditional.fit(tf.data.Dataset.from_tensors(images), verbose=0)


# --------------------------------------------------------------------------- subprocesses
def _run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=args[0] if args else REPO,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


MIRRORED = """
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, tf_keras
from configs import test
from glow_tf import data, train_lib
import glow_tf.keras as gk

config = test.get_config()
config.model.num_steps, config.model.hidden_width, config.train.batch_shards = 1, 8, 1
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one, two = gk.from_config(config, tf.distribute.get_strategy()), gk.from_config(config, mirrored)
images, labels = next(iter(data.make_train_dataset(config.data, 32, seed=5)))
one.initialize(images)
init = gk.DataDependentInit(tf.data.Dataset.from_tensors((images, labels)), num_images=32)

class Record(tf_keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.losses = []
    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))

def max_diff(a, b):
    return max(float(np.max(np.abs(x.numpy() - y.numpy()))) for x, y in zip(a, b))

with mirrored.scope():  # the init on the mirrored model, as fit's on_train_begin does it
    init.set_model(two)
    init.on_train_begin()
init_diff = max_diff(one.glow.trainable_variables, [v.values[1] for v in two.glow.trainable_variables])
# Float inputs (dequantised once): both runs see identical batches of 16, the mirrored one 8 per replica.
x = data.model_inputs(images, config.data.n_bits, seed=9, step=0)
float_ds = tf.data.Dataset.from_tensor_slices(x).batch(16)
r1, r2 = Record(), Record()
h1 = one.fit(float_ds, epochs=2, verbose=0, callbacks=[r1], validation_data=float_ds).history
h2 = two.fit(float_ds, epochs=2, verbose=0, callbacks=[r2], validation_data=float_ds).history
weight_diff = max_diff(one.glow.trainable_variables, [v.values[0] for v in two.glow.trainable_variables])
replicas_equal = all(np.array_equal(v.values[0].numpy(), v.values[1].numpy()) for v in two.glow.variables)
steps = [int(one.step.numpy()), int(two.step.numpy())]
# uint8 batches, and the new (non-legacy) tf_keras optimizer: replica r dequantises its half of the global batch
# with the Trainer's stream (seed, step, r).
with mirrored.scope():
    three = gk.GlowModel(train_lib.build_model(config), seed=config.seed)
    three.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
three.initialize(images)
halves = [data.model_inputs(images[8 * r : 8 * r + 8], config.data.n_bits, config.seed, 0, r) for r in (0, 1)]
expected = float(tf.reduce_mean(three.glow.objective(tf.concat(halves, 0))["loss"]))
grids = gk.SampleGrids("grids", temperatures=[0.7], num_samples=4)
uint8_loss = three.fit(tf.data.Dataset.from_tensors((images[:16], labels[:16])), verbose=0, callbacks=[grids])
uint8_loss = uint8_loss.history["loss"][0]
adam_replicas_equal = all(np.array_equal(v.values[0].numpy(), v.values[1].numpy()) for v in three.glow.variables)
with mirrored.scope():
    glow = train_lib.build_model(config)
try:
    gk.GlowModel(glow)
    outside = "no error"
except ValueError as err:
    outside = str(err)

# Keras 3 evidence: its optimizer on the Glow's mirrored tf.Variables, with and without building it first.
class K3(keras.Model):
    def __init__(self, glow):
        super().__init__()
        self.glow = glow
        self.built = True
    def train_step(self, x):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(self.glow.objective(x)["loss"], global_batch_size=16)
        variables = self.glow.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return {"loss": loss}

keras3 = []
for build_first in (False, True):
    with mirrored.scope():
        k3 = K3(train_lib.build_model(config))
        k3.compile(optimizer=keras.optimizers.Adamax(1e-3))
        if build_first:
            k3.optimizer.build(k3.glow.trainable_variables)
    try:
        k3.fit(float_ds.take(1), verbose=0)
        keras3.append("trained")
    except ValueError as err:
        keras3.append(str(err).splitlines()[0])
print(json.dumps(dict(
    init_diff=init_diff, h1=h1, h2=h2, r1=r1.losses, r2=r2.losses, weight_diff=weight_diff,
    replicas_equal=replicas_equal, steps=steps,
    uint8=[float(uint8_loss), expected], adam_replicas_equal=adam_replicas_equal, pngs=grids.paths,
    outside=outside, keras3=keras3,
)))
"""


@pytest.mark.slow
def test_fit_under_mirrored_strategy_equals_one_device(tmp_path):
    r = _run(MIRRORED, str(tmp_path))
    assert r["init_diff"] == 0.0, "the data-dependent init must give every replica the one-device variables"
    assert r["steps"] == [4, 4] and r["replicas_equal"] and r["adam_replicas_equal"]
    assert r["r2"] == pytest.approx(r["r1"], rel=1e-6) and len(r["r1"]) == 4
    for key in ("loss", "bits_per_dim", "val_loss", "val_bits_per_dim", "grad_norm"):
        assert r["h2"][key] == pytest.approx(r["h1"][key], rel=1e-6), key
    assert r["weight_diff"] <= 1e-6, r["weight_diff"]
    assert r["uint8"][0] == pytest.approx(r["uint8"][1], rel=1e-6)
    assert [os.path.basename(p) for p in r["pngs"]] == ["step00000001_samples_T0.70.png"]
    assert os.path.exists(tmp_path / "grids" / "samples" / "step00000001_samples_T0.70.png")
    assert "built outside the tf.distribute strategy scope" in r["outside"]
    # Keras 3: its optimizer fails on mirrored raw tf.Variables unless built inside the scope first.
    assert r["keras3"][0].startswith("Unknown variable") and r["keras3"][1] == "trained", r["keras3"]


def _readme_snippet() -> str:
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    match = re.search(r"<!-- keras-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md must hold the Keras example after a <!-- keras-example --> marker"
    return match.group(1)


@pytest.mark.slow
def test_readme_keras_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes runs/keras_digits
    namespace = {}
    exec(compile(_readme_snippet(), "README.md (Keras example)", "exec"), namespace)
    run = tmp_path / "runs" / "keras_digits"
    assert {"samples", "train", "validation", "export", "checkpoints"} <= set(os.listdir(run))
    assert not os.listdir(run / "backup")  # BackupAndRestore removes its backup after a completed fit
    assert (run / "export" / "saved_model.pb").exists() and len(os.listdir(run / "samples")) == 6
    assert namespace["samples"].shape == (16, 8, 8, 1) and namespace["digits"].dtype == tf.uint8
    assert namespace["latents"]["latent_1"].shape == (297, 2, 2, 8)
