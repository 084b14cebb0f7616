"""glow_tf.convert: runs of OpenAI's original Glow (fixtures made by its own code) in glow_tf, and back.

The fixtures in ``tests/fixtures/openai_glow`` are logdirs written by openai/glow's
unmodified ``train.py`` (see their README.md) with the original's outputs on fixed
inputs in ``expected.npz``. The original's variable names and shapes are re-derived
here from its ``model.py`` / ``tfops.py`` (:func:`original_shapes`), independently of
``glow_tf.openai_layout``.
"""

import json
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
from helpers import by_step_name, perturb

from glow_tf import (
    checkpointing,
    config_lib,
    convert,
    export,
    inference,
    latent_tools,
    openai_hps,
    openai_layout,
    quantization,
    train_lib,
)
from glow_tf.data import local

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "openai_glow")
RUNS = {"A": "A_affine_invconv", "B": "B_additive_5bit"}
N_BITS = {"A": 8, "B": 5}
EMA = openai_layout.EMA_SUFFIX
TIMEOUT = 240


def fixture_dir(key: str) -> str:
    return os.path.join(FIXTURES, RUNS[key])


def fixture_prefix(key: str) -> str:
    return os.path.join(fixture_dir(key), convert.DEFAULT_CHECKPOINT)


def checkpoint_tensors(prefix: str) -> dict:
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def first_line_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


def clean_env() -> dict:
    """Environment of a child process that cannot see the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def converted(root):
    """Both fixtures converted, with an npz of the fixture's own images as the dataset (no download)."""
    out = {}
    for key in RUNS:
        expected = dict(np.load(os.path.join(fixture_dir(key), "expected.npz")))
        npz = str(root / f"{key}.npz")
        np.savez(npz, images=expected["images"], labels=expected["labels"])
        conv = convert.from_openai(fixture_dir(key), str(root / f"run{key}"), data_name="npz", data_path=npz)
        out[key] = types.SimpleNamespace(conv=conv, model=conv.model, expected=expected, npz=npz, n_bits=N_BITS[key])
    return out


def model_inputs(case, noise: bool = True) -> tf.Tensor:
    """The fixture's model inputs: ``preprocess(images, n_bits)`` (+ the noise the original was fed)."""
    x = quantization.preprocess(case.expected["images"], case.n_bits)
    return x + case.expected["noise"] if noise else x


# ----------------------------------------------------------------------------- the original's numbers
@pytest.mark.parametrize("key", list(RUNS))
def test_converted_fixture_gives_the_originals_bits_per_dim(converted, key):
    case = converted[key]
    bits = case.model.bits_per_dim(model_inputs(case)).numpy()
    np.testing.assert_allclose(bits, case.expected["bits_per_dim"], rtol=0, atol=1e-5)
    bits0 = case.model.bits_per_dim(model_inputs(case, noise=False)).numpy()
    np.testing.assert_allclose(bits0, case.expected["bits_per_dim_zero_noise"], rtol=0, atol=1e-5)
    m = case.conv.config.model
    assert (m.num_levels, m.num_steps, m.hidden_width, m.permutation, m.learn_top) == (2, 2, 16, "invconv", True)
    assert m.coupling == ("affine" if key == "A" else "additive")
    assert case.conv.config.data.n_bits == case.n_bits and case.conv.config.data.channels == 3


