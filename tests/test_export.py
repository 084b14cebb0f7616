"""SavedModel export: signatures, a reload in a fresh process without glow_tf, saved_model_cli, the CLI."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

import glow_tf
from glow_tf import data, export, metrics, quantization, sample, train_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = [3, 4]
TIMEOUT = 240

# Runs in a fresh interpreter, outside the repo, where importing glow_tf (or TFP) fails.
FRESH_SCRIPT = textwrap.dedent(
    """
    import os, sys, json
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("glow_tf", "tensorflow_probability"):
                raise ImportError(f"{name} is blocked in this process")

    sys.meta_path.insert(0, Block())
    try:
        import glow_tf
        blocked = False
    except ImportError:
        blocked = True
    import numpy as np
    import tensorflow as tf

    def error_of(fn):
        try:
            fn()
        except Exception as e:
            return type(e).__name__ + ": " + str(e)[:2000]
        return ""

    inputs = np.load(sys.argv[1])
    out, info = {}, {"blocked": blocked}
    for key in ("uncond", "cond"):
        m = tf.saved_model.load(inputs[key + "_path"].item())
        sig = m.signatures
        images = tf.constant(inputs[key + "_images"])
        extra = {"labels": tf.constant(inputs[key + "_labels"])} if key == "cond" else {}
        largs = list(extra.values())
        seed = tf.constant(inputs["seed"], tf.int64)
        out[key + "_log_prob"] = m.log_prob_seeded(images, seed, *largs)["log_prob"].numpy()
        out[key + "_bits"] = m.bits_per_dim_seeded(images, seed, *largs)["bits_per_dim"].numpy()
        out[key + "_sig_log_prob"] = sig["log_prob"](images=images, **extra)["log_prob"].numpy()
        out[key + "_sig_bits"] = sig["bits_per_dim"](images=images, **extra)["bits_per_dim"].numpy()
        index = tf.constant([7, 1, 0, 3][: len(inputs[key + "_images"])], tf.int64)
        per_level = sig["per_level_bits_per_dim_seeded"](images=images, seed=seed, index=index, **extra)
        for name in ("bits_per_dim", "flow_bits_per_dim", "prior_bits_per_dim"):
            out[f"{key}_per_level_{name}"] = per_level[name].numpy()
        out[key + "_per_level_random"] = sig["per_level_bits_per_dim"](images=images, **extra)["bits_per_dim"].numpy()
        for mode in ("encode", "encode_deterministic"):
            latents = sig[mode](images=images, **extra)
            out[f"{key}_{mode}_back"] = sig["decode"](**latents, **extra)["images"].numpy()
            info[f"{key}_{mode}_latents"] = {k: v.shape.as_list() for k, v in latents.items()}
        shapes = []
        for n in (1, 3, 5):
            labels = {"labels": tf.range(n) % 3} if key == "cond" else {}
            images_n = sig["sample"](num_samples=tf.constant(n), temperature=tf.constant(0.7), **labels)["images"]
            shapes.append([images_n.shape.as_list(), images_n.dtype.name])
        info[key + "_sample_shapes"] = shapes
        n = len(inputs[key + "_images"])
        cold = [sig["sample"](num_samples=tf.constant(n), temperature=tf.constant(0.0), **extra)["images"]]
        cold.append(sig["sample"](num_samples=tf.constant(n), temperature=tf.constant(0.0), **extra)["images"])
        for s in ([1, 2], [5, 6]):
            cold.append(m.sample_seeded(n, 0.0, tf.constant(s, tf.int64), *largs)["images"])
        out[key + "_cold"] = np.stack([c.numpy() for c in cold])
        info[key + "_negative_temperature"] = error_of(
            lambda: sig["sample"](num_samples=tf.constant(n), temperature=tf.constant(-0.5), **extra))
        wrong = np.zeros([1, 8, 8, 3 if images.shape[-1] == 1 else 1], np.uint8)
        info[key + "_wrong_channels"] = error_of(lambda: sig["encode"](images=tf.constant(wrong), **extra))
        info[key + "_meta"] = [m.image_shape.numpy().tolist(), int(m.n_bits.numpy()), int(m.num_classes.numpy())]
    info["tfp_loaded"] = "tensorflow_probability" in sys.modules
    np.savez(sys.argv[2], **out)
    with open(sys.argv[3], "w") as f:
        json.dump(info, f)
    """
)


def clean_env():
    """Environment of a child process that cannot see the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    """An unconditional 8x8x3 5-bit model and a class-conditional 8x8x1 8-bit model, exported."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(1)
    out = {}
    for key, shape, n_bits, classes in (("uncond", [8, 8, 3], 5, 0), ("cond", [8, 8, 1], 8, 3)):
        model = tiny_model(shape, n_bits, classes)
        path = export.export_model(model, str(root / key), metadata={"note": key})
        images = rng.integers(0, 256, [4, *shape]).astype(np.uint8)
        labels = np.array([0, 2, 1, 2], np.int32)
        out[key] = types.SimpleNamespace(model=model, path=path, images=images, labels=labels if classes else None)
    return types.SimpleNamespace(root=root, **out)


@pytest.fixture(scope="module")
def children(exported):
    """Fresh processes, started together: the reload without glow_tf, saved_model_cli show/run, the export CLI."""
    root = exported.root
    arrays = {}
    for key in ("uncond", "cond"):
        arrays[f"{key}_path"] = np.array(getattr(exported, key).path)
        arrays[f"{key}_images"] = getattr(exported, key).images
    arrays["cond_labels"] = exported.cond.labels
    arrays["seed"] = np.array(SEED, np.int64)
    np.savez(root / "inputs.npz", **arrays)
    (root / "fresh.py").write_text(FRESH_SCRIPT)
    (root / "empty_run").mkdir()
    commands = {
        "fresh": [sys.executable, str(root / "fresh.py"), str(root / "inputs.npz"), str(root / "out.npz"), "info"],
        "show": ["saved_model_cli", "show", "--dir", exported.uncond.path, "--all"],
        "run": [
            *("saved_model_cli", "run", "--dir", exported.uncond.path, "--tag_set", "serve"),
            *("--signature_def", "sample", "--input_exprs", "num_samples=3;temperature=0.7"),
            *("--outdir", str(root / "cli_out")),
        ],
        "export_cli": [sys.executable, "-m", "glow_tf.export", f"--workdir={root / 'empty_run'}"],
    }
    commands["fresh"][-1] = str(root / "info.json")
    procs = {}
    for name, cmd in commands.items():
        env = clean_env() if name != "export_cli" else {**clean_env(), "PYTHONPATH": REPO}
        cwd = str(root) if name != "export_cli" else REPO
        procs[name] = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        results[name] = types.SimpleNamespace(rc=proc.returncode, stdout=stdout, stderr=stderr)
    assert results["fresh"].rc == 0, results["fresh"].stderr[-3000:]
    results["out"] = dict(np.load(root / "out.npz"))
    results["info"] = json.loads((root / "info.json").read_text())
    return results


def live_seeded(model, images, labels, n_bits):
    """The live model's log_prob and bits/dim with the dequantisation noise of seed ``SEED``."""
    x = quantization.dequantize(quantization.preprocess(images, n_bits), n_bits, seed=tf.constant(SEED, tf.int64))
    labels = None if labels is None else tf.constant(labels)
    return model.log_prob(x, labels).numpy(), model.bits_per_dim(x, labels).numpy()


