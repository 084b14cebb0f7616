"""Likelihood scoring: per-level decomposition, seeded per-image noise, CSV, AUROC, typicality, sources, CLI."""

import csv
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import config_lib, data, export, latent_tools, metrics, score, scoring, summaries
from glow_tf.latent_tools import InferenceModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
    """A full run config whose data is scikit-learn's digits at 8x8x1 (what the tiny model takes)."""
    config = config_lib.default_config()
    config.data.name, config.data.image_size, config.data.channels, config.data.n_bits = "digits", 8, 1, 8
    return config


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    """A tiny 8x8x1 8-bit model live and exported (with its run config), and the export's folder."""
    root = tmp_path_factory.mktemp("scoring")
    model = tiny_model([8, 8, 1], 8)
    config = digits_config()
    meta = {"config": json.loads(config_lib.config_to_json(config))}
    path = export.export_model(model, str(root / "saved"), metadata=meta)
    rng = np.random.default_rng(0)
    npz = str(root / "gray.npz")
    np.savez(npz, images=rng.integers(0, 256, [30, 8, 8, 1]).astype(np.uint8), labels=np.arange(30) % 10)
    return types.SimpleNamespace(
        root=root,
        glow=model,
        path=path,
        npz=npz,
        live=InferenceModel.from_model(model, data_config=config.data),
        saved=latent_tools.load_inference_model(path),
        images=rng.integers(0, 256, [6, 8, 8, 1]).astype(np.uint8),
    )


# ------------------------------------------------------------------ the decomposition
@pytest.mark.parametrize("which", ["live", "saved"])
def test_per_level_terms_sum_to_the_total(models, which):
    out = getattr(models, which).per_level_bits_per_dim(models.images, seed=4)
    assert out["flow_bits_per_dim"].shape == out["prior_bits_per_dim"].shape == (6, 2)
    total = 8 + out["flow_bits_per_dim"].sum(1) + out["prior_bits_per_dim"].sum(1)
    np.testing.assert_allclose(total, out["bits_per_dim"], atol=1e-4)
    for i in range(2):  # no term may be dropped: each one moves the total by far more than the tolerance
        assert (
            np.abs(out["flow_bits_per_dim"][:, i]).min() > 1e-3 and np.abs(out["prior_bits_per_dim"][:, i]).min() > 1e-3
        )


def test_per_level_terms_are_those_of_the_model(models):
    x = data.keyed_model_inputs(models.images, 8, data.noise_seed(4, 0), tf.range(6, dtype=tf.int64))
    terms = models.glow.log_prob_terms(x)
    out = models.live.per_level_bits_per_dim(models.images, seed=4)
    np.testing.assert_allclose(out["bits_per_dim"], models.glow.bits_per_dim(x), rtol=1e-6)
    # The module's graph and the eager model round differently (grappler and oneDNN fuse ops): float32 tolerance.
    flow, prior = (metrics.term_bits_per_dim(terms[k], [8, 8, 1]) for k in ("flow_log_det", "prior_log_prob"))
    np.testing.assert_allclose(out["flow_bits_per_dim"], flow, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["prior_bits_per_dim"], prior, rtol=1e-6, atol=1e-6)


def test_live_and_saved_models_score_identically(models):
    live = models.live.per_level_bits_per_dim(models.images, seed=2, index=[5, 9, 1, 0, 3, 7])
    saved = models.saved.per_level_bits_per_dim(models.images, seed=2, index=[5, 9, 1, 0, 3, 7])
    for name in live:
        np.testing.assert_allclose(live[name], saved[name], rtol=1e-5, atol=1e-6)
    fresh = models.saved.per_level_bits_per_dim(models.images)  # unseeded: its own noise, within a bin of it
    np.testing.assert_allclose(fresh["bits_per_dim"], saved["bits_per_dim"], rtol=0.05)
    assert models.saved.per_level_bits_per_dim(models.images[:0], seed=1)["flow_bits_per_dim"].shape == (0, 2)


