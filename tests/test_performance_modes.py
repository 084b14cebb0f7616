"""Performance modes: batch shards, bfloat16 coupling networks, their config fields and CPU thread set-up.

``Glow.batch_shards`` and ``compute_dtype`` must never change what the model
computes (shards: the same numbers; bfloat16: the same function up to bfloat16
round-off, still exactly invertible), and ``glow_tf.parallelism`` must set and
report TensorFlow's thread pools as documented.
"""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from helpers import perturb

from glow_tf import Glow, config_lib, inference, nn, parallelism, train_lib
from glow_tf.model import COMPUTE_DTYPES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_TIMEOUT = 30  # seconds

TINY = dict(
    image_shape=[8, 8, 3],
    num_levels=2,
    num_steps=2,
    hidden_width=8,
    learn_top=True,
    num_classes=3,
    weight_y=0.5,
    n_bits=5,
)
BATCH = 5


def _images(batch, seed=0, shape=(8, 8, 3)):
    return tf.constant(np.random.default_rng(seed).uniform(-0.5, 0.5, [batch, *shape]).astype(np.float32))


def _labels(batch, offset=0):
    return tf.constant((np.arange(batch) + offset) % 3, tf.int32)


def _ready_model(perturbation=0.05, **overrides):
    """A class-conditional tiny Glow with the classifier head, initialised and perturbed."""
    model = Glow(**{**TINY, **overrides}, seed=0)
    model.initialize(_images(16, seed=1, shape=model.image_shape), _labels(16))
    perturb(model, perturbation, seed=0)
    return model


@pytest.fixture(scope="module")
def model():
    return _ready_model()


@contextlib.contextmanager
def shards(model, n):
    previous = model.batch_shards
    model.batch_shards = n
    try:
        yield model
    finally:
        model.batch_shards = previous


def _close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=rtol, atol=atol)


def _loss_and_grads(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model.objective(x, y)["loss"])
    return loss, tape.gradient(loss, model.trainable_variables)


def _assert_grads_close(actual, expected, rtol=1e-4):
    assert len(actual) == len(expected)
    for g, e in zip(actual, expected):
        assert g is not None and e is not None
        scale = float(np.max(np.abs(e.numpy()))) if e.shape.num_elements() else 0.0
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=rtol, atol=rtol * scale + 1e-8)


# --------------------------------------------------------------------------- batch shards
@pytest.mark.parametrize("n", [2, 3, 7])
def test_sharded_objective_encode_decode_log_prob_equal_unsharded(model, n):
    x, y = _images(BATCH, seed=2), _labels(BATCH)
    assert model.batch_shards == 1
    expected_obj = model.objective(x, y)
    expected_latents = model.encode(x, y)
    expected_log_prob = model.log_prob(x, y)
    expected_x = model.decode(expected_latents, y)
    assert set(expected_obj) == {"log_prob", "bits_per_dim", "loss", "logits", "class_bits"}
    # The classifier head is live (perturbed off zero), so sliced logits would show.
    assert float(tf.reduce_max(tf.abs(expected_obj["logits"]))) > 1e-3
    with shards(model, n):
        obj = model.objective(x, y)
        latents = model.encode(x, y)
        log_prob = model.log_prob(x, y)
        decoded = model.decode(expected_latents, y)
    assert set(obj) == set(expected_obj)
    for key in expected_obj:
        assert obj[key].shape == expected_obj[key].shape, key
        _close(obj[key], expected_obj[key])
    assert len(latents) == len(expected_latents)
    for eps, expected_eps in zip(latents, expected_latents):
        assert eps.shape == expected_eps.shape
        _close(eps, expected_eps)
    assert log_prob.shape == [BATCH]
    _close(log_prob, expected_log_prob)
    assert decoded.shape == x.shape
    _close(decoded, expected_x)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_sharded_sample_with_a_stateless_seed_equals_unsharded(model, n):
    seed = tf.constant([7, 11])
    labels = _labels(BATCH, offset=1)
    expected = model.sample(BATCH, 0.7, labels, seed=seed)
    with shards(model, n):
        got = model.sample(BATCH, 0.7, labels, seed=seed)
    assert got.shape == [BATCH, 8, 8, 3] and got.dtype == tf.float32
    _close(got, expected)