@pytest.mark.slow
def test_fresh_process_cannot_import_glow_tf_or_tfp(children):
    assert children["info"]["blocked"] is True
    assert children["info"]["tfp_loaded"] is False


@pytest.mark.slow
@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_reloaded_log_prob_and_bits_per_dim_equal_the_live_model(exported, children, key):
    case = getattr(exported, key)
    log_prob, bits = live_seeded(case.model, case.images, case.labels, case.model.n_bits)
    np.testing.assert_allclose(children["out"][f"{key}_log_prob"], log_prob, rtol=1e-5)
    np.testing.assert_allclose(children["out"][f"{key}_bits"], bits, rtol=1e-5)
    # The unseeded signatures draw their own noise: within one bin of the seeded values, not equal to them.
    np.testing.assert_allclose(children["out"][f"{key}_sig_bits"], bits, rtol=0.05)
    assert np.isfinite(children["out"][f"{key}_sig_log_prob"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_reloaded_per_level_bits_per_dim_equal_the_live_model(exported, children, key):
    case = getattr(exported, key)
    index = tf.constant([7, 1, 0, 3], tf.int64)
    x = data.keyed_model_inputs(case.images, case.model.n_bits, tf.constant(SEED, tf.int64), index)
    labels = None if case.labels is None else tf.constant(case.labels)
    terms = case.model.log_prob_terms(x, labels)
    shape, out = case.model.image_shape, children["out"]
    np.testing.assert_allclose(out[f"{key}_per_level_bits_per_dim"], case.model.bits_per_dim(x, labels), rtol=1e-5)
    flow, prior = out[f"{key}_per_level_flow_bits_per_dim"], out[f"{key}_per_level_prior_bits_per_dim"]
    np.testing.assert_allclose(flow, metrics.term_bits_per_dim(terms["flow_log_det"], shape), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prior, metrics.term_bits_per_dim(terms["prior_log_prob"], shape), rtol=1e-5, atol=1e-6)
    assert flow.shape == prior.shape == (4, case.model.num_levels)
    total = case.model.n_bits + flow.sum(1) + prior.sum(1)
    np.testing.assert_allclose(total, out[f"{key}_per_level_bits_per_dim"], atol=1e-4)
    np.testing.assert_allclose(out[f"{key}_per_level_random"], out[f"{key}_per_level_bits_per_dim"], rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["uncond", "cond"])
@pytest.mark.parametrize("mode", ["encode", "encode_deterministic"])
def test_decode_of_encode_reproduces_the_images(exported, children, key, mode):
    case = getattr(exported, key)
    expected = quantization.postprocess(quantization.preprocess(case.images, case.model.n_bits), case.model.n_bits)
    back, expected = children["out"][f"{key}_{mode}_back"].astype(int), expected.numpy().astype(int)
    if mode == "encode_deterministic":
        np.testing.assert_array_equal(back, expected)
    else:  # dequantisation noise within float error of a bin's upper edge may round up: rare, one bin at most
        step = 2 ** (8 - case.model.n_bits)
        assert np.abs(back - expected).max() <= step and np.mean(back != expected) < 0.01
    shapes = {f"latent_{i}": [4, *s] for i, s in enumerate(case.model.latent_shapes)}
    assert children["info"][f"{key}_{mode}_latents"] == shapes


@pytest.mark.slow
@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_sample_shapes_dtypes_and_cold_determinism(exported, children, key):
    case = getattr(exported, key)
    shape = list(case.model.image_shape)
    assert children["info"][f"{key}_sample_shapes"] == [[[n, *shape], "uint8"] for n in (1, 3, 5)]
    cold = children["out"][f"{key}_cold"]
    for other in cold[1:]:
        np.testing.assert_array_equal(other, cold[0])  # T = 0: no noise, whatever the seed
    labels = None if case.labels is None else tf.constant(case.labels)
    live = quantization.postprocess(case.model.sample(len(case.images), 0.0, labels), case.model.n_bits).numpy()
    assert np.mean(live != cold[0]) < 0.01  # the chain of means (a rare pixel may round across a bin edge)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["uncond", "cond"])
def test_in_graph_errors_are_clear(children, key):
    assert "temperature must be >= 0" in children["info"][f"{key}_negative_temperature"]
    assert children["info"][f"{key}_wrong_channels"]  # a [1, 8, 8, C'] batch is refused by the signature


@pytest.mark.slow
def test_metadata_variables_and_file(exported, children):
    assert children["info"]["uncond_meta"] == [[8, 8, 3], 5, 0]
    assert children["info"]["cond_meta"] == [[8, 8, 1], 8, 3]
    with open(os.path.join(exported.cond.path, "assets.extra", export.METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["note"] == "cond" and meta["latent_shapes"] == [[4, 4, 2], [2, 2, 8]]
    assert meta["signatures"] == list(export.SIGNATURES)


@pytest.mark.slow
def test_saved_model_cli_show_lists_the_signatures(children):
    show = children["show"]
    assert show.rc == 0, show.stderr[-2000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in show.stdout
    for name in ("images", "latent_0", "latent_1", "num_samples", "temperature", "log_prob", "bits_per_dim"):
        assert f"['{name}'] tensor_info" in show.stdout
    assert "shape: (-1, 8, 8, 3)" in show.stdout and "DT_UINT8" in show.stdout


@pytest.mark.slow
def test_saved_model_cli_run_samples_images(exported, children):
    run = children["run"]
    assert run.rc == 0, run.stderr[-2000:]
    images = np.load(exported.root / "cli_out" / "images.npy")
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8


@pytest.mark.slow
def test_export_cli_reports_a_missing_run_clearly(children):
    cli = children["export_cli"]
    assert cli.rc == 1
    assert "glow_tf.export: error:" in cli.stderr and "config" in cli.stderr.lower()


@pytest.mark.slow
def test_export_refuses_bad_arguments(exported, tmp_path):
    model = glow_tf.Glow([8, 8, 1], num_levels=2, num_steps=1, hidden_width=4)
    with pytest.raises(ValueError, match="uninitialised"):
        export.export_model(model, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="n_bits=4 differs"):
        export.export_model(exported.uncond.model, str(tmp_path / "b"), n_bits=4)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a SavedModel"):
        export.export_model(exported.uncond.model, str(tmp_path / "c"))
    assert (tmp_path / "c" / "notes.txt").exists()
    with pytest.raises(FileExistsError, match="overwrite"):
        export.export_model(exported.uncond.model, exported.uncond.path, overwrite=False)


@pytest.mark.slow
def test_in_process_module_matches_the_model(exported):
    case = exported.uncond
    module = export.build_export_module(case.model)
    latents = module.encode_deterministic(tf.constant(case.images))
    x = quantization.preprocess(case.images, 5) + 0.5 / 32
    for i, eps in enumerate(case.model.encode(x)):
        np.testing.assert_allclose(latents[f"latent_{i}"].numpy(), eps.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be >= 0"):
        module.sample(tf.constant(2), tf.constant(-1.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"permutation": "invconv", "lu_decomposed": True, "coupling": "affine", "num_classes": 3},
        {"permutation": "shuffle", "coupling": "additive"},
    ],
    ids=["lu_affine_conditional", "shuffle_additive"],
)
def test_saved_stacked_step_weights_give_the_live_variables_results_bit_for_bit(tiny_model, tmp_path, kwargs):
    """The export holds one [K, ...] variable per weight of a level's step; every function's results are unchanged."""
    classes = kwargs.pop("num_classes", 0)
    model = tiny_model([8, 8, 3], 5, classes, num_steps=3, **kwargs)
    live = export.build_export_module(model)
    path = export.export_model(model, str(tmp_path / "export"))
    loaded = tf.saved_model.load(path)

    per_step = len(model.levels[0].flow.step_weights(0))
    assert [len(level) for level in loaded.stacked_step_weights] == [per_step] * model.num_levels
    assert all(v.shape[0] == 3 for level in loaded.stacked_step_weights for v in level)
    outside = [v for v in model.variables if "step" not in v.name]
    assert len(loaded.model_variables) == len(outside) > 0
    saved = len(loaded.model_variables) + model.num_levels * per_step
    assert saved < len(model.variables) // 2

    rng = np.random.default_rng(5)
    images = tf.constant(rng.integers(0, 256, [4, 8, 8, 3]).astype(np.uint8))
    labels = [tf.constant([0, 2, 1, 2], tf.int32)] if classes else []
    sample_labels = [labels[0][:3]] if classes else []
    seed = tf.constant(SEED, tf.int64)
    x = quantization.preprocess(images, 5) + 1 / 64
    pairs = {
        "terms": lambda m: m.log_prob_terms_float(x, *labels),
        "encode": lambda m: m.encode_float(x, *labels),
        "sample": lambda m: m.sample_seeded(tf.constant(3), tf.constant(0.8), seed, *sample_labels),
        "bits": lambda m: m.bits_per_dim_seeded(images, seed, *labels),
        "per_level": lambda m: m.per_level_bits_per_dim_seeded(images, seed, tf.range(4, dtype=tf.int64), *labels),
    }
    for name, call in pairs.items():
        expected, got = call(live), call(loaded)
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=f"{name}: {key}")
    latents = live.encode_float(x, *labels)
    decoded = loaded.decode(*(latents[n] for n in export.latent_names(model.num_levels)), *labels)
    expected = live.decode(*(latents[n] for n in export.latent_names(model.num_levels)), *labels)
    np.testing.assert_array_equal(decoded["images"].numpy(), expected["images"].numpy())


# ------------------------------------------------------------- a real training run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, test_config):
    """Two steps of configs/test.py (EMA on) with the real trainer."""
    config = test_config(**{"train.num_steps": 2, "sample.temperatures": (0.7,)})
    workdir = str(tmp_path_factory.mktemp("run"))
    trainer = train_lib.Trainer(config, workdir)
    trainer.train()
    return types.SimpleNamespace(workdir=workdir, trainer=trainer, config=config)


@pytest.mark.slow
def test_export_from_a_training_run_uses_the_ema_weights(trained):
    assert export.main([f"--workdir={trained.workdir}", "--checkpoint=latest"]) == 0
    path = os.path.join(trained.workdir, "export", "latest")
    loaded = tf.saved_model.load(path)
    images = np.random.default_rng(0).integers(0, 256, [5, 8, 8, 1]).astype(np.uint8)
    exported_bits = loaded.bits_per_dim_seeded(images, tf.constant(SEED, tf.int64))["bits_per_dim"].numpy()
    ema_model, _ = train_lib.restore_for_inference(trained.workdir, "latest")
    np.testing.assert_allclose(exported_bits, live_seeded(ema_model, images, None, 4)[1], rtol=1e-5)
    raw_bits = live_seeded(trained.trainer.model, images, None, 4)[1]
    assert np.max(np.abs(raw_bits - exported_bits)) > 1e-4  # the raw weights are not what was exported
    with open(os.path.join(path, "assets.extra", export.METADATA_FILE)) as f:
        meta = json.load(f)
    assert meta["ema_weights"] is True and meta["step"] == 2 and meta["config"]["data"]["n_bits"] == 4


@pytest.mark.slow
def test_export_cli_errors(trained, tmp_path, capsys):
    assert export.main([f"--workdir={tmp_path / 'missing'}"]) == 1
    assert "does not exist" in capsys.readouterr().err
    os.makedirs(tmp_path / "run")
    with open(os.path.join(trained.workdir, "config.json")) as src, open(tmp_path / "run" / "config.json", "w") as dst:
        dst.write(src.read())
    assert export.main([f"--workdir={tmp_path / 'run'}", "--checkpoint=best"]) == 1
    assert "No 'best' checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_sampling_tools_work_from_a_training_run(trained, tmp_path):
    argv = ["sample-grids", f"--model={trained.workdir}", "--checkpoint=best", f"--out_dir={tmp_path}"]
    assert sample.main([*argv, "--temperatures=0,1", "--num_samples=4"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["samples_T0.00.png", "samples_T1.00.png"]
    grid = tf.io.decode_png(tf.io.read_file(str(tmp_path / "samples_T1.00.png"))).numpy()
    assert grid.shape == (1 + 2 * 9, 1 + 2 * 9, 1) and grid.std() > 0


@pytest.mark.slow
def test_bfloat16_sharded_model_exports_a_plain_bfloat16_graph(tmp_path, tiny_model):
    """A mixed-precision model with batch slices exports and reloads; slices are a tracing-time setting only."""
    model = tiny_model([8, 8, 3], 5)
    bf16 = glow_tf.Glow(
        [8, 8, 3], num_levels=2, num_steps=2, hidden_width=8, learn_top=True, n_bits=5, compute_dtype="bfloat16"
    )
    for source, target in zip(model.variables, bf16.variables):
        target.assign(source)
    bf16.batch_shards = 2
    path = export.export_model(bf16, str(tmp_path / "bf16"))
    assert bf16.batch_shards == 2  # restored after tracing
    loaded = tf.saved_model.load(path)
    images = np.random.default_rng(0).integers(0, 256, [3, 8, 8, 3]).astype(np.uint8)
    x = quantization.dequantize(quantization.preprocess(images, 5), 5, seed=tf.constant(SEED, tf.int64))
    exported_log_prob = loaded.log_prob_seeded(tf.constant(images), tf.constant(SEED, tf.int64))["log_prob"]
    bf16.batch_shards = 1  # the exported graph is the plain one; in a graph, bfloat16 rounding depends on op fusion
    live = tf.function(bf16.log_prob)(x)
    np.testing.assert_allclose(exported_log_prob.numpy(), live.numpy(), rtol=1e-5)
    # bfloat16 networks: close to the float32 model, not equal to it
    difference = np.abs(exported_log_prob.numpy() - model.log_prob(x).numpy())
    assert 0 < difference.max() < 0.01 * 8 * 8 * 3 * np.log(2.0)
    samples = loaded.signatures["sample"](num_samples=tf.constant(3), temperature=tf.constant(0.7))["images"]
    assert samples.shape == (3, 8, 8, 3) and samples.dtype == tf.uint8
