"""Sampling and latent-space tools: InferenceModel (live and SavedModel), grids, interpolation, attributes, CLI."""

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import attributes, data, export, latent_tools, quantization, sample, summaries
from glow_tf.latent_tools import InferenceModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reduced(images, n_bits):
    """What a model of ``n_bits`` reconstructs: the images with their lower bits cleared."""
    return quantization.postprocess(quantization.preprocess(images, n_bits), n_bits).numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_model):
    """One 8x8x1 8-bit model live and exported, and a class-conditional 8x8x3 5-bit model live."""
    root = tmp_path_factory.mktemp("sample")
    gray = tiny_model([8, 8, 1], 8)
    path = export.export_model(gray, str(root / "saved"))
    return types.SimpleNamespace(
        root=root,
        path=path,
        live=InferenceModel.from_model(gray),
        saved=latent_tools.load_inference_model(path),
        cond=InferenceModel.from_model(tiny_model([8, 8, 3], 5, num_classes=3, seed=1)),
        images=np.random.default_rng(2).integers(0, 256, [4, 8, 8, 1]).astype(np.uint8),
    )


# ------------------------------------------------------------------ InferenceModel


@pytest.mark.slow
@pytest.mark.parametrize("which", ["live", "saved"])
def test_sample_shapes_dtypes_and_seeds(models, which):
    model = getattr(models, which)
    for n in (1, 2, 5):
        images = model.sample(n, 0.7)
        assert images.shape == (n, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(model.sample(3, 0.7, seed=1), model.sample(3, 0.7, seed=1))
    assert not np.array_equal(model.sample(3, 0.7, seed=1), model.sample(3, 0.7, seed=2))
    cold = model.sample(3, 0.0, seed=1)
    np.testing.assert_array_equal(cold, model.sample(3, 0.0, seed=2))
    np.testing.assert_array_equal(cold, model.sample(3, 0.0))


@pytest.mark.slow
def test_live_and_saved_models_agree(models):
    for a, b in zip(models.live.encode(models.images), models.saved.encode(models.images)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        models.live.bits_per_dim(models.images, seed=3), models.saved.bits_per_dim(models.images, seed=3), rtol=1e-5
    )
    live, saved = models.live.sample(4, 0.8, seed=5).astype(int), models.saved.sample(4, 0.8, seed=5).astype(int)
    assert np.abs(live - saved).max() <= 1 and np.mean(live != saved) < 0.01  # same noise, same weights
    assert (models.saved.image_shape, models.saved.n_bits, models.saved.num_classes) == ((8, 8, 1), 8, 0)


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [True, False])
def test_decode_of_encode_is_exact(models, deterministic):
    latents = models.saved.encode(models.images, deterministic=deterministic)
    assert [z.shape[1:] for z in latents] == [(4, 4, 2), (2, 2, 8)]
    back = models.saved.decode(latents)
    if deterministic:
        np.testing.assert_array_equal(back, models.images)
    else:  # noise within float error of a bin's upper edge may round up: rare, and one level at most
        assert np.abs(back.astype(int) - models.images).max() <= 1 and np.mean(back != models.images) < 0.01
    flat = models.saved.flatten_latents(latents)
    assert flat.shape == (4, 64)
    for a, b in zip(models.saved.unflatten_latents(flat), latents):
        np.testing.assert_array_equal(a, b)
    images = np.random.default_rng(0).integers(0, 256, [3, 8, 8, 3]).astype(np.uint8)
    labels = np.array([0, 2, 1])
    back = models.cond.decode(models.cond.encode(images, labels), labels)
    np.testing.assert_array_equal(back, reduced(images, 5))


@pytest.mark.slow
def test_negative_or_invalid_temperature_is_a_value_error(models):
    for bad in (-0.1, float("nan"), True, "0.7"):
        with pytest.raises(ValueError, match="temperature"):
            models.live.sample(2, bad)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        latent_tools.sample_grids(models.live, [0.5, -1.0])
    with pytest.raises(ValueError, match="num_samples must be an integer >= 0"):
        models.live.sample(-1, 0.5)
    assert models.live.sample(0, 0.5).shape == (0, *models.live.image_shape)  # an empty batch, not an error