@pytest.mark.parametrize("n", [2, 3, 7])
def test_sharded_gradients_equal_unsharded(model, n):
    x, y = _images(BATCH, seed=3), _labels(BATCH)
    expected_loss, expected = _loss_and_grads(model, x, y)
    with shards(model, n):
        loss, got = _loss_and_grads(model, x, y)
    _close(loss, expected_loss, rtol=1e-6, atol=0)
    _assert_grads_close(got, expected)


def test_every_public_call_really_runs_in_slices(model, monkeypatch):
    """The equality tests above would pass trivially if nothing were split: count the slices."""
    sizes = []
    for name in ("_encode_walk", "_decode_walk"):
        original = getattr(Glow, name)

        def spy(self, first, *rest, _original=original, _name=name):
            slices = first if isinstance(first[0], tf.Tensor) else first[0]  # images, or the first level's latents
            sizes.append((_name[1:7], tuple(int(t.shape[0]) for t in slices)))
            return _original(self, first, *rest)

        monkeypatch.setattr(Glow, name, spy)
    x, y = _images(BATCH, seed=14), _labels(BATCH)
    encoded, decoded = [("encode", (2, 3))], [("decode", (2, 3))]
    calls = {
        "log_prob": (lambda: model.log_prob(x, y), encoded),
        "objective": (lambda: model.objective(x, y), encoded),
        "encode": (lambda: model.encode(x, y), encoded),
        "decode": (lambda: model.decode(model.encode(x, y), y), encoded + decoded),
        "sample": (lambda: model.sample(BATCH, 0.5, y, seed=tf.constant([0, 1])), decoded),
    }
    with shards(model, 2):
        for what, (call, expected) in calls.items():
            sizes.clear()
            call()
            assert sizes == expected, what
        sizes.clear()
        model.log_prob(x[:1], y[:1])  # slice 0 owns nothing but still computes one example
        assert sizes == [("encode", (1, 1))]
    sizes.clear()
    model.log_prob(x, y)
    assert sizes == [("encode", (BATCH,))]


def test_sharded_gradients_with_gradient_checkpointing_equal_plain():
    model = _ready_model()
    x, y = _images(BATCH, seed=4), _labels(BATCH)
    _, expected = _loss_and_grads(model, x, y)
    model.gradient_checkpointing = True
    model.batch_shards = 2
    loss, got = _loss_and_grads(model, x, y)
    assert np.isfinite(loss.numpy())
    _assert_grads_close(got, expected)


@pytest.mark.slow
def test_batch_smaller_than_shards_in_a_function_with_unknown_batch(model):
    spec = [tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
    fn = tf.function(lambda x, y: model.objective(x, y), input_signature=spec)
    encode = tf.function(lambda x, y: model.encode(x, y), input_signature=spec)
    x, y = _images(3, seed=5), _labels(3)
    expected = model.objective(x[:1], y[:1])
    expected_latents = model.encode(x, y)
    with shards(model, 2):
        got = fn(x[:1], y[:1])  # slice 0 owns no example
        latents = encode(x, y)  # traced once more (the shard count is read at trace time)
    for key in expected:
        assert got[key].shape[0] == 1, key
        _close(got[key], expected[key])
    for eps, expected_eps in zip(latents, expected_latents):
        _close(eps, expected_eps)


def test_initialize_is_not_sharded():
    x, y = _images(16, seed=6), _labels(16)
    plain = Glow(**TINY, seed=0)
    plain.initialize(x, y)
    sharded = Glow(**TINY, seed=0, batch_shards=2)
    seen = []
    original = nn.ActNormModule.initialize

    def spy(self, t):
        seen.append(int(t.shape[0]))
        return original(self, t)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nn.ActNormModule, "initialize", spy)
        assert sharded.initialize(x, y)
    assert seen and set(seen) == {16}, "every actnorm must see the whole batch"
    assert sharded.batch_shards == 2
    names = [v.name for v in plain.variables]
    assert names == [v.name for v in sharded.variables]
    for a, b in zip(plain.variables, sharded.variables):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_invalid_batch_shards_are_rejected(value):
    with pytest.raises(ValueError, match="batch_shards"):
        Glow(**TINY, batch_shards=value)
    model = Glow(**TINY, batch_shards=3)
    with pytest.raises(ValueError, match="batch_shards"):
        model.batch_shards = value
    assert model.batch_shards == 3  # unchanged by the failed assignment