def test_stacked_step_weights_in_process_give_the_same_numbers_bit_for_bit(models):
    """What load_inference_model does for a workdir: a copy of the step weights stacked per level."""
    stacked = InferenceModel.from_model(models.glow, stack_step_weights=True)
    live, got = models.live, stacked
    for name, want in live.per_level_bits_per_dim(models.images, seed=2).items():
        np.testing.assert_array_equal(got.per_level_bits_per_dim(models.images, seed=2)[name], want)
    np.testing.assert_array_equal(got.sample(5, 0.8, seed=3), live.sample(5, 0.8, seed=3))
    latents = live.encode(models.images)
    for a, b in zip(got.encode(models.images), latents):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.decode(latents), live.decode(latents))


def test_noise_is_keyed_by_the_image_index_alone(models):
    source = scoring.open_source(f"npz:{models.npz}", models.saved)
    a = scoring.score_source(models.saved, source, batch_size=7, seed=3, progress=False)
    b = scoring.score_source(models.saved, source, batch_size=30, seed=3, progress=False)
    np.testing.assert_array_equal(a.bits_per_dim, b.bits_per_dim)
    assert a.keys == tuple(str(i) for i in range(30)) and a.labels.tolist() == [i % 10 for i in range(30)]
    other = scoring.score_source(models.saved, source, batch_size=30, seed=4, progress=False)
    assert not np.allclose(other.bits_per_dim, a.bits_per_dim)
    images = np.load(models.npz)["images"]
    one = models.saved.per_level_bits_per_dim(images[12:13], seed=3, index=[12])["bits_per_dim"]
    np.testing.assert_allclose(one, a.bits_per_dim[12:13], rtol=1e-6)  # the same image alone, by its index


def test_k_draws_average_the_bits_per_dim(models):
    three = scoring.score_images(models.saved, models.images, seed=1, num_draws=3)
    draws = [models.saved.per_level_bits_per_dim(models.images, seed=1, draw=k) for k in range(3)]
    for name in three:
        np.testing.assert_allclose(three[name], np.mean([d[name] for d in draws], axis=0), rtol=1e-6)
    assert not np.allclose(draws[0]["bits_per_dim"], draws[1]["bits_per_dim"])
    total = 8 + three["flow_bits_per_dim"].sum(1) + three["prior_bits_per_dim"].sum(1)
    np.testing.assert_allclose(total, three["bits_per_dim"], atol=1e-4)
    with pytest.raises(ValueError, match="num_draws must be a positive integer"):
        scoring.score_images(models.saved, models.images, num_draws=0)


def test_csv_has_one_row_per_image_whose_columns_add_up(models, tmp_path):
    source = scoring.open_source(f"npz:{models.npz}:test", models.saved)
    scores = scoring.score_source(models.saved, source, batch_size=2, progress=False)
    path = scores.write_csv(str(tmp_path / "sub" / "s.csv"))
    with open(path) as f:
        rows = list(csv.reader(f))
    header = ["file_or_index", "label", "bits_per_dim", "n_bits", "level0_flow", "level0_prior", "level1_flow"]
    assert rows[0] == [*header, "top_prior"]
    assert len(rows) - 1 == scores.num_images == data.dataset_info(data_cfg("npz", path=models.npz)).num_test == 3
    for row in rows[1:]:
        values = [float(v) for v in row[2:]]
        assert abs(values[0] - sum(values[1:])) < 1e-4 and values[1] == 8.0
    np.testing.assert_allclose([float(r[2]) for r in rows[1:]], scores.bits_per_dim, atol=1e-6)


def data_cfg(name, **fields):
    cfg = data.default_config()
    cfg.name = name
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def test_level_table_lists_the_mean_columns(models):
    scores = scoring.score_source(models.saved, scoring.open_source("digits:test", models.saved), 128, progress=False)
    table = scoring.level_table([scores]).splitlines()
    assert table[0].split() == ["source", "images", "bits_per_dim", *scoring.level_columns(2)]
    assert table[1].split()[:2] == ["digits:test", "297"]
    assert float(table[1].split()[2]) == pytest.approx(scores.bits_per_dim.mean(), abs=1e-4)


def test_an_old_export_without_the_signature_is_explained(models):
    module = types.SimpleNamespace(
        **{k: getattr(models.saved._module, k) for k in ("image_shape", "latent_shapes", "n_bits", "num_classes")}
    )
    old = InferenceModel(module, "old/export")
    with pytest.raises(ValueError, match="old/export was exported before per-level bits/dim existed; export"):
        old.per_level_bits_per_dim(models.images)