@pytest.mark.slow
def test_encode_rejects_wrong_images_clearly(models):
    with pytest.raises(ValueError, match=r"takes 8x8 images, got 16x16"):
        models.saved.encode(np.zeros([1, 16, 16, 1], np.uint8))
    with pytest.raises(ValueError, match=r"takes 1 channel\(s\), got images with 3"):
        models.saved.encode(np.zeros([1, 8, 8, 3], np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        models.saved.encode(np.zeros([1, 8, 8, 1], np.float32))
    with pytest.raises(ValueError, match="batch of images"):
        models.saved.encode(np.zeros([8, 8, 1], np.uint8))
    with pytest.raises(ValueError, match="latent_1 must have shape"):
        models.saved.decode([np.zeros([1, 4, 4, 2]), np.zeros([1, 2, 2, 4])])


@pytest.mark.slow
def test_label_errors(models):
    with pytest.raises(ValueError, match="class-conditional"):
        models.cond.sample(2, 0.5)
    with pytest.raises(ValueError, match="not class-conditional"):
        models.live.sample(2, 0.5, labels=[0, 1])
    with pytest.raises(ValueError, match=r"0\.\.2"):
        models.cond.sample(2, 0.5, labels=[0, 3])
    with pytest.raises(ValueError, match="2 integer class ids"):
        models.cond.sample(2, 0.5, labels=[0, 1, 2])
    assert models.cond.sample(2, 0.5, labels=1).shape == (2, 8, 8, 3)  # a scalar label is repeated


def test_load_inference_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a SavedModel"):
        latent_tools.load_inference_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        latent_tools.load_inference_model(str(tmp_path))  # a folder without config.json or checkpoints
    other = tf.Module()
    other.f = tf.function(lambda x: x + 1, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(other, str(tmp_path / "other"))
    with pytest.raises(ValueError, match="not a glow_tf export"):
        latent_tools.load_inference_model(str(tmp_path / "other"))


# ---------------------------------------------------------------------- the tools


@pytest.mark.slow
def test_sample_grids_per_temperature_and_per_class(models):
    grids = latent_tools.sample_grids(models.saved, [0.0, 0.7], num_samples=4)
    assert list(grids) == ["T0.00", "T0.70"]
    assert grids["T0.70"].shape == (1 + 2 * 9, 1 + 2 * 9, 1) and grids["T0.70"].dtype == np.uint8
    grids = latent_tools.sample_grids(models.cond, [0.5], num_samples=2, classes=[0, 2])
    assert list(grids) == ["class0_T0.50", "class2_T0.50"]
    assert len(latent_tools.sample_grids(models.cond, [0.5], num_samples=1)) == 3  # every class by default
    with pytest.raises(ValueError, match=r"0\.\.2"):
        latent_tools.sample_grids(models.cond, [0.5], classes=[5])
    with pytest.raises(ValueError, match="classes is empty"):
        latent_tools.sample_grids(models.cond, [0.5], classes=[])
    with pytest.raises(ValueError, match="not class-conditional"):
        latent_tools.sample_grids(models.live, [0.5], classes=[0])


@pytest.mark.slow
def test_interpolation_runs_between_the_reconstructions(models):
    a, b = models.images[0], models.images[1]
    strip = latent_tools.interpolate(models.saved, a, b, steps=5)
    assert strip.shape == (5, 8, 8, 1) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[0], a)  # 8 bits: the reconstruction is the image itself
    np.testing.assert_array_equal(strip[-1], b)
    assert not np.array_equal(strip[2], a) and not np.array_equal(strip[2], b)
    images = np.random.default_rng(4).integers(0, 256, [2, 8, 8, 3]).astype(np.uint8)
    strip = latent_tools.interpolate(models.cond, images[0], images[1], steps=3, labels=(0, 2))
    np.testing.assert_array_equal(strip[0], reduced(images[:1], 5)[0])
    np.testing.assert_array_equal(strip[-1], reduced(images[1:], 5)[0])
    with pytest.raises(ValueError, match="steps"):
        latent_tools.interpolate(models.saved, a, b, steps=1)


def test_accumulator_recovers_a_planted_direction():
    rng = np.random.default_rng(0)
    n, dim = 800, 40
    planted = rng.normal(size=dim)
    attrs = rng.random([n, 2]) < 0.4  # attribute 0 carries the direction, attribute 1 is independent
    eps = rng.normal(size=[n, dim]) + attrs[:, :1] * planted
    acc = attributes.DirectionAccumulator(["planted", "noise"], dim)
    for start in range(0, n, 128):  # streamed in batches, with -1/1 coding
        acc.add(eps[start : start + 128], np.where(attrs[start : start + 128], 1, -1))
    result = acc.result()
    assert np.linalg.norm(result.get("planted") - planted) < 0.2 * np.linalg.norm(planted)
    assert np.linalg.norm(result.get("noise")) < 0.2 * np.linalg.norm(planted)
    exact = eps[attrs[:, 0]].mean(0) - eps[~attrs[:, 0]].mean(0)
    np.testing.assert_allclose(result.get("planted"), exact, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.num_positive, attrs.sum(0))


@pytest.mark.slow
def test_planted_direction_through_the_model_and_manipulation(models):
    model, rng = models.saved, np.random.default_rng(1)
    planted = 0.3 * rng.choice([-1.0, 1.0], model.latent_size).astype(np.float32)
    attrs = (rng.random([96, 1]) < 0.5).astype(np.int32)
    flat = 0.3 * rng.normal(size=[96, model.latent_size]).astype(np.float32) + attrs * planted
    images = model.decode(model.unflatten_latents(flat))
    batches = [(images[i : i + 32], attrs[i : i + 32]) for i in range(0, 96, 32)]
    directions = attributes.attribute_directions(model, batches, ["planted"])
    found = directions.get("planted")
    assert found @ planted / (np.linalg.norm(found) * np.linalg.norm(planted)) > 0.9
    assert directions.image_shape == (8, 8, 1)
    strip = latent_tools.manipulate(model, images[0], found, [0.0, 1.0])
    np.testing.assert_array_equal(strip[0], images[0])
    eps = model.flatten_latents(model.encode(images[:1]))
    expected = model.decode(model.unflatten_latents(eps + found))[0]
    assert np.abs(strip[1].astype(int) - expected).max() <= 1  # equal up to a rare rounding across a bin edge
    assert np.mean(strip[1] != expected) < 0.05 and not np.array_equal(strip[1], strip[0])
    with pytest.raises(ValueError, match="latent size"):
        latent_tools.manipulate(model, images[0], found[:10], [1.0])


def test_directions_file_and_errors(tmp_path):
    acc = attributes.DirectionAccumulator(["a", "b"], 3)
    acc.add(np.arange(12, dtype=np.float32).reshape(4, 3), [[1, 0], [0, 1], [1, 1], [0, 0]])
    directions = acc.result((8, 8, 1))
    loaded = attributes.Directions.load(directions.save(str(tmp_path / "sub" / "d.npz")))
    assert loaded.names == ("a", "b") and loaded.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(loaded.vectors, directions.vectors)
    with pytest.raises(ValueError, match="Unknown attribute 'Smiling'; known attributes: a, b"):
        loaded.get("Smiling")
    with pytest.raises(FileNotFoundError):
        attributes.Directions.load(str(tmp_path / "none.npz"))
    always = attributes.DirectionAccumulator(["always"], 3)
    always.add(np.zeros([2, 3]), [[1], [1]])
    with pytest.raises(ValueError, match=r"\['always'\] hold for none or all"):
        always.result()
    with pytest.raises(ValueError, match="0/1 or -1/1"):
        acc.add(np.zeros([1, 3]), [[2, 0]])


def test_read_attribute_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,Smiling,Young\nx.png,1,-1\ny.png,-1,1\n\n")
    files, names, values = attributes.read_attribute_csv(str(path))
    assert files == ["x.png", "y.png"] and names == ("Smiling", "Young")
    np.testing.assert_array_equal(values, [[True, False], [False, True]])
    path.write_text("file,Smiling\nx.png,yes\n")
    with pytest.raises(ValueError, match=":2: attribute values must be"):
        attributes.read_attribute_csv(str(path))
    path.write_text("file,Smiling,Young\nx.png,1\n")
    with pytest.raises(ValueError, match="expected 3 columns"):
        attributes.read_attribute_csv(str(path))


def test_load_image(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, [16, 12, 3]).astype(np.uint8)
    path = summaries.write_png(str(tmp_path / "big.png"), rgb)
    with pytest.raises(ValueError, match="image is 16x12, the model takes 8x8"):
        latent_tools.load_image(path, (8, 8, 1))
    image = latent_tools.load_image(path, (8, 8, 1), resize=True)
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8
    with pytest.raises(FileNotFoundError):
        latent_tools.load_image(str(tmp_path / "none.png"), (8, 8, 1))


@pytest.mark.slow
def test_directions_from_celeba_through_tfds(no_network_celeba, tiny_model):
    model = InferenceModel.from_model(tiny_model([8, 8, 3], 8, seed=2))
    cfg = data.default_config()
    cfg.name, cfg.image_size, cfg.channels = "celeba", 8, 3
    directions = attributes.directions_from_dataset(model, cfg, "train", max_examples=24, batch_size=16)
    assert directions.names == data.CELEBA_ATTRIBUTES and directions.vectors.shape == (40, model.latent_size)
    assert (directions.num_positive + directions.num_negative == 24).all()
    assert np.isfinite(directions.vectors).all()
    cfg.name = "digits"
    with pytest.raises(ValueError, match="no attributes"):
        attributes.directions_from_dataset(model, cfg)


@pytest.fixture
def no_network_celeba():
    """TFDS's celeb_a builder on generated examples (no download)."""
    with tfds.testing.mock_data(num_examples=32):
        yield


# ---------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def labelled_folder(models):
    """Ten PNGs sampled from the model and a CSV: 'Bright' (mean above the median) and a random attribute."""
    folder = models.root / "faces"
    images = models.saved.sample(10, 0.5, seed=9)
    means = images.reshape(10, -1).mean(1)
    rows = ["file,Bright,Random"]
    for i, (image, mean) in enumerate(zip(images, means)):
        summaries.write_png(str(folder / f"img{i}.png"), image)
        rows.append(f"img{i}.png,{int(mean > np.median(means))},{[1, -1][i % 2]}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return types.SimpleNamespace(folder=str(folder), csv=str(folder / "labels.csv"), images=images)


@pytest.mark.slow
def test_cli_attribute_directions_then_manipulate(models, labelled_folder, capsys):
    out = str(models.root / "directions.npz")
    argv = ["attribute-directions", f"--model={models.path}", f"--folder={labelled_folder.folder}"]
    assert sample.main([*argv, f"--csv={labelled_folder.csv}", f"--out={out}"]) == 0
    directions = attributes.Directions.load(out)
    api = attributes.directions_from_csv(models.saved, labelled_folder.folder, labelled_folder.csv)
    np.testing.assert_allclose(directions.vectors, api.vectors, rtol=1e-5, atol=1e-6)
    assert directions.names == ("Bright", "Random") and directions.num_positive.tolist() == [5, 5]
    strip_path = str(models.root / "edit.png")
    argv = [
        "manipulate",
        f"--model={models.path}",
        f"--directions={out}",
        "--image",
        labelled_folder.folder + "/img0.png",
    ]
    assert sample.main([*argv, "--attribute=Bright", "--alphas=0,1,2", f"--out={strip_path}"]) == 0
    strip = tf.io.decode_png(tf.io.read_file(strip_path)).numpy()
    assert strip.shape == (1 + 9, 1 + 3 * 9, 1)
    np.testing.assert_array_equal(strip[1:9, 1:9], labelled_folder.images[0])  # alpha 0: the reconstruction
    capsys.readouterr()
    assert sample.main([*argv, "--attribute=Smiling", f"--out={strip_path}"]) == 1
    assert "Unknown attribute 'Smiling'; known attributes: Bright, Random" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_grids_interpolation_and_errors(models, labelled_folder, capsys):
    out_dir = str(models.root / "grids")
    argv = ["sample-grids", f"--model={models.path}", f"--out_dir={out_dir}", "--num_samples=4"]
    assert sample.main([*argv, "--temperatures=0,0.7"]) == 0
    assert sorted(os.listdir(out_dir)) == ["samples_T0.00.png", "samples_T0.70.png"]
    strip_path = str(models.root / "interp.png")
    images = [f"--image_a={labelled_folder.folder}/img1.png", f"--image_b={labelled_folder.folder}/img2.png"]
    assert sample.main(["interpolate", f"--model={models.path}", *images, "--steps=4", f"--out={strip_path}"]) == 0
    strip = tf.io.decode_png(tf.io.read_file(strip_path)).numpy()
    np.testing.assert_array_equal(strip[1:9, 1 + 3 * 9 : 9 + 3 * 9], labelled_folder.images[2])
    capsys.readouterr()
    assert sample.main([*argv, "--temperatures=-0.5"]) == 1
    assert "temperature must be >= 0" in capsys.readouterr().err
    assert sample.main(["sample-grids", f"--model={models.root / 'nothing'}", f"--out_dir={out_dir}"]) == 1
    assert "neither a SavedModel folder nor a training workdir" in capsys.readouterr().err
    assert sample.main(["interpolate", f"--model={models.path}", "--image_a=x.png", "--image_b=y.png", "--out=z"]) == 1
    assert "No image file 'x.png'" in capsys.readouterr().err


@pytest.mark.slow
def test_python_m_glow_tf_sample_runs(models, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "glow_tf.sample", "sample-grids", f"--model={models.path}"]
    cmd += [f"--out_dir={tmp_path}", "--temperatures=0.6", "--num_samples=2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.listdir(tmp_path) == ["samples_T0.60.png"] and "wrote" in proc.stdout