@pytest.mark.parametrize("key", list(RUNS))
def test_converted_fixture_gives_the_originals_latents(converted, key):
    case = converted[key]
    latents = case.model.encode(model_inputs(case))
    # The eps are not relabelled: only the last layers' output channels are, the latents are the original's.
    assert len(latents) == 2
    for i, eps in enumerate(latents):
        np.testing.assert_allclose(eps.numpy(), case.expected[f"eps_{i}"], rtol=0, atol=1e-5)
    flat = case.model.flatten_latents(latents).numpy()
    np.testing.assert_allclose(flat, case.expected["eps_flat"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("key", list(RUNS))
def test_converted_fixture_decodes_to_the_originals_images(converted, key):
    case = converted[key]
    z = case.model.decode(case.model.unflatten_latents(case.expected["decode_eps_flat"]))
    np.testing.assert_allclose(z.numpy(), case.expected["decoded_model_space"], rtol=0, atol=1e-5)
    pixels = quantization.postprocess(z, case.n_bits).numpy()
    np.testing.assert_array_equal(pixels, case.expected["decoded_images"])


def test_ema_takes_the_checkpoints_moving_averages(converted, root):
    conv = convert.from_openai(
        fixture_dir("A"), str(root / "runA_ema"), ema=True, data_name="npz", data_path=converted["A"].npz
    )
    tensors = checkpoint_tensors(fixture_prefix("A"))
    w = conv.model.levels[0].steps[0][1].w.numpy()
    np.testing.assert_array_equal(w, tensors["model/0/0/invconv/W" + EMA])
    kernel = conv.model.levels[1].steps[1][2].network.conv_out.kernel.numpy()
    ema_kernel = tensors["model/1/1/f1/l_last/W" + EMA]
    np.testing.assert_array_equal(kernel, ema_kernel[..., openai_layout.relabelling(24)])
    trainable = 0
    for converter in openai_layout.layout(conv.model):  # every trainable tensor is its EMA copy
        for name, value in converter.write().items():
            expected = tensors[name + EMA] if name in converter.trainable else tensors[name]
            np.testing.assert_array_equal(value, expected, err_msg=name)
            trainable += name in converter.trainable
    assert trainable == 54
    ema, raw = (by_step_name(m.trainable_variables) for m in (conv.model, converted["A"].model))
    assert sum(not np.array_equal(ema[name], raw[name]) for name in raw) > 40
    assert "Weights: the checkpoint's ExponentialMovingAverage copies." in conv.notes


# ----------------------------------------------------------------------------- the original's layout, written
def test_writing_a_converted_fixture_reproduces_the_original_checkpoint(converted, root):
    run = convert.to_openai(converted["A"].conv.workdir, str(root / "logA"))
    original = tf.train.load_checkpoint(fixture_prefix("A"))
    written = tf.train.load_checkpoint(run.checkpoint)
    # Same names (weights, EMA copies, Adamax Variable_N), shapes and dtypes as the original's own Saver wrote.
    assert written.get_variable_to_shape_map() == original.get_variable_to_shape_map()
    assert written.get_variable_to_dtype_map() == original.get_variable_to_dtype_map()
    for name in original.get_variable_to_shape_map():
        if name.startswith("model/") and not name.endswith(EMA):
            np.testing.assert_array_equal(written.get_tensor(name), original.get_tensor(name), err_msg=name)
    assert written.get_tensor("Variable") == 1.0 and not written.get_tensor("Variable_7").any()
    hps = first_line_json(os.path.join(run.logdir, "train.txt"))
    assert hps == {**first_line_json(os.path.join(fixture_dir("A"), "train.txt")), "logdir": run.logdir}
    assert first_line_json(os.path.join(run.logdir, "test.txt")) == hps
    with open(os.path.join(run.logdir, "checkpoint"), encoding="utf-8") as f:
        assert f.read().splitlines()[0] == f'model_checkpoint_path: "{convert.DEFAULT_CHECKPOINT}"'


def test_the_originals_tf1_saver_restores_a_written_checkpoint(converted, root):
    """A TF1 graph with the fixture's variables (what the original's graph holds) restores what to_openai wrote."""
    prefix = str(root / "logA" / convert.DEFAULT_CHECKPOINT)
    if not os.path.exists(prefix + ".index"):
        prefix = convert.to_openai(converted["A"].conv.workdir, str(root / "logA")).checkpoint
    original = tf.train.load_checkpoint(fixture_prefix("A"))
    dtypes = original.get_variable_to_dtype_map()
    with tf.Graph().as_default():
        variables = {
            name: tf.compat.v1.get_variable(name, shape, dtypes[name], initializer=tf.compat.v1.zeros_initializer())
            for name, shape in original.get_variable_to_shape_map().items()
        }
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, prefix)
            values = sess.run({n: variables[n] for n in ("model/0/0/invconv/W", "model/prior/p/logs", "Variable")})
    np.testing.assert_array_equal(values["model/0/0/invconv/W"], original.get_tensor("model/0/0/invconv/W"))
    np.testing.assert_array_equal(values["model/prior/p/logs"], original.get_tensor("model/prior/p/logs"))


def original_shapes(hps: dict) -> dict:
    """``{name: shape}`` of the original's model variables in creation order (from its model.py and tfops.py)."""
    size, levels, depth, width = hps["image_size"], hps["n_levels"], hps["depth"], hps["width"]
    shapes, c = {}, 12  # 3 channels, squeezed once
    for i in range(levels):
        for k in range(depth):
            p = f"model/{i}/{k}"
            shapes.update({f"{p}/actnorm_center/b": [1, 1, 1, c], f"{p}/actnorm_scale/logs": [1, 1, 1, c]})
            if hps["flow_permutation"] == 1:
                shapes.update({f"{p}/shuffle/indices": [c], f"{p}/shuffle/indices_inverse": [c]})
            if hps["flow_permutation"] == 2:
                shapes[f"{p}/invconv/W"] = [c, c]
            n_out = c if hps["flow_coupling"] == 1 else c // 2
            for layer, kernel in (("l_1", [3, 3, c // 2 + 1, width]), ("l_2", [1, 1, width, width])):
                shapes[f"{p}/f1/{layer}/W"] = kernel
                shapes[f"{p}/f1/{layer}/actnorm_center/b"] = [1, 1, 1, width]
                shapes[f"{p}/f1/{layer}/actnorm_scale/logs"] = [1, 1, 1, width]
            shapes.update({f"{p}/f1/l_last/W": [3, 3, width + 1, n_out], f"{p}/f1/l_last/b": [1, 1, 1, n_out]})
            shapes[f"{p}/f1/l_last/logs"] = [1, n_out]
        if i < levels - 1:
            shapes.update({f"model/pool{i}/conv/W": [3, 3, c // 2 + 1, c], f"model/pool{i}/conv/b": [1, 1, 1, c]})
            shapes[f"model/pool{i}/conv/logs"] = [1, c]
            c = c // 2 * 4
    if hps["learntop"]:
        shapes.update({"model/prior/p/W": [3, 3, 2 * c + 1, 2 * c], "model/prior/p/b": [1, 1, 1, 2 * c]})
        shapes["model/prior/p/logs"] = [1, 2 * c]
    for scope, n_in, n_out, used in (
        ("prior/y_emb", hps["n_y"], 2 * c, hps["ycond"]),
        ("classifier", c, hps["n_y"], hps["ycond"] and hps["weight_y"] > 0),
    ):
        if used:
            shapes.update({f"model/{scope}/W": [n_in, n_out], f"model/{scope}/b": [1, n_out]})
            shapes[f"model/{scope}/logs"] = [1, n_out]
    assert [size // 2**levels] * 2 + [c] == hps["top_shape"]
    return shapes


def tiny_run(
    workdir,
    coupling,
    permutation,
    num_levels=2,
    num_steps=1,
    learn_top=True,
    class_conditional=False,
    weight_y=0.0,
    n_bits=8,
    lu=False,
    ema_decay=0.0,
    seed=0,
    channels=3,
):
    """A perturbed (nothing is the identity) 8x8 glow_tf run on digits, written as a step-0 checkpoint."""
    config = config_lib.default_config()
    config.seed = seed
    config.data.update({"name": "digits", "image_size": 8, "channels": channels, "n_bits": n_bits})
    config.model.update({"num_levels": num_levels, "num_steps": num_steps, "hidden_width": 4, "coupling": coupling})
    config.model.update({"permutation": permutation, "lu_decomposed": lu, "learn_top": learn_top})
    config.model.update({"class_conditional": class_conditional, "weight_y": weight_y})
    config.optim.ema_decay = ema_decay
    config.train.batch_shards = 1
    model = inference.build_model(config)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, [6, 8, 8, channels]).astype(np.uint8)
    labels = tf.constant(rng.integers(0, 10, 6), tf.int32) if class_conditional else None
    x = quantization.dequantize(quantization.preprocess(images, n_bits), n_bits, seed=tf.constant([1, 2], tf.int64))
    model.initialize(x, labels)
    perturb(model, 0.05, seed)
    state = train_lib.build_run_state(config, model, 16)
    if state.ema is not None:  # averages that differ from the weights
        for average in state.ema.averages:
            average.assign_add(rng.normal(0.0, 0.01, average.shape).astype(np.float32))
    config_lib.save_config(config, str(workdir))
    checkpointing.CheckpointSet(str(workdir), state.checkpoint, model.variables).save(0)
    return types.SimpleNamespace(config=config, model=model, x=x, labels=labels, ema=state.ema, workdir=str(workdir))


VARIANTS = {
    "additive-reverse-5bit": dict(coupling="additive", permutation="reverse", n_bits=5, num_steps=2),
    "additive-shuffle-fixed-top": dict(coupling="additive", permutation="shuffle", learn_top=False),
    "additive-invconv-3-levels": dict(coupling="additive", permutation="invconv", num_levels=3),
    "affine-reverse-1-level": dict(coupling="affine", permutation="reverse", num_levels=1, num_steps=2),
    "affine-shuffle-5bit-fixed-top": dict(coupling="affine", permutation="shuffle", n_bits=5, learn_top=False),
    "affine-invconv-2-steps": dict(coupling="affine", permutation="invconv", num_steps=2),
    "ycond": dict(coupling="affine", permutation="invconv", class_conditional=True),
    "ycond-classifier-5bit": dict(
        coupling="additive", permutation="shuffle", class_conditional=True, weight_y=0.01, n_bits=5
    ),
}


# Two variants in the quick loop (between them: both couplings, invconv and shuffle, 5 bits, labels).
QUICK_VARIANTS = ("affine-invconv-2-steps", "ycond-classifier-5bit")


@pytest.mark.parametrize(
    "name", [n if n in QUICK_VARIANTS else pytest.param(n, marks=pytest.mark.slow) for n in VARIANTS]
)
def test_every_flag_variant_round_trips_exactly(tmp_path, name):
    run = tiny_run(tmp_path / "run", seed=len(name), **VARIANTS[name])
    logdir = convert.to_openai(run.workdir, str(tmp_path / "logdir"), problem="cifar10").logdir
    hps = first_line_json(os.path.join(logdir, "train.txt"))
    assert hps["problem"] == "cifar10" and hps["n_y"] == 10

    # The names and shapes the original's model.py creates for these hps, their EMA copies and the Adamax state.
    shapes = original_shapes(hps)
    trainable = [n for n in shapes if "/shuffle/" not in n]
    expected = {**shapes, **{n + EMA: shapes[n] for n in trainable}, "Variable": []}
    for j, n in enumerate(trainable):
        expected[f"Variable_{2 * j + 1}"] = expected[f"Variable_{2 * j + 2}"] = shapes[n]
    written = checkpoint_tensors(os.path.join(logdir, convert.DEFAULT_CHECKPOINT))
    assert {k: list(v.shape) for k, v in written.items()} == expected

    # Relabelled output channels: original 2j <- glow_tf j, original 2j + 1 <- glow_tf n/2 + j.
    step = run.model.levels[0].steps[0]
    kernel = step[2].network.conv_out.kernel.numpy()
    if hps["flow_coupling"] == 1:
        half = kernel.shape[-1] // 2
        np.testing.assert_array_equal(written["model/0/0/f1/l_last/W"][..., 0::2], kernel[..., :half])
        np.testing.assert_array_equal(written["model/0/0/f1/l_last/W"][..., 1::2], kernel[..., half:])
    else:
        np.testing.assert_array_equal(written["model/0/0/f1/l_last/W"], kernel)
    if hps["n_levels"] > 1:
        logs = run.model.levels[0].split_prior.network.logs.numpy()  # glow_tf: mean [:6], log-std [6:]
        np.testing.assert_array_equal(written["model/pool0/conv/logs"][0, 0::2], logs[:6])
        np.testing.assert_array_equal(written["model/pool0/conv/logs"][0, 1::2], logs[6:])
    if hps["flow_permutation"] == 1:
        np.testing.assert_array_equal(written["model/0/0/shuffle/indices"], step[1].permutation.numpy())

    back = convert.from_openai(logdir, str(tmp_path / "back"), data_name="digits")
    assert back.config.model.to_dict() == run.config.model.to_dict()
    assert back.config.seed == run.config.seed and back.config.data.n_bits == run.config.data.n_bits
    assert len(back.model.variables) == len(run.model.variables)
    for a, b in zip(run.model.variables, back.model.variables):
        assert a.name == b.name and a.shape == b.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    loss, loss_back = (m.objective(run.x, run.labels)["loss"].numpy() for m in (run.model, back.model))
    np.testing.assert_array_equal(loss, loss_back)


def test_ema_weights_of_a_glow_tf_run_round_trip(tmp_path):
    run = tiny_run(tmp_path / "run", "affine", "shuffle", ema_decay=0.9)
    logdir = convert.to_openai(run.workdir, str(tmp_path / "logdir"), problem="mnist").logdir
    written = checkpoint_tensors(os.path.join(logdir, convert.DEFAULT_CHECKPOINT))
    assert not np.array_equal(written["model/0/0/actnorm_center/b"], written["model/0/0/actnorm_center/b" + EMA])
    raw = convert.from_openai(logdir, str(tmp_path / "raw"), data_name="digits")
    averaged = convert.from_openai(logdir, str(tmp_path / "averaged"), ema=True, data_name="digits")
    averages = {v.ref(): a for v, a in zip(run.model.trainable_variables, run.ema.averages)}
    for v, r, a in zip(run.model.variables, raw.model.variables, averaged.model.variables):
        np.testing.assert_array_equal(r.numpy(), v.numpy(), err_msg=v.name)
        np.testing.assert_array_equal(a.numpy(), averages[v.ref()].numpy() if v.trainable else v.numpy())


def test_an_lu_model_is_written_as_its_matrix(tmp_path):
    run = tiny_run(tmp_path / "run", "affine", "invconv", lu=True)
    written = convert.to_openai(run.workdir, str(tmp_path / "logdir"), problem="cifar10")
    assert any("LU" in note for note in written.notes)
    back = convert.from_openai(written.logdir, str(tmp_path / "back"), data_name="digits")
    assert back.config.model.lu_decomposed is False
    layer = run.model.levels[0].steps[0][1]
    np.testing.assert_allclose(back.model.levels[0].steps[0][1].w.numpy(), layer.weight().numpy(), atol=1e-6)
    np.testing.assert_allclose(back.model.bits_per_dim(run.x).numpy(), run.model.bits_per_dim(run.x).numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- bad input
def mutated_logdir(path, hps=None, first_line=None, drop=(), add=None, change=None, no_hps=False):
    """A copy of fixture A with its hps or checkpoint changed."""
    shutil.copytree(fixture_dir("A"), path)
    if no_hps:
        os.remove(path / "train.txt")
        os.remove(path / "test.txt")
    if hps or first_line:
        text = first_line or json.dumps({**first_line_json(path / "train.txt"), **hps})
        (path / "train.txt").write_text(text + "\n")
    if drop or add or change:
        prefix = str(path / convert.DEFAULT_CHECKPOINT)
        tensors = {k: v for k, v in checkpoint_tensors(prefix).items() if k not in drop}
        tensors.update(add or {})
        for name, fn in (change or {}).items():
            tensors[name] = fn(tensors[name])
        for f in os.listdir(path):
            if f.startswith(convert.DEFAULT_CHECKPOINT):
                os.remove(path / f)
        openai_layout.write_checkpoint(prefix, tensors)
    return str(path)


def with_nan(t):
    t = t.copy()
    t.flat[0] = np.nan
    return t


BAD = {
    "no hps file": (dict(no_hps=True), FileNotFoundError, r"No train.txt or test.txt in .*train.py writes its hps"),
    "not json": (dict(first_line="epoch 1"), ValueError, r"first line of .*train.txt.* is not the hps JSON"),
    "permutation 3": (
        dict(hps={"flow_permutation": 3}),
        ValueError,
        r"hps flow_permutation=3 is not supported: valid values are 0 \(reverse\), 1 \(shuffle\), 2 \(invconv\)",
    ),
    "unknown problem": (dict(hps={"problem": "svhn"}), ValueError, r"problem='svhn' .*valid problems are mnist, "),
    "coupling as text": (dict(hps={"flow_coupling": "affine"}), ValueError, r"flow_coupling='affine' .*0 \(add"),
    "levels too many": (dict(hps={"n_levels": 5}), ValueError, r"image_size=16, n_levels=5 .*divisible by"),
    "missing variable": (
        dict(drop=["model/0/1/invconv/W"]),
        ValueError,
        r"lacks 1 tensors that the hps need: model/0/1/invconv/W\.",
    ),
    "extra variable": (
        dict(add={"model/0/1/extra/W": np.zeros([2], np.float32)}),
        ValueError,
        r"holds 1 tensor\(s\) that a model with these hps does not have: model/0/1/extra/W;",
    ),
    "shape mismatch": (
        dict(hps={"width": 8}),
        ValueError,
        r"model/0/0/f1/l_1/W has shape \[3, 3, 7, 16\] in the checkpoint, the hps need \[3, 3, 7, 8\]",
    ),
    "hps of another model": (dict(hps={"flow_permutation": 1}), ValueError, r"lacks 8 tensors .*shuffle/indices"),
    "ycond without labels": (dict(hps={"ycond": True}), ValueError, r"n_y=10 needs a labelled dataset with 10 "),
    "non-finite weight": (dict(change={"model/0/0/invconv/W": with_nan}), ValueError, r"not finite; nothing was"),
    "ema without averages": (
        dict(drop=["model/prior/p/W" + EMA], ema=True),
        ValueError,
        r"lacks 1 EMA copies that the hps need: model/prior/p/W/ExponentialMovingAverage\.",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, name):
    mutation, error, pattern = BAD[name]
    mutation = dict(mutation)
    ema = mutation.pop("ema", False)
    logdir = mutated_logdir(tmp_path / "logdir", **mutation)
    npz = tmp_path / "unlabelled.npz"
    np.savez(npz, images=np.zeros([4, 16, 16, 3], np.uint8))
    with pytest.raises(error, match=pattern) as info:
        convert.from_openai(logdir, str(tmp_path / "run"), ema=ema, data_name="npz", data_path=str(npz))
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["logdir", "unlabelled.npz"]  # no run, no staging folder left


def test_missing_logdir_checkpoint_and_existing_run_are_errors(converted, tmp_path):
    with pytest.raises(FileNotFoundError, match="logdir .*nowhere' does not exist"):
        convert.from_openai(str(tmp_path / "nowhere"), str(tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=r"No checkpoint 'best.ckpt' .*checkpoints there: model_best_loss.ckpt"):
        convert.from_openai(fixture_dir("A"), str(tmp_path / "run"), checkpoint="best.ckpt")
    with pytest.raises(FileExistsError, match=r"already holds a run \(config.json, checkpoints\)"):
        convert.from_openai(fixture_dir("A"), converted["A"].conv.workdir)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        convert.from_openai(fixture_dir("A"), str(tmp_path / "stuff"))
    gray = tiny_run(tmp_path / "gray", "affine", "invconv", channels=1)
    with pytest.raises(ValueError, match=r"RGB images only \(3 channels\); this run has data.channels=1"):
        convert.to_openai(gray.workdir, str(tmp_path / "gray_log"), problem="mnist")
    digits = tiny_run(tmp_path / "digits", "affine", "invconv")
    with pytest.raises(ValueError, match=r"data.name='digits' has no counterpart .*pass problem= one of"):
        convert.to_openai(digits.workdir, str(tmp_path / "digits_log"))


@pytest.mark.parametrize(
    "indices, inverse, pattern",
    [([0, 0, 1, 2], [0, 1, 2, 3], r"indices = \[0, 0, 1, 2\] is not a permutation of 0..3"),
     ([1, 2, 3, 0], [1, 2, 3, 0], r"indices_inverse = \[1, 2, 3, 0\] is not the inverse of .*/indices")],
)  # fmt: skip
def test_a_shuffle_must_be_a_permutation_with_its_inverse(indices, inverse, pattern):
    converter = openai_layout.Shuffle("model/0/0/shuffle", tf.Variable(np.arange(4, dtype=np.int32)))
    tensors = {"model/0/0/shuffle/indices": np.array(indices), "model/0/0/shuffle/indices_inverse": np.array(inverse)}
    with pytest.raises(ValueError, match=pattern):
        converter.read(tensors)
    good = {
        "model/0/0/shuffle/indices": np.array([1, 2, 3, 0]),
        "model/0/0/shuffle/indices_inverse": np.array([3, 0, 1, 2]),
    }
    np.testing.assert_array_equal(converter.read(good)[0][1], [1, 2, 3, 0])


PROBLEMS = {  # hps changes -> (data.name, extra data fields, the problem written back)
    "mnist": ({"problem": "mnist", "image_size": -1}, "mnist", {"image_size": 32, "random_shift": 0.1}),
    "cifar10 dal=2": ({"dal": 2}, "cifar10", {"random_shift": 0.1, "random_flip": True}),
    "imagenet-oord 32": ({"problem": "imagenet-oord", "image_size": 32}, "imagenet32", {}),
    "imagenet-oord 64": ({"problem": "imagenet-oord", "image_size": 64}, "imagenet64", {}),
    "imagenet 32": (
        {"problem": "imagenet", "image_size": 32},
        "imagenet32",
        {"imagenet_builder": "imagenet_resized"},
    ),
    "celeba": ({"problem": "celeba", "image_size": 256, "n_bits_x": 5}, "celebahq", {"n_bits": 5}),
    "lsun_realnvp": ({"problem": "lsun_realnvp", "category": "tower", "image_size": 64}, "lsun", {}),
    "lsun": ({"problem": "lsun", "category": "church_outdoor", "image_size": -1}, "lsun", {"image_size": 256}),
}


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_every_problem_maps_to_a_glow_tf_dataset_and_back(name):
    changes, data_name, fields = PROBLEMS[name]
    hps = {**first_line_json(os.path.join(fixture_dir("A"), "train.txt")), **changes}
    config, notes = openai_hps.config_from_hps(hps)
    assert config.data.name == data_name and config.data.channels == 3
    for key, value in fields.items():
        assert config.data[key] == value, key
    if hps.get("category"):
        assert config.data.lsun_category == hps["category"]
    back, _ = openai_hps.hps_from_config(config, [1, 1, 1], 0, "logs")
    assert (back["problem"], back["category"], back["image_size"]) == (
        hps["problem"], hps.get("category", ""), config.data.image_size)  # fmt: skip
    assert back["n_bits_x"] == config.data.n_bits and set(back) == set(hps)  # every field the original has


@pytest.mark.parametrize(
    "changes, pattern",
    [({"problem": "imagenet-oord", "image_size": 128}, r"glow_tf has ImageNet at 32 and 64 only"),
     ({"problem": "lsun_realnvp", "category": ""}, r"hps category='' \(problem='lsun_realnvp'\) .*valid LSUN"),
     ({"n_bits_x": 9}, r"hps n_bits_x=9 is not supported: valid values are 1..8"),
     ({"learntop": "yes"}, r"hps learntop='yes' is not supported"),
     ({"weight_y": -1}, r"hps weight_y=-1 is not supported")],
)  # fmt: skip
def test_hps_glow_tf_cannot_represent_are_errors(changes, pattern):
    hps = {**first_line_json(os.path.join(fixture_dir("A"), "train.txt")), **changes}
    with pytest.raises(ValueError, match=pattern):
        openai_hps.config_from_hps(hps)


def test_hps_without_effect_or_equivalent_become_notes():
    changes = {"weight_y": 0.01, "optimizer": "adam", "weight_decay": 0.99, "dal": 2}
    config, notes = openai_hps.config_from_hps(
        {**first_line_json(os.path.join(fixture_dir("A"), "train.txt")), **changes}
    )
    assert config.model.weight_y == 0.0 and not config.model.class_conditional
    text = " ".join(notes)
    for words in ("weight_y=0.01 without ycond has no effect", "optimizer='adam'", "weight_decay=0.99", "dal=2"):
        assert words in text
    assert config.optim.beta2 == pytest.approx(1 - 1 / 3) and config.optim.warmup_images == 12
    assert config.train.per_replica_batch_size == 4 and config.train.backprop == "standard"


def test_a_glow_tf_variable_the_layout_misses_is_named(converted, monkeypatch, tmp_path):
    original = openai_layout._actnorm
    monkeypatch.setattr(openai_layout, "_actnorm", lambda prefix, module: original(prefix, module)[:2])
    with pytest.raises(ValueError, match=r"no original counterpart: levels\.0\.layers\.1\.module\.initialized \[\]"):
        convert.from_openai(fixture_dir("A"), str(tmp_path / "run"), data_name="npz", data_path=converted["A"].npz)


# ----------------------------------------------------------------------------- glow_tf's tools on a converted run
@pytest.mark.slow
def test_glow_tf_tools_work_on_a_converted_run(converted):
    case = converted["A"]
    workdir = case.conv.workdir
    model, config = train_lib.restore_for_inference(workdir)
    assert model.initialized and config_lib.config_to_json(config) == config_lib.config_to_json(case.conv.config)
    bits = model.bits_per_dim(model_inputs(case)).numpy()
    np.testing.assert_allclose(bits, case.expected["bits_per_dim"], rtol=0, atol=1e-5)
    script_config = runpy.run_path(os.path.join(workdir, convert.CONFIG_SCRIPT))["get_config"]()
    assert config_lib.config_to_json(script_config) == config_lib.config_to_json(config)

    result = train_lib.evaluate_checkpoint(workdir)
    held_out = local.held_out_mask([str(i) for i in range(8)], config.data.test_fraction)
    assert result["num_examples"] == held_out.sum() == 1 and result["step"] == 0
    assert abs(result["bits_per_dim"] - case.expected["bits_per_dim"][held_out][0]) < 0.05  # other noise

    inference_model = latent_tools.load_inference_model(workdir)
    samples = inference_model.sample(3, temperature=0.7, seed=1)
    assert samples.shape == (3, 16, 16, 3) and samples.dtype == np.uint8
    images = case.expected["images"]
    np.testing.assert_array_equal(inference_model.decode(inference_model.encode(images)), images)


@pytest.mark.slow
def test_fine_tuning_resumes_from_the_converted_checkpoint(converted):
    case = converted["B"]
    config = config_lib.load_config_json(case.conv.workdir)
    config.train.num_steps = 2
    config.train.log_every = 1
    config.sample.temperatures = (0.7,)
    config.sample.num_samples = 2
    config.sample.num_reconstructions = 1
    trainer = train_lib.Trainer(config, case.conv.workdir)
    assert trainer.restored_from.endswith("ckpt-0") and int(trainer.step.numpy()) == 0
    for a, b in zip(trainer.model.variables, case.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert trainer.initialize() is False  # the actnorm flags are set: no data-dependent init
    assert trainer.train().step == 2
    assert os.path.exists(os.path.join(case.conv.workdir, "checkpoints", "ckpt-2.index"))
    trained, converted_values = (by_step_name(m.trainable_variables) for m in (trainer.model, case.model))
    steps = [np.abs(trained[name] - converted_values[name]).max() for name in converted_values]
    assert sum(s > 0 for s in steps) > 40
    assert max(steps) <= 2 * config.optim.learning_rate * 1.01  # two Adamax steps: no data-dependent init ran
    bits = trainer.model.bits_per_dim(model_inputs(case)).numpy()
    assert bits.mean() < case.expected["bits_per_dim"].mean()  # and they fitted the 7 training images


FRESH_SCRIPT = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("glow_tf", "tensorflow_probability"):
                raise ImportError(name + " is blocked in this process")
    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf
    inputs = np.load(sys.argv[1])
    m = tf.saved_model.load(str(inputs["path"]))
    seed = tf.constant([3, 4], tf.int64)
    latents = m.encode_float(tf.constant(inputs["x"]))
    out = {"bits": m.bits_per_dim_seeded(tf.constant(inputs["images"]), seed)["bits_per_dim"].numpy()}
    out.update({k: v.numpy() for k, v in latents.items()})
    out["blocked"] = np.array("glow_tf" not in sys.modules and "tensorflow_probability" not in sys.modules)
    np.savez(sys.argv[2], **out)
    """
)


def run_children(commands: dict) -> dict:
    """Runs ``{name: (argv, cwd, env)}`` side by side; ``{name: (stdout, stderr, returncode)}``."""
    procs = {
        name: subprocess.Popen(argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (argv, cwd, env) in commands.items()
    }
    results = {}
    for name, proc in procs.items():
        try:
            results[name] = (*proc.communicate(timeout=TIMEOUT), proc.returncode)
        except subprocess.TimeoutExpired:
            proc.kill()
            results[name] = (*proc.communicate(), "timeout")
    return results


@pytest.mark.slow
def test_export_of_a_converted_run_works_without_glow_tf_and_the_cli_reports_errors(converted, root):
    case = converted["A"]
    path = export.export_from_workdir(case.conv.workdir)
    x = model_inputs(case).numpy()
    np.savez(root / "export_in.npz", path=np.array(path), images=case.expected["images"], x=x)
    (root / "fresh.py").write_text(FRESH_SCRIPT)
    cli = [sys.executable, "-m", "glow_tf.convert", f"--openai_logdir={root / 'missing'}", f"--workdir={root / 'x'}"]
    results = run_children(
        {
            "fresh": ([sys.executable, "fresh.py", "export_in.npz", "out.npz"], str(root), clean_env()),
            "cli": (cli, REPO, {**clean_env(), "PYTHONPATH": REPO}),
        }
    )
    assert results["fresh"][2] == 0, results["fresh"][1][-3000:]
    out = np.load(root / "out.npz")
    assert bool(out["blocked"])
    noise_seed = tf.constant([3, 4], tf.int64)
    seeded = quantization.dequantize(quantization.preprocess(case.expected["images"], 8), 8, seed=noise_seed)
    np.testing.assert_allclose(out["bits"], case.model.bits_per_dim(seeded).numpy(), rtol=0, atol=1e-5)
    for i in range(2):  # the exported model gives the original's latents on the original's inputs
        np.testing.assert_allclose(out[f"latent_{i}"], case.expected[f"eps_{i}"], rtol=0, atol=1e-5)

    stdout, stderr, rc = results["cli"]
    assert rc == 1 and "Traceback" not in stderr and not stdout
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("glow_tf.convert: error: The original run's logdir"), stderr
    assert sum(line.startswith("glow_tf.convert") for line in lines) == 1, stderr


def test_cli_converts_both_ways_and_reports_user_errors_in_one_line(converted, root, capsys):
    workdir, logdir = str(root / "cliB"), str(root / "cliB_log")
    args = [f"--openai_logdir={fixture_dir('B')}", f"--workdir={workdir}", "--data_name=npz"]
    assert convert.main([*args, f"--data_path={converted['B'].npz}"]) == 0
    out = capsys.readouterr().out
    assert "Converted" in out and f"--config={workdir}/config.py" in out and "note: Weights" in out
    cases = {
        "already holds a run": [*args, f"--data_path={converted['B'].npz}"],
        "--ema is only for the conversion from the original": ["--to_openai", "--ema", *args[:2]],
        "--problem, --category are only for --to_openai": [*args, "--problem=mnist", "--category=tower"],
        "With --to_openai, --checkpoint is one of": ["--to_openai", *args[:2], "--checkpoint=model_best_loss.ckpt"],
        "data_name='stl10' is not a glow_tf dataset": [*args[:2], "--data_name=stl10"],
    }
    for message, argv in cases.items():
        assert convert.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("glow_tf.convert: error: ") and message in err[0], err
    assert convert.main(["--to_openai", f"--workdir={workdir}", f"--openai_logdir={logdir}"]) == 0
    assert "original-format logdir" in capsys.readouterr().out
    assert first_line_json(os.path.join(logdir, "test.txt"))["flow_coupling"] == 0