def test_numpy_integer_batch_shards_are_accepted():
    model = Glow(**TINY, batch_shards=np.int64(4))
    assert model.batch_shards == 4 and type(model.batch_shards) is int


# --------------------------------------------------------------------------- bfloat16
def _bf16_twin(model):
    """A bfloat16-compute model holding exactly ``model``'s variable values."""
    twin = Glow(**TINY, seed=0, compute_dtype="bfloat16")
    assert [v.name for v in twin.variables] == [v.name for v in model.variables]
    for source, target in zip(model.variables, twin.variables):
        target.assign(source)
    return twin


@pytest.fixture(scope="module")
def bf16(model):
    return _bf16_twin(model)


def test_bfloat16_keeps_variables_and_outputs_float32(model, bf16):
    assert bf16.compute_dtype == tf.bfloat16 and model.compute_dtype == tf.float32
    assert {v.dtype for v in bf16.variables} == {v.dtype for v in model.variables} == {tf.float32, tf.bool}
    assert all(v.dtype == tf.float32 for v in bf16.trainable_variables)
    networks = [m for m in bf16.submodules if isinstance(m, nn.CouplingNetwork)]
    assert len(networks) == TINY["num_levels"] * TINY["num_steps"]
    assert all(net.compute_dtype == tf.bfloat16 and net.dtype == tf.float32 for net in networks)
    x, y = _images(BATCH, seed=7), _labels(BATCH)
    obj = bf16.objective(x, y)
    assert all(t.dtype == tf.float32 for t in obj.values()), {k: t.dtype for k, t in obj.items()}
    latents = bf16.encode(x, y)
    assert all(eps.dtype == tf.float32 for eps in latents)
    assert bf16.decode(latents, y).dtype == tf.float32
    assert bf16.sample(2, 0.5, _labels(2), seed=tf.constant([1, 2])).dtype == tf.float32
    flat = bf16.bijector.inverse(x, **bf16.bijector_kwargs(y))
    assert flat.dtype == tf.float32
    # Each coupling network returns float32 from float32 input.
    assert networks[0](tf.zeros([1, 4, 4, networks[0].conv1.kernel.shape[2] - 1])).dtype == tf.float32


def test_bfloat16_bits_per_dim_is_close_but_not_identical(model, bf16):
    x, y = _images(8, seed=8), _labels(8)
    expected = model.bits_per_dim(x, y).numpy()
    got = bf16.bits_per_dim(x, y).numpy()
    assert np.all(np.isfinite(got))
    assert abs(float(got.mean()) - float(expected.mean())) < 0.01
    assert not np.array_equal(got, expected), "bfloat16 mode computed exactly the float32 numbers"
    # The networks themselves differ only by bfloat16 round-off.
    net32 = next(m for m in model.submodules if isinstance(m, nn.CouplingNetwork))
    net16 = next(m for m in bf16.submodules if isinstance(m, nn.CouplingNetwork))
    h = _images(4, seed=9, shape=(4, 4, 6))
    out32, out16 = net32(h).numpy(), net16(h).numpy()
    assert not np.array_equal(out16, out32)
    np.testing.assert_allclose(out16, out32, atol=0.05 * float(np.max(np.abs(out32))))