# ------------------------------------------------------------------ OOD statistics
def test_auroc_against_a_hand_computation():
    # OOD 2 beats in-dist 1, ties 2, loses to 3 -> 1.5; OOD 4 beats all three -> 3; AUROC = 4.5 / (2 * 3).
    assert scoring.auroc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)
    assert scoring.auroc([1.0, 2.0], [3.0, 4.0]) == 1.0
    assert scoring.auroc([3.0, 4.0], [1.0, 2.0]) == 0.0  # OOD more likely than in-distribution: < 0.5
    assert scoring.auroc([1.0, 1.0], [1.0]) == 0.5
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 50).astype(float), rng.integers(2, 9, 40).astype(float)  # many ties
    expected = roc_auc_score(np.r_[np.zeros(50), np.ones(40)], np.r_[a, b])
    assert scoring.auroc(a, b) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="both sets"):
        scoring.auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        scoring.auroc([np.nan], [1.0])


def test_typicality_scores_by_hand():
    bits = np.array([1.0, 3.0, 5.0, 7.0, 100.0])
    scores = scoring.typicality_scores(bits, 2.0, batch_size=1, seed=0)
    np.testing.assert_allclose(np.sort(scores), [1.0, 1.0, 3.0, 5.0, 98.0])
    pairs = scoring.typicality_scores(bits, 2.0, batch_size=2, seed=0)  # 2 batches, one image left out
    order = np.random.default_rng(0).permutation(5)
    expected = np.abs(bits[order[:4]].reshape(2, 2).mean(1) - 2.0)
    np.testing.assert_allclose(pairs, expected)
    with pytest.raises(ValueError, match="exceeds the 5 scored images"):
        scoring.typicality_scores(bits, 2.0, batch_size=6)


def fake_scores(name, values, levels=2):
    values = np.asarray(values, np.float64)
    flow = np.zeros([len(values), levels])
    prior = np.tile((values[:, None] - 8.0) / levels, [1, levels])
    return scoring.Scores(
        name, tuple(map(str, range(len(values)))), np.zeros(len(values), np.int32), values, flow, prior, 8
    )


def test_compare_reports_both_aurocs_and_flags_a_more_likely_ood_set():
    rng = np.random.default_rng(1)
    in_dist = fake_scores("in", rng.normal(3.0, 0.3, 200))
    train = fake_scores("train", rng.normal(3.0, 0.3, 200))
    simpler = fake_scores("simpler", rng.normal(2.5, 0.05, 200))  # lower bits/dim: more likely, narrower
    wider = fake_scores("wider", rng.normal(4.0, 0.3, 200))
    results = scoring.compare(in_dist, [simpler, wider], train, typicality_batch=10)
    by_name = {r["source"]: r for r in results["ood"]}
    assert by_name["simpler"]["auroc_bits_per_dim"] < 0.05 and by_name["simpler"]["ood_more_likely"]
    assert by_name["wider"]["auroc_bits_per_dim"] > 0.95 and not by_name["wider"]["ood_more_likely"]
    assert by_name["simpler"]["typicality"]["auroc"] > 0.95  # the typicality test catches the more likely set
    assert by_name["simpler"]["typicality"]["batches_ood"] == 20
    assert results["typicality"]["train_mean_bits_per_dim"] == pytest.approx(train.bits_per_dim.mean())
    assert results["in_distribution"]["per_level_means"]["level1_flow"] == 0.0
    json.dumps(results)  # JSON-ready


def test_histogram_png_is_a_readable_figure(tmp_path):
    rng = np.random.default_rng(0)
    path = scoring.histogram_png(
        str(tmp_path / "h.png"), {"mnist": rng.normal(2, 0.2, 300), "digits": rng.normal(1.5, 0.1, 100)}, "t"
    )
    image = tf.io.decode_png(tf.io.read_file(path)).numpy()
    assert image.shape[0] > 300 and image.shape[1] > 600
    rgb = image[..., :3].reshape(-1, 3).astype(int)
    blue = ((rgb[:, 2] - rgb[:, 0] > 80) & (rgb[:, 2] > 150)).sum()
    red = ((rgb[:, 0] - rgb[:, 2] > 80) & (rgb[:, 0] > 150)).sum()
    assert blue > 500 and red > 500  # two colours drawn
    with pytest.raises(ValueError, match="non-empty"):
        scoring.histogram_png(str(tmp_path / "e.png"), {"a": []})


