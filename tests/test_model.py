"""The whole Glow model: exact density, invertibility, TFP interop, init, shapes, errors."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import autodiff_log_abs_det, perturb

from glow_tf import Glow, nn

TINY = dict(
    image_shape=[8, 8, 3],
    num_levels=2,
    num_steps=2,
    hidden_width=8,
    coupling="affine",
    lu_decomposed=True,
    learn_top=True,
    num_classes=3,
)


def _images(shape, batch=4, seed=0, dtype=np.float32):
    return tf.constant(np.random.default_rng(seed).uniform(-0.5, 0.5, [batch, *shape]).astype(dtype))


def _ready_model(seed=0, perturbation=0.05, **overrides):
    kwargs = {**TINY, **overrides}
    model = Glow(**kwargs, seed=seed)
    model.initialize(_images(kwargs["image_shape"], 16, seed, model.dtype.as_numpy_dtype), _labels(model, 16))
    perturb(model, perturbation, seed)
    return model


def _labels(model, batch):
    return tf.constant(np.arange(batch) % model.num_classes, tf.int32) if model.num_classes else None


def test_log_prob_is_base_density_of_inverse_plus_autodiff_log_det():
    model = _ready_model(dtype=tf.float64, perturbation=0.02)
    x, y = _images(model.image_shape, 2, seed=1, dtype=np.float64), tf.constant([0, 2])
    flat = lambda t: model.flatten_latents(model.encode(t, y))  # noqa: E731
    eps = flat(x).numpy()
    base = -0.5 * np.sum(eps**2 + np.log(2 * np.pi), axis=1)
    expected = base + autodiff_log_abs_det(flat, x)
    np.testing.assert_allclose(model.log_prob(x, y).numpy(), expected, rtol=1e-9)


def test_transformed_distribution_and_bijector_agree_with_log_prob():
    model = _ready_model()
    x, y = _images(model.image_shape, 3, seed=2), tf.constant([1, 0, 2])
    kwargs = model.bijector_kwargs(y)
    expected = model.log_prob(x, y).numpy()
    np.testing.assert_allclose(model.distribution.log_prob(x, bijector_kwargs=kwargs).numpy(), expected, rtol=1e-5)
    flat = model.bijector.inverse(x, **kwargs)
    np.testing.assert_allclose(flat.numpy(), model.flatten_latents(model.encode(x, y)).numpy(), atol=1e-5)
    back = model.bijector.forward(tf.identity(flat), **kwargs)
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-5)
    samples = model.distribution.sample(2, seed=3, bijector_kwargs=model.bijector_kwargs(tf.constant([0, 1])))
    assert samples.shape == [2, 8, 8, 3]


@pytest.mark.slow
def test_encode_decode_round_trip_32px_three_levels():
    shape = [32, 32, 3]
    model = Glow(shape, num_levels=3, num_steps=8, hidden_width=32, lu_decomposed=True, learn_top=True, seed=0)
    model.initialize(_images(shape, 16))
    perturb(model, 0.02)
    x = _images(shape, 4, seed=5)
    latents = model.encode(x)
    assert [eps.shape[1:] for eps in latents] == [[16, 16, 6], [8, 8, 12], [4, 4, 48]]
    assert float(tf.reduce_max(tf.abs(model.decode(latents) - x))) < 1e-4
    # Latents near the data (random N(0, 1) latents of an untrained model decode to extreme values).
    z = [eps[:2] + 0.1 * tf.random.stateless_normal(eps[:2].shape, [1, i]) for i, eps in enumerate(latents)]
    z_back = model.encode(model.decode(z))
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(z, z_back)) < 1e-3


def test_initialize_normalises_every_actnorm_and_is_recorded(monkeypatch):
    model = Glow(**TINY, seed=0)
    outputs = {}
    original = nn.ActNormModule.__call__

    def recording_call(self, x):
        out = original(self, x)
        outputs[id(self)] = out.numpy()
        return out

    monkeypatch.setattr(nn.ActNormModule, "__call__", recording_call)
    assert not model.initialized
    assert model.initialize(_images(model.image_shape, 32), tf.constant(np.arange(32) % 3))
    assert len(outputs) == len(model.actnorms) == 2 * 2 * 3  # per step: flow + 2 in the network
    for out in outputs.values():
        flat = out.reshape(-1, out.shape[-1])
        np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(flat.std(0), 1.0, rtol=1e-3)
    assert model.initialized
    before = [v.numpy() for v in model.variables]
    assert not model.initialize(_images(model.image_shape, 8, seed=9), tf.constant([0] * 8))
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))


def test_priors_start_at_standard_normal():
    model = Glow(**TINY, seed=0)
    z = _images(model.image_shape, 2)
    for level in model.levels[:-1]:
        for layer in level.layers:
            z = layer.inverse(z)
        eps, log_det = level.split_prior.inverse_and_log_det(z)
        np.testing.assert_array_equal(eps.numpy(), z.numpy())
        assert float(tf.reduce_max(tf.abs(log_det))) == 0.0


@pytest.mark.slow
def test_unknown_batch_dimension_under_input_signature():
    model = _ready_model()
    spec = tf.TensorSpec([None, *model.image_shape], tf.float32)
    labels = tf.TensorSpec([None], tf.int32)
    log_prob = tf.function(model.log_prob, input_signature=[spec, labels])
    encode = tf.function(model.encode, input_signature=[spec, labels])
    latent_specs = [tf.TensorSpec([None, *s], tf.float32) for s in model.latent_shapes]
    decode = tf.function(lambda z, y: model.decode(z, y), input_signature=[latent_specs, labels])
    sample = tf.function(
        lambda n, t, y: model.sample(n, t, y), input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([]), labels]
    )
    for batch in (1, 3):
        x, y = _images(model.image_shape, batch, seed=batch), tf.constant([2] * batch)
        np.testing.assert_allclose(log_prob(x, y).numpy(), model.log_prob(x, y).numpy(), rtol=1e-5)
        np.testing.assert_allclose(decode(encode(x, y), y).numpy(), x.numpy(), atol=1e-5)
        assert sample(tf.constant(batch), tf.constant(0.7), y).shape == [batch, *model.image_shape]


@pytest.mark.slow
def test_jit_compiled_gradient_step():
    model = _ready_model()
    x, y = _images(model.image_shape, 4, seed=3), tf.constant([0, 1, 2, 0])

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x, y)["loss"])
        grads = tape.gradient(loss, model.trainable_variables)
        for v, g in zip(model.trainable_variables, grads):
            v.assign_sub(1e-3 * g)
        return loss

    first = float(step(x, y))
    second = float(step(x, y))
    assert np.isfinite(first) and second < first


@pytest.mark.slow
@pytest.mark.parametrize("permutation,lu", [("invconv", False), ("invconv", True), ("shuffle", False)])
def test_gradient_checkpointing_gives_the_same_gradients(permutation, lu):
    model = _ready_model(permutation=permutation, lu_decomposed=lu)
    x, y = _images(model.image_shape, 4, seed=3), tf.constant([0, 1, 2, 0])

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x, y)["loss"])
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, plain = grads()
    model.gradient_checkpointing = True
    loss_ckpt, recomputed = tf.function(grads)()
    np.testing.assert_allclose(float(loss_ckpt), float(loss), rtol=1e-6)
    for a, b in zip(plain, recomputed):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6)


def test_checkpoint_round_trip_keeps_shuffle_and_init(tmp_path):
    kwargs = {**TINY, "permutation": "shuffle"}
    model = _ready_model(seed=1, **{"permutation": "shuffle"})
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    fresh = Glow(**kwargs, seed=2)
    perms = lambda m: [v.numpy() for v in m.variables if "permutation" in v.name]  # noqa: E731
    assert any(not np.array_equal(a, b) for a, b in zip(perms(model), perms(fresh)))
    assert not fresh.initialized
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    assert all(np.array_equal(a, b) for a, b in zip(perms(model), perms(fresh)))
    assert fresh.initialized
    assert not fresh.initialize(_images(fresh.image_shape, 8), tf.constant([0] * 8))
    x, y = _images(model.image_shape, 2, seed=4), tf.constant([0, 1])
    np.testing.assert_array_equal(fresh.log_prob(x, y).numpy(), model.log_prob(x, y).numpy())


def test_temperature_scales_only_the_noise():
    model = _ready_model(num_classes=0)
    seed = tf.constant([4, 2])
    at_zero = [model.sample(3, 0.0, seed=tf.constant([s, 0])) for s in (1, 2)]
    np.testing.assert_array_equal(at_zero[0].numpy(), at_zero[1].numpy())
    means = model.decode([tf.zeros([3, *s]) for s in model.latent_shapes])
    np.testing.assert_allclose(at_zero[0].numpy(), means.numpy(), atol=1e-6)
    warm = model.sample(3, 0.5, seed=seed)
    eps = [tf.random.stateless_normal([3, *s], tf.random.experimental.stateless_fold_in(seed, i)) for i, s in
           enumerate(model.latent_shapes)]  # fmt: skip
    np.testing.assert_allclose(warm.numpy(), model.decode([0.5 * e for e in eps]).numpy(), atol=1e-5)


def test_classifier_head_adds_class_bits_and_trains():
    model = _ready_model(weight_y=0.5)
    x, y = _images(model.image_shape, 4), tf.constant([0, 1, 2, 0])
    with tf.GradientTape() as tape:
        out = model.objective(x, y)
        loss = tf.reduce_mean(out["loss"])
    np.testing.assert_allclose(out["loss"].numpy(), (out["bits_per_dim"] + 0.5 * out["class_bits"]).numpy(), rtol=1e-6)
    assert out["logits"].shape == [4, 3]
    grads = tape.gradient(loss, model.classifier.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in grads)


@pytest.mark.slow
def test_original_latent_shapes_at_256px():
    model = Glow([256, 256, 3], num_levels=6, num_steps=1, hidden_width=4, coupling="additive")
    assert [list(s) for s in model.latent_shapes] == [
        [128, 128, 6],
        [64, 64, 12],
        [32, 32, 24],
        [16, 16, 48],
        [8, 8, 96],
        [4, 4, 384],
    ]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_shape=[12, 12, 3], num_levels=3), r"\[12, 12, 3\].*2\*\*num_levels = 8"),
        (dict(image_shape=[8, 8]), "image_shape must be"),
        (dict(coupling="affin"), "'affin'.*affine"),
        (dict(permutation="random"), "'random'.*invconv"),
        (dict(num_levels=0), "num_levels.*0"),
        (dict(num_steps=1.5), "num_steps.*1.5"),
        (dict(n_bits=9), "n_bits.*9"),
        (dict(num_classes=-1), "num_classes.*-1"),
    ],
)
def test_bad_model_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Glow(**{**TINY, **kwargs})


def test_bad_call_arguments_raise():
    model = Glow(**TINY)
    x, y = _images(model.image_shape, 2), tf.constant([0, 1])
    with pytest.raises(ValueError, match=r"shape \[None, 8, 8, 3\].*\(2, 16, 16, 3\)"):
        model.log_prob(_images([16, 16, 3], 2), y)
    with pytest.raises(ValueError, match="uint8"):
        model.log_prob(tf.zeros([2, 8, 8, 3], tf.uint8), y)
    with pytest.raises(ValueError, match="temperature must be >= 0, got -0.5"):
        model.sample(2, -0.5, labels=y)
    with pytest.raises(ValueError, match="class-conditional.*pass labels"):
        model.log_prob(x)
    with pytest.raises(ValueError, match="latent 1 must have shape"):
        model.decode([tf.zeros([2, 4, 4, 6]), tf.zeros([2, 4, 4, 6])], y)
    with pytest.raises(ValueError, match="channels must be an integer >= 2, got 1"):
        from glow_tf.bijectors import AffineCoupling

        AffineCoupling(1)