def _log_prob_graph(model):
    spec = [tf.TensorSpec([None, 8, 8, 3], tf.float32), tf.TensorSpec([None], tf.int32)]
    return tf.function(model.log_prob).get_concrete_function(*spec).graph.as_graph_def()


def _count_ops(graph_def, op_type, dtype, where="all"):
    """Nodes of ``op_type`` with attr ``T == dtype`` in the graph and (``where='all'``) its functions."""
    nodes = list(graph_def.node) if where in ("all", "graph") else []
    if where in ("all", "functions"):
        nodes += [n for f in graph_def.library.function for n in f.node_def]
    return sum(1 for n in nodes if n.op == op_type and tf.as_dtype(n.attr["T"].type) == dtype)


@pytest.mark.slow
def test_bfloat16_graph_runs_the_coupling_networks_in_bfloat16(model, bf16):
    # One flow step is traced per level (glow_tf.flow) and called with each step's weights, so the
    # graph's function library holds one coupling network per level.
    levels = TINY["num_levels"]
    graph = _log_prob_graph(bf16)
    # Per network: two 3x3 convolutions (conv1, conv_out) and the 1x1 convolution as a matmul.
    assert _count_ops(graph, "Conv2D", tf.bfloat16, "functions") == 2 * levels
    assert _count_ops(graph, "MatMul", tf.bfloat16, "functions") == levels
    assert _count_ops(graph, "Conv2D", tf.bfloat16, "graph") == 0
    # The priors' zero convolutions (split prior and learned top, in the graph) and the 1x1 invertible
    # convolutions stay float32.
    assert _count_ops(graph, "Conv2D", tf.float32, "graph") == levels
    assert _count_ops(graph, "Conv2D", tf.float32, "functions") == 0
    assert _count_ops(graph, "MatMul", tf.float32, "functions") > 0
    plain = _log_prob_graph(model)
    assert _count_ops(plain, "Conv2D", tf.float32) == 2 * levels + levels
    assert _count_ops(plain, "Conv2D", tf.bfloat16) == 0 and _count_ops(plain, "MatMul", tf.bfloat16) == 0


def test_bfloat16_encode_decode_round_trip(bf16):
    x, y = _images(BATCH, seed=10), _labels(BATCH)
    back = bf16.decode(bf16.encode(x, y), y)
    assert float(tf.reduce_max(tf.abs(back - x))) < 1e-4


def test_bfloat16_gradients_are_close_to_float32(model, bf16):
    x, y = _images(BATCH, seed=11), _labels(BATCH)
    loss32, g32 = _loss_and_grads(model, x, y)
    loss16, g16 = _loss_and_grads(bf16, x, y)
    assert abs(float(loss16) - float(loss32)) < 0.01
    assert all(g is not None and g.dtype == tf.float32 for g in g16)
    flat32 = np.concatenate([g.numpy().ravel() for g in g32])
    flat16 = np.concatenate([g.numpy().ravel() for g in g16])
    assert np.all(np.isfinite(flat16))
    assert np.linalg.norm(flat16 - flat32) < 0.05 * np.linalg.norm(flat32)


def test_bfloat16_data_dependent_init_equals_float32():
    x, y = _images(16, seed=12), _labels(16)
    fp32 = Glow(**TINY, seed=0)
    bf16 = Glow(**TINY, seed=0, compute_dtype=tf.bfloat16)
    assert fp32.initialize(x, y) and bf16.initialize(x, y)
    for a, b in zip(fp32.variables, bf16.variables):
        assert a.name == b.name
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)