# ------------------------------------------------------------------ sources
@pytest.mark.parametrize(
    "text, match",
    [
        (
            "imagenet1k:test",
            r"Unknown source 'imagenet1k:test'; valid: NAME\[:train\|test\] \(NAME one of digits, mnist",
        ),
        ("mnist:validation", r"unknown split 'validation'"),
        ("npz:", r"names no file"),
        ("files:", r"names no files"),
    ],
)
def test_parse_source_errors(text, match):
    with pytest.raises(ValueError, match=match):
        scoring.parse_source(text)


def test_parse_source_forms():
    assert scoring.parse_source("svhn") == scoring.SourceSpec("svhn", "svhn", "test")
    assert scoring.parse_source("npz:/a/b.npz:train").path == "/a/b.npz"
    assert scoring.parse_source("npz:/a/b.npz").split == "all"
    assert scoring.parse_source("folder:/x:y/z").path == "/x:y/z"
    assert scoring.parse_source("files:a.png,b.png").files == ("a.png", "b.png")
    assert scoring.parse_source("run:train").split == "train"


def test_sources_that_do_not_fit_are_rejected_in_one_line(models, tmp_path):
    big = tmp_path / "big.npz"
    np.savez(big, images=np.zeros([3, 4, 4, 1], np.uint8))
    with pytest.raises(ValueError, match=r"are 4x4, smaller than image_size=8"):
        scoring.open_source(f"npz:{big}", models.saved)
    png = summaries.write_png(str(tmp_path / "a.png"), np.zeros([16, 16, 1], np.uint8))
    source = scoring.open_source(f"files:{png}", models.saved)
    with pytest.raises(ValueError, match=r"image is 16x16, the model takes 8x8"):
        scoring.score_source(models.saved, source, progress=False)
    assert scoring.score_source(models.saved, scoring.open_source(f"files:{png}", models.saved, resize=True)).keys == (
        png,
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"contains no images"):
        scoring.open_source(f"folder:{tmp_path / 'empty'}", models.saved)
    with pytest.raises(FileNotFoundError, match="No image file"):
        scoring.open_source("files:missing.png", models.saved)
    bare = InferenceModel(models.saved._module, "bare")
    with pytest.raises(ValueError, match="records no training config"):
        scoring.open_source("run:test", bare)


def test_conversions_are_noted(models, tmp_path):
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.random.default_rng(0).integers(0, 256, [4, 12, 12, 3]).astype(np.uint8))
    source = scoring.open_source(f"npz:{rgb}", models.saved)
    assert source.notes == (
        f"npz:{rgb}: the stored images are 12x12x3, the model takes 8x8x1: converted 12x12 -> 8x8 (padded, "
        "cropped and/or resized as the training pipeline does); RGB -> grayscale (ITU-R 601 luma).",
    )
    assert scoring.open_source(f"npz:{models.npz}", models.saved).notes == ()


def test_folder_source_keys_are_relative_paths(models, tmp_path):
    for name in ("b.png", "a/c.png"):
        summaries.write_png(str(tmp_path / "imgs" / name), np.full([8, 8, 1], 9, np.uint8))
    scores = scoring.score_source(models.saved, scoring.open_source(f"folder:{tmp_path / 'imgs'}", models.saved))
    assert scores.keys == ("a/c.png", "b.png")
    np.testing.assert_allclose(scores.bits_per_dim[0], scores.bits_per_dim[1], atol=0.5)  # same image, other noise


def test_run_source_is_the_models_training_data(models):
    run = scoring.score_source(models.saved, scoring.open_source("run:test", models.saved), 128, progress=False)
    named = scoring.score_source(models.saved, scoring.open_source("digits:test", models.saved), 128, progress=False)
    np.testing.assert_array_equal(run.bits_per_dim, named.bits_per_dim)
    assert run.num_images == 297 and run.labels[:3].tolist() == named.labels[:3].tolist()


def test_tfds_source_through_mock_data_notes_the_conversion(models):
    with tfds.testing.mock_data(num_examples=5):
        source = scoring.open_source("svhn:test", models.saved)
        scores = scoring.score_source(models.saved, source, progress=False)
    assert source.notes[0].startswith("svhn:test: the stored images are 32x32x3, the model takes 8x8x1")
    assert scores.num_images == 5 and np.isfinite(scores.bits_per_dim).all()


# ------------------------------------------------------------------ the CLI
@pytest.mark.slow
def test_cli_per_image_and_compare(models, tmp_path, capsys):
    out = str(tmp_path / "scores.csv")
    assert score.main(["per-image", f"--model={models.path}", "--source=digits:test", f"--out={out}", "--seed=5"]) == 0
    text = capsys.readouterr()
    assert f"wrote {out}" in text.out and "scoring digits:test: 297/297 images" in text.err and "images/s" in text.err
    with open(out) as f:
        rows = list(csv.DictReader(f))
    api = scoring.score_source(models.saved, scoring.open_source("digits:test", models.saved), seed=5, progress=False)
    assert len(rows) == 297 and float(rows[10]["bits_per_dim"]) == pytest.approx(api.bits_per_dim[10], abs=1e-5)
    pngs = [summaries.write_png(str(tmp_path / f"{i}.png"), models.images[i]) for i in range(2)]
    assert score.main(["per-image", f"--model={models.path}", "--files", *pngs, f"--out={out}"]) == 0
    with open(out) as f:
        assert [r["file_or_index"] for r in csv.DictReader(f)] == pngs
    argv = ["compare", f"--model={models.path}", f"--ood_source=npz:{models.npz}", f"--out_dir={tmp_path / 'cmp'}"]
    assert score.main([*argv, "--train_examples=100", "--typicality_batch=5"]) == 0
    printed = capsys.readouterr().out
    assert "AUROC bits/dim" in printed and "typicality AUROC" in printed and "level0_flow" in printed
    results = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert results["in_distribution"]["source"] == "run:test" and results["typicality"]["train_images"] == 100
    assert 0.0 <= results["ood"][0]["auroc_bits_per_dim"] <= 1.0 and results["ood"][0]["images"] == 30
    assert sorted(os.listdir(tmp_path / "cmp")) == [
        "compare.json",
        "histogram.png",
        "in_run_test.csv",
        "ood_gray.npz.csv",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["per-image", "--source=svhm", "--out=x.csv"], "Unknown source 'svhm'"),
        (["per-image", "--source=folder:EMPTY", "--out=x.csv"], "contains no images"),
        (["per-image", "--source=npz:SMALL", "--out=x.csv"], "smaller than image_size=8"),
        (["per-image", "--files", "BIG", "--out=x.csv"], "image is 16x16, the model takes 8x8"),
        (["per-image", "--out=x.csv"], "either --source=SPEC or --files"),
        (["compare", "--ood_source=digits", "--out_dir=o", "--typicality_batch=0"], "typicality_batch must be"),
    ],
)
def test_cli_mistakes_are_one_line(models, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    np.savez(tmp_path / "small.npz", images=np.zeros([2, 4, 4], np.uint8))
    big = summaries.write_png(str(tmp_path / "big.png"), np.zeros([16, 16, 1], np.uint8))
    swap = {"EMPTY": str(tmp_path / "empty"), "SMALL": str(tmp_path / "small.npz"), "BIG": big}
    args = [next((a.replace(k, v) for k, v in swap.items() if k in a), a) for a in args]
    args = [a.replace("x.csv", str(tmp_path / "x.csv")).replace("=o", f"={tmp_path / 'o'}") for a in args]
    assert score.main([args[0], f"--model={models.path}", *args[1:]]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"glow_tf.score {args[0]}: error: ") and message in err[0], err


@pytest.mark.slow
def test_python_m_glow_tf_score_runs(models, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = str(tmp_path / "s.csv")
    cmd = [sys.executable, "-m", "glow_tf.score", "per-image", f"--model={models.path}", f"--source=npz:{models.npz}"]
    proc = subprocess.run([*cmd, f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {out}" in proc.stdout and sum(1 for _ in open(out)) == 31
    bad = subprocess.run(
        [*cmd[:-1], "--source=nope", f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("glow_tf.score per-image: error:")