def test_bfloat16_with_shards_equals_unsharded_bfloat16(bf16):
    x, y = _images(BATCH, seed=13), _labels(BATCH)
    expected = bf16.log_prob(x, y)
    with shards(bf16, 3):
        got = bf16.log_prob(x, y)
    _close(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("value", ["half", "fp8", 3, tf.float64, "bf16"])
def test_invalid_compute_dtype_is_rejected_naming_the_valid_ones(value):
    with pytest.raises(ValueError, match="compute_dtype") as err:
        Glow(**TINY, compute_dtype=value)
    assert all(name in str(err.value) for name in COMPUTE_DTYPES)


def test_compute_dtype_defaults_to_the_variable_dtype():
    assert COMPUTE_DTYPES == ("float32", "bfloat16", "float16")
    assert Glow(**TINY).compute_dtype == tf.float32
    assert Glow(**TINY, compute_dtype="float32").compute_dtype == tf.float32


# --------------------------------------------------------------------------- config
def test_config_defaults_for_the_new_fields():
    config = config_lib.default_config()
    assert config.model.compute_dtype == "float32"
    assert config.train.batch_shards == 0
    config.model.compute_dtype = "bfloat16"
    config.train.batch_shards = 4
    config_lib.validate_config(config, num_replicas=1)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.compute_dtype", "float64", r"config\.model\.compute_dtype.*bfloat16"),
        ("model.compute_dtype", "fp8", r"config\.model\.compute_dtype.*float32"),
        ("train.batch_shards", -1, r"config\.train\.batch_shards"),
        ("train.batch_shards", 1.5, r"config\.train\.batch_shards"),
        ("train.batch_shards", True, r"config\.train\.batch_shards"),
    ],
)
def test_config_rejects_bad_compute_dtype_and_batch_shards(field, value, message):
    config = config_lib.default_config()
    section, key = field.split(".")
    # ConfigDict is type-safe: replace the field through a plain dict to set any type.
    values = config[section].to_dict()
    values[key] = value
    config[section] = type(config[section])(values)
    with pytest.raises(ValueError, match=message):
        config_lib.validate_config(config)


def test_config_json_without_the_new_keys_loads_with_defaults():
    config = config_lib.default_config()
    config.model.num_steps = 5
    loaded = json.loads(config_lib.config_to_json(config))
    del loaded["model"]["compute_dtype"], loaded["train"]["batch_shards"]
    back = config_lib.config_from_json(json.dumps(loaded))
    assert back.model.compute_dtype == "float32" and back.train.batch_shards == 0
    assert back.model.num_steps == 5  # the other values of the section survive
    config_lib.validate_config(back)
    # Values that are present are kept.
    config.model.compute_dtype, config.train.batch_shards = "bfloat16", 3
    back = config_lib.config_from_json(config_lib.config_to_json(config))
    assert back.model.compute_dtype == "bfloat16" and back.train.batch_shards == 3


def test_config_json_with_an_unknown_key_is_rejected():
    loaded = json.loads(config_lib.config_to_json(config_lib.default_config()))
    del loaded["train"]["batch_shards"]
    loaded["train"]["batch_shard"] = 2
    with pytest.raises(ValueError, match=r"train\.batch_shard"):
        config_lib.config_from_json(json.dumps(loaded))


def test_build_model_takes_batch_shards_and_compute_dtype_from_the_config(monkeypatch, test_config):
    config = test_config()
    config.train.batch_shards = 3
    config.model.compute_dtype = "bfloat16"
    model = inference.build_model(config)
    assert model.batch_shards == 3 and model.compute_dtype == tf.bfloat16
    assert all(net.compute_dtype == tf.bfloat16 for net in model.submodules if isinstance(net, nn.CouplingNetwork))
    config.train.batch_shards = 0
    config.model.compute_dtype = "float32"
    model = inference.build_model(config)
    assert model.batch_shards == parallelism.auto_batch_shards() and model.compute_dtype == tf.float32
    monkeypatch.setattr(parallelism, "auto_batch_shards", lambda: 5)
    assert inference.build_model(config).batch_shards == 5


def test_trainer_auto_shards_never_exceed_the_per_replica_batch(monkeypatch, tmp_path, test_config):
    monkeypatch.setattr(parallelism, "auto_batch_shards", lambda: 64)
    config = test_config()
    config.train.batch_size, config.train.batch_shards = 4, 0
    assert train_lib.Trainer(config, str(tmp_path / "auto")).model.batch_shards == 4
    config.train.batch_shards = 6  # an explicit choice is kept
    assert train_lib.Trainer(config, str(tmp_path / "explicit")).model.batch_shards == 6


@pytest.mark.slow
def test_sharded_trainer_step_updates_like_the_unsharded_one(tmp_path, test_config):
    """The public training step (noise, loss, gradients, guard, Adamax, EMA) is the same with 3 slices."""
    trainers = []
    for shards in (1, 3):
        config = test_config()
        config.train.batch_shards = shards
        trainer = train_lib.Trainer(config, str(tmp_path / f"shards{shards}"))
        trainer.initialize()
        batch = next(iter(trainer.make_dataset(0)))
        metrics = [trainer.train_step(batch) for _ in range(2)]
        trainers.append((trainer, metrics))
    (plain, plain_metrics), (sharded, sharded_metrics) = trainers
    assert sharded.model.batch_shards == 3
    for a, b in zip(plain_metrics, sharded_metrics):
        np.testing.assert_allclose(float(b["loss"]), float(a["loss"]), rtol=1e-6)
        np.testing.assert_allclose(float(b["grad_norm"]), float(a["grad_norm"]), rtol=1e-4)
    for a, b in zip(plain.variables, sharded.variables):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.name)


# --------------------------------------------------------------------------- parallelism
@pytest.mark.parametrize("cores", [0, -2, True, 1.5, "2"])
def test_configure_cpu_threads_rejects_bad_core_counts(cores):
    with pytest.raises(ValueError, match="cores"):
        parallelism.configure_cpu_threads(cores)


def test_configure_cpu_threads_after_start_only_reports():
    tf.constant(1.0) + 1.0  # the runtime is running
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    assert parallelism.configure_cpu_threads(2) == parallelism.auto_batch_shards()
    assert parallelism.configure_cpu_threads() == parallelism.auto_batch_shards()
    assert tf.config.threading.get_intra_op_parallelism_threads() == intra
    assert tf.config.threading.get_inter_op_parallelism_threads() == inter


def test_auto_batch_shards_follows_the_thread_settings(monkeypatch):
    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() != 1:
        assert parallelism.auto_batch_shards() == 1
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: False)
    monkeypatch.setattr(threading, "get_intra_op_parallelism_threads", lambda: 0)
    monkeypatch.setattr(threading, "get_inter_op_parallelism_threads", lambda: 3)
    assert parallelism.auto_batch_shards() == 1  # ops already use every core
    monkeypatch.setattr(threading, "get_intra_op_parallelism_threads", lambda: 1)
    assert parallelism.auto_batch_shards() == 3
    monkeypatch.setattr(threading, "get_inter_op_parallelism_threads", lambda: 0)  # 0: TF picks, one per core
    assert parallelism.auto_batch_shards() == parallelism.available_cores()
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: True)
    monkeypatch.setattr(threading, "get_inter_op_parallelism_threads", lambda: 3)
    assert parallelism.auto_batch_shards() == 1


def test_configure_cpu_threads_with_an_accelerator_or_one_core_keeps_the_threads(monkeypatch):
    calls, options = [], []
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", calls.append)
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", calls.append)
    monkeypatch.setattr(tf.config.optimizer, "set_experimental_options", options.append)
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: True)
    assert parallelism.configure_cpu_threads(4) == 1
    assert options == []  # an accelerator keeps every grappler pass
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: False)
    assert parallelism.configure_cpu_threads(1) == 1
    assert calls == []
    assert options == [parallelism.CPU_GRAPPLER_OPTIONS]  # one CPU core: the lighter start-up all the same


def test_configure_graph_optimizer_only_on_cpu_only_machines(monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config.optimizer, "set_experimental_options", calls.append)
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", lambda n: None)
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", lambda n: None)
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: True)
    parallelism.configure_graph_optimizer()
    assert calls == []  # GPUs keep every pass (the layout optimiser matters there)
    monkeypatch.setattr(parallelism, "has_accelerator", lambda: False)
    parallelism.configure_graph_optimizer()
    assert calls == [parallelism.CPU_GRAPPLER_OPTIONS]
    parallelism.configure_cpu_threads(2, graph_optimizer=False)
    assert len(calls) == 1
    parallelism.configure_cpu_threads(2)
    assert calls == [parallelism.CPU_GRAPPLER_OPTIONS] * 2
    remapping = {"remapping", "arithmetic_optimization", "common_subgraph_elimination"}
    assert not remapping & set(parallelism.CPU_GRAPPLER_OPTIONS)  # the passes the steps' speed depends on


def _trainer_numbers(config, workdir):
    """Three training steps' losses, the weights after them and the EMA test bits/dim, in new functions."""
    trainer = train_lib.Trainer(config, workdir)
    trainer.initialize()
    batches = iter(trainer.make_dataset(0))
    losses = [trainer.train_step(next(batches))["loss"].numpy() for _ in range(3)]
    sample = tf.function(lambda: trainer.model.sample(3, 0.7, seed=tf.constant([5, 6], tf.int64)))()
    return [*losses, *(v.numpy() for v in trainer.variables), np.float32(trainer.evaluate()), sample.numpy()]


def test_lighter_graph_optimizer_changes_no_number(test_config, tmp_path):
    """The Trainer's losses, weights, EMA eval bits/dim and a sample, bit for bit, with TensorFlow's passes and ours.

    (The options are read when a function is instantiated; each Trainer traces new ones.)
    """
    config = test_config(**{"train.batch_shards": 2, "eval.max_examples": 32})
    before = tf.config.optimizer.get_experimental_options()  # other tests may have set the lighter set already
    defaults = {name: True for name in parallelism.CPU_GRAPPLER_OPTIONS}
    try:
        tf.config.optimizer.set_experimental_options(defaults)
        reference = _trainer_numbers(config, str(tmp_path / "default"))
        tf.config.optimizer.set_experimental_options(parallelism.CPU_GRAPPLER_OPTIONS)
        lighter = _trainer_numbers(config, str(tmp_path / "lighter"))
    finally:
        tf.config.optimizer.set_experimental_options({**defaults, **before})
    assert len(reference) == len(lighter)
    for a, b in zip(reference, lighter):
        np.testing.assert_array_equal(a, b)


def test_available_cores_is_the_affinity_mask_else_the_cpu_count(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert parallelism.available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert parallelism.available_cores() == 3  # the mask, not the machine's 8 cores
    monkeypatch.delattr(os, "sched_getaffinity")  # not Linux
    assert parallelism.available_cores() == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert parallelism.available_cores() == 1


# Subprocess test: a fresh interpreter, since thread pools can only be set before TF's first op.
FRESH_PROCESS = textwrap.dedent(
    """
    import json
    import glow_tf
    import tensorflow as tf
    from glow_tf import parallelism

    threading = tf.config.threading
    out = {"shards": parallelism.configure_cpu_threads(2)}
    out["before"] = [threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()]
    out["sum"] = float(tf.reduce_sum(tf.ones([4])))  # starts the runtime
    out["after"] = [threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()]
    out["again"] = parallelism.configure_cpu_threads(2)
    out["later"] = parallelism.configure_cpu_threads(3)  # too late: reports the settings in use
    out["auto"] = parallelism.auto_batch_shards()
    out["grappler"] = tf.config.optimizer.get_experimental_options()
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_subprocess_configure_cpu_threads_in_a_fresh_process():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    assert out["shards"] == 2
    assert out["before"] == [1, 2] and out["after"] == [1, 2]
    assert out["sum"] == 4.0
    assert out["again"] == 2 and out["later"] == 2 and out["auto"] == 2
    for name, value in parallelism.CPU_GRAPPLER_OPTIONS.items():
        assert out["grappler"][name] is value, name
