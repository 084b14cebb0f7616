"""Tests of glow_tf.data: every dataset name, the quantisation glue, resumable training streams, errors.

TFDS datasets run through their real TFDS builders under ``tfds.testing.mock_data``
(random examples; every split yields the same examples there). Nothing here needs
the network: the ``no_network`` fixture makes any socket connection fail.
"""

import math
import os
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from glow_tf import data, metrics, quantization
from glow_tf.data import local, pipeline, sources, tfds_sources, transforms

MOCK_EXAMPLES = 6
SHARED_NPZ = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist_t10k.npz")


def make_cfg(**fields):
    cfg = data.default_config()
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def batches(ds, n):
    return [tuple(t.numpy() for t in element) for element in ds.take(n)]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ----------------------------------------------------------------------------- config
def test_default_config_fields_and_names():
    cfg = data.default_config()
    assert (cfg.name, cfg.image_size, cfg.channels, cfg.n_bits) == ("digits", 8, 1, 8)
    assert cfg.data_dir is None and cfg.path == "" and cfg.test_fraction == 0.1
    assert (cfg.random_shift, cfg.random_flip, cfg.lsun_category, cfg.cache) == (0.0, False, "bedroom", True)
    cfg.data_dir = "/somewhere"  # a str overrides the None default
    assert data.DATASETS == (
        "digits",
        "npz",
        "folder",
        "mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "fashion_mnist",
        "celeba",
        "celebahq",
        "imagenet32",
        "imagenet64",
        "lsun",
    )


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"name": "stl10"}, r"Unknown dataset name 'stl10'; valid: digits, npz, folder, mnist, cifar10, cifar100"),
        ({"channels": 2}, r"channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
        ({"n_bits": 9}, r"n_bits must be an integer in 1..8, got 9"),
        ({"image_size": 0}, r"image_size must be a positive integer, got 0"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\), got 1.0"),
        ({"random_shift": 0.7}, r"random_shift must be in \[0, 0.5\]"),
        ({"name": "lsun", "lsun_category": "castle"}, r"Unknown lsun_category 'castle'; valid: bedroom, bridge"),
        ({"name": "imagenet32", "imagenet_builder": "x"}, r"Unknown imagenet_builder 'x'; valid: downsampled_imagenet"),
        ({"name": "folder"}, r"data.path must name a directory of png/jpg images for name='folder'"),
        ({"name": "npz"}, r"data.path must name a .npz file for name='npz'"),
    ],
)
def test_config_errors(fields, match):
    with pytest.raises(ValueError, match=match):
        data.dataset_info(make_cfg(**fields))


def test_check_image_size():
    data.check_image_size(32, 3)
    data.check_image_size(28, 2)
    with pytest.raises(ValueError, match=r"image_size=28 is not divisible by 2\*\*num_levels = 8 \(num_levels=3\)"):
        data.check_image_size(28, 3)


@pytest.mark.parametrize("name, size, native", [("cifar10", 64, 32), ("celeba", 160, 148), ("imagenet64", 128, 64)])
def test_image_size_larger_than_the_images(name, size, native):
    cfg = make_cfg(name=name, image_size=size, channels=3)
    with pytest.raises(ValueError, match=rf"image_size={size} is larger than the {name} images.*<= {native}"):
        data.dataset_info(cfg)
    with pytest.raises(ValueError, match=rf"image_size={size} is larger"):
        data.load_split(cfg, "train")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"split must be 'train' or 'test', got 'validation'"):
        data.load_split(make_cfg(), "validation")
    with pytest.raises(ValueError, match=r"with_attributes=True needs name='celeba'"):
        data.load_split(make_cfg(), "train", with_attributes=True)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        data.make_train_dataset(make_cfg(), 8, seed=-1)
    with pytest.raises(ValueError, match=r"batch_size=2000 exceeds the 1500 training examples of digits"):
        data.make_train_dataset(make_cfg(), 2000, seed=0)


# ----------------------------------------------------------------------------- quantisation glue
@pytest.mark.parametrize("n_bits", [8, 5, 1])
def test_dequantised_values_lie_inside_their_bins(n_bits):
    images = tf.constant(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(4, axis=0))
    x = data.model_inputs(images, n_bits, seed=7, step=3).numpy()
    n_bins = 2**n_bits
    left = np.floor(images.numpy() / 2 ** (8 - n_bits)) / n_bins - 0.5
    assert np.all(x >= left) and np.all(x < left + 1.0 / n_bins)
    assert np.all(x >= -0.5) and np.all(x < 0.5)
    # The noise spreads over the bin: across 1024 values its mean is near the midpoint.
    assert abs(np.mean(x - left) * n_bins - 0.5) < 0.05
    np.testing.assert_array_equal(quantization.postprocess(x, n_bits), quantization.postprocess(left, n_bits))


def test_dequantisation_noise_is_seeded_by_seed_step_and_replica():
    images = tf.zeros([2, 4, 4, 3], tf.uint8)
    ref = data.model_inputs(images, 8, seed=1, step=5, replica_id=0).numpy()
    tf.random.set_seed(123)  # the global seed plays no part
    np.testing.assert_array_equal(ref, data.model_inputs(images, 8, seed=1, step=tf.constant(5, tf.int64)).numpy())
    for other in [dict(seed=2, step=5), dict(seed=1, step=6), dict(seed=1, step=5, replica_id=1)]:
        assert not np.array_equal(ref, data.model_inputs(images, 8, **other).numpy()), other
    unseeded = data.model_inputs(images, 8, seed=None, step=0).numpy()
    assert unseeded.shape == ref.shape and not np.array_equal(unseeded, ref)


def test_model_inputs_inside_tf_function():
    fn = tf.function(lambda u, step: data.model_inputs(u, 8, 3, step, tf.constant(1)))
    u = tf.fill([2, 4, 4, 1], tf.constant(9, tf.uint8))
    np.testing.assert_array_equal(fn(u, tf.constant(4, tf.int64)), data.model_inputs(u, 8, 3, 4, 1))


def test_round_trips_at_8_and_5_bits():
    u = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    np.testing.assert_array_equal(quantization.postprocess(quantization.preprocess(u, 8), 8), u)
    reduced = u & 0b11111000  # 5 bits: the lower 3 bits cleared
    np.testing.assert_array_equal(quantization.postprocess(quantization.preprocess(u, 5), 5), reduced)
    for n_bits, expected in [(8, u), (5, reduced)]:
        mid = data.deterministic_inputs(u, n_bits).numpy()
        np.testing.assert_allclose(mid, quantization.preprocess(u, n_bits).numpy() + 0.5 / 2**n_bits)
        np.testing.assert_array_equal(quantization.postprocess(mid, n_bits), expected)


@pytest.mark.parametrize("n_bits", [8, 5])
def test_bits_per_dim_of_a_uniform_density_is_n_bits(n_bits):
    # Uniform on the data cube [-0.5, 0.5)^D, where every dequantised input lies: log p = 0.
    x = data.model_inputs(tf.constant(np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3)), n_bits, seed=0, step=0)
    log_prob = tf.reduce_sum(tf.zeros_like(x), axis=[1, 2, 3])  # log 1 per dimension
    np.testing.assert_allclose(metrics.bits_per_dim(log_prob, [4, 4, 3], n_bits), [n_bits])


# ----------------------------------------------------------------------------- transforms
def test_augment_batch_shifts_with_edge_fill_and_flips():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (16, 10, 10, 3), dtype=np.uint8))
    seed = tf.constant([4, 2], tf.int64)
    out = transforms.augment_batch(images, seed, 0.2, True).numpy()
    np.testing.assert_array_equal(out, transforms.augment_batch(images, seed, 0.2, True))  # stateless
    seen = set()
    for original, augmented in zip(images.numpy(), out):
        matches = []
        for flip in (False, True):
            src = original[:, ::-1] if flip else original
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    rows = np.clip(np.arange(10) - dy, 0, 9)
                    cols = np.clip(np.arange(10) - dx, 0, 9)
                    if np.array_equal(src[rows][:, cols], augmented):
                        matches.append((flip, dy, dx))
        assert matches, "augmented image is not a shift (|d| <= 2) and/or flip of its source"
        seen.add(matches[0])
    assert len(seen) > 4  # different images get different shifts
    np.testing.assert_array_equal(transforms.augment_batch(images, seed, 0.0, False), images)


def test_fit_square_is_exact_without_resize_and_crops_centrally():
    image = tf.constant(np.arange(6 * 4, dtype=np.uint8).reshape(6, 4, 1))
    np.testing.assert_array_equal(transforms.fit_square(image, 4), image.numpy()[1:5])
    big = tf.constant(np.random.default_rng(1).integers(0, 256, (2, 9, 9, 3), dtype=np.uint8))
    np.testing.assert_array_equal(transforms.fit_square(big, 9), big)
    np.testing.assert_array_equal(transforms.convert_channels(image, 3).numpy()[..., 2], image.numpy()[..., 0])


# ----------------------------------------------------------------------------- digits
def test_digits_offline(no_network):
    cfg = make_cfg()
    info = data.dataset_info(cfg)
    assert info == data.DatasetInfo("digits", (8, 8, 1), 10, 1500, 297, (), (8, 8, 1))
    train = batches(data.load_split(cfg, "train"), 2000)
    test = batches(data.load_split(cfg, "test"), 2000)
    assert (len(train), len(test)) == (1500, 297)
    image, label = train[0]
    assert image.shape == (8, 8, 1) and image.dtype == np.uint8 and label.dtype == np.int32
    from sklearn.datasets import load_digits

    raw = load_digits()
    np.testing.assert_array_equal(image[..., 0], np.floor(raw.images[0] * 255 / 16 + 0.5))
    levels = np.unique(np.stack([im for im, _ in train]))
    assert set(levels) <= {int(np.floor(v * 255 / 16 + 0.5)) for v in range(17)} and levels.max() == 255
    assert sorted({int(lab) for _, lab in test}) == list(range(10))
    assert [int(lab) for _, lab in test[:5]] == list(raw.target[1500:1505])


def test_digits_padded_and_tiled():
    image, _ = next(iter(data.load_split(make_cfg(image_size=16, channels=3), "train")))
    image = image.numpy()
    assert image.shape == (16, 16, 3)
    assert not image[:4].any() and not image[-4:].any() and not image[:, :4].any() and not image[:, -4:].any()
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    small, _ = next(iter(data.load_split(make_cfg(image_size=4), "test")))
    assert small.shape == (4, 4, 1)


# ----------------------------------------------------------------------------- npz
@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 12, 10), dtype=np.uint8)
    path = str(tmp_path_factory.mktemp("npz") / "toy.npz")
    np.savez(path, images=images, labels=np.arange(40))
    return path


def test_npz_split_shapes_and_labels(npz_path):
    cfg = make_cfg(name="npz", path=npz_path, image_size=8, test_fraction=0.25)
    info = data.dataset_info(cfg)
    assert (info.image_shape, info.num_classes, info.num_train, info.num_test) == ((8, 8, 1), 40, 30, 10)
    train = batches(data.load_split(cfg, "train"), 100)
    test = batches(data.load_split(cfg, "test"), 100)
    train_ids, test_ids = [int(t[1]) for t in train], [int(t[1]) for t in test]
    assert sorted(train_ids + test_ids) == list(range(40)) and train_ids == sorted(train_ids)
    assert test_ids == [int(t[1]) for t in batches(data.load_split(cfg, "test"), 100)]  # deterministic
    raw = np.load(npz_path)["images"]
    expected = transforms.fit_square(tf.constant(raw[train_ids[0], :, :, None]), 8).numpy()
    np.testing.assert_array_equal(train[0][0], expected)
    rgb, _ = next(iter(data.load_split(make_cfg(name="npz", path=npz_path, image_size=10, channels=3), "train")))
    np.testing.assert_array_equal(rgb.numpy()[..., 0], raw[0, 1:11])  # central 10x10 of 12x10, tiled to RGB


def test_npz_errors(tmp_path, npz_path):
    with pytest.raises(ValueError, match=r"are 12x10, smaller than image_size=16; use image_size <= 10"):
        data.dataset_info(make_cfg(name="npz", path=npz_path, image_size=16))
    missing = str(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=rf"Cannot read data.path '{missing}'"):
        data.load_split(make_cfg(name="npz", path=missing), "train")
    wrong = str(tmp_path / "wrong.npz")
    np.savez(wrong, x=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"has no 'images' array; it has \['x'\]"):
        data.dataset_info(make_cfg(name="npz", path=wrong))
    with pytest.raises(ValueError, match=r"The 'test' split of npz is empty \(test_fraction=0.0\)"):
        data.load_split(make_cfg(name="npz", path=npz_path, test_fraction=0.0), "test")


@pytest.mark.skipif(not os.path.exists(SHARED_NPZ), reason="shared MNIST .npz not present")
def test_shared_mnist_npz():
    cfg = make_cfg(name="npz", path=SHARED_NPZ, image_size=28)
    info = data.dataset_info(cfg)
    assert (info.num_classes, info.num_train, info.num_test) == (10, 9000, 1000)
    images, labels = next(iter(data.make_eval_dataset(cfg, 64)))
    assert images.shape == (64, 28, 28, 1) and images.dtype == tf.uint8 and labels.dtype == tf.int32


# ----------------------------------------------------------------------------- folder
def _write(path, image, fmt, **kwargs):
    encoded = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95, **kwargs)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, encoded)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """14 good images (PNG/JPEG, gray/RGB, mixed sizes, in subfolders), 1 corrupt, 1 truncated, 1 too small."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sizes = [(20, 20), (24, 16), (16, 30), (40, 18), (17, 17), (33, 21), (16, 16)]
    for i in range(14):
        h, w = sizes[i % len(sizes)]
        channels = 1 if i % 3 == 0 else 3
        image = tf.constant(rng.integers(0, 256, (h, w, channels), dtype=np.uint8))
        fmt = "png" if i % 2 else "jpg"
        _write(str(root / f"sub{i % 2}" / f"img{i:02d}.{fmt}"), image, fmt, progressive=(i % 4 == 0))
    (root / "corrupt.jpg").write_bytes(b"this is not an image")
    good = tf.io.encode_png(tf.zeros([20, 20, 3], tf.uint8)).numpy()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    _write(str(root / "tiny.png"), tf.zeros([8, 30, 3], tf.uint8), "png")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return str(root)


def test_read_image_header_matches_decoder(image_folder):
    for dirpath, _, names in os.walk(image_folder):
        for name in names:
            if name.startswith("img"):
                path = os.path.join(dirpath, name)
                is_jpeg, h, w = local.read_image_header(path)
                decoded = tf.io.decode_image(tf.io.read_file(path))
                assert (h, w) == tuple(decoded.shape[:2]) and is_jpeg == name.endswith(".jpg")


def test_folder_skips_and_counts_bad_files(image_folder, caplog):
    local.scan_folder.cache_clear()
    cfg = make_cfg(name="folder", path=image_folder, image_size=16, channels=3, test_fraction=0.25)
    with caplog.at_level("WARNING"):
        info = data.dataset_info(cfg)
    assert "skipped 2 corrupt or unreadable file(s)" in caplog.text and "corrupt.jpg" in caplog.text
    assert "1 image(s) smaller than image_size=16" in caplog.text and "tiny.png" in caplog.text
    assert (info.image_shape, info.num_classes, info.num_train, info.num_test) == ((16, 16, 3), 0, 10, 4)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_images_and_split(image_folder, channels):
    cfg = make_cfg(name="folder", path=image_folder, image_size=16, channels=channels, test_fraction=0.25)
    train = batches(data.load_split(cfg, "train"), 100)
    test = batches(data.load_split(cfg, "test"), 100)
    assert (len(train), len(test)) == (10, 4)
    for image, label in train + test:
        assert image.shape == (16, 16, channels) and image.dtype == np.uint8 and label == 0
    scan, test_index = local.folder_split(pipeline.resolve(cfg), "test")
    _, train_index = local.folder_split(pipeline.resolve(cfg), "train")
    assert sorted(np.concatenate([test_index, train_index])) == list(range(14))
    # Every image is its file's central square, area-resized; PNGs exactly, JPEGs up to crop-decoding rounding.
    for position, file_index in enumerate(train_index):
        path = os.path.join(image_folder, scan.files[file_index])
        raw = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        expected = transforms.fit_square(raw, 16).numpy().astype(int)
        diff = np.abs(train[position][0].astype(int) - expected)
        assert diff.max() == 0 if path.endswith(".png") else diff.mean() < 2.0, (path, diff.max(), diff.mean())


def test_folder_train_stream_resumes(image_folder):
    cfg = make_cfg(name="folder", path=image_folder, image_size=16, channels=3, cache=False, random_flip=True)
    full = batches(data.make_train_dataset(cfg, 4, seed=5), 6)
    resumed = batches(data.make_train_dataset(cfg, 4, seed=5, start_step=4), 2)
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
    cached = batches(data.make_train_dataset(make_cfg(**{**cfg.to_dict(), "cache": True}), 4, seed=5), 6)
    assert all(im.shape == (4, 16, 16, 3) for im, _ in cached)


def test_folder_errors(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=rf"data.path '{missing}' does not exist"):
        data.dataset_info(make_cfg(name="folder", path=missing))
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=rf"Folder '{empty}' contains no images"):
        data.load_split(make_cfg(name="folder", path=str(empty)), "train")
    small = tmp_path / "small"
    _write(str(small / "a.png"), tf.zeros([8, 8, 1], tf.uint8), "png")
    (small / "b.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ValueError, match=r"has no usable image: 1 corrupt or unreadable, 1 smaller than image_size=16"):
        data.make_train_dataset(make_cfg(name="folder", path=str(small), image_size=16), 1, seed=0)


# ----------------------------------------------------------------------------- TFDS datasets
TFDS_CASES = {
    # name: (image_size, channels, extra fields, TFDS builder, train split, test split, num_classes)
    "mnist": (32, 1, {}, "mnist", "train", "test", 10),
    "cifar10": (32, 3, {}, "cifar10", "train", "test", 10),
    "cifar100": (32, 3, {}, "cifar100", "train", "test", 100),
    "svhn": (32, 3, {}, "svhn_cropped", "train", "test", 10),
    "fashion_mnist": (32, 1, {}, "fashion_mnist", "train", "test", 10),
    "celeba": (64, 3, {}, "celeb_a", "train", "test", 0),
    "celebahq": (64, 3, {}, "celeb_a_hq/256", "train[:27000]", "train[27000:]", 0),
    "imagenet32": (32, 3, {}, "downsampled_imagenet/32x32", "train", "validation", 0),
    "imagenet64": (
        64,
        3,
        {"imagenet_builder": "imagenet_resized"},
        "imagenet_resized/64x64",
        "train",
        "validation",
        1000,
    ),
    "lsun": (32, 3, {"lsun_category": "tower"}, "lsun/tower", "train", "validation", 0),
}


@pytest.fixture
def mock_tfds(monkeypatch):
    """TFDS mocked (real builders, random examples) and a log of the splits the code asks for."""
    requested = []
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        mocked = tfds.core.DatasetBuilder.as_dataset

        def spy(self, split=None, **kwargs):
            requested.append((self.info.full_name.rsplit("/", 1)[0], str(split)))
            return mocked(self, split=split, **kwargs)

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", spy)
        yield requested


# cifar10 and mnist (28x28 padded to 32x32) in the quick loop, every other builder with the slow tests.
QUICK_TFDS = ("cifar10", "mnist")


@pytest.mark.parametrize(
    "name", [n if n in QUICK_TFDS else pytest.param(n, marks=pytest.mark.slow) for n in TFDS_CASES]
)
def test_tfds_dataset_through_its_builder(name, mock_tfds, no_network):
    size, channels, extra, builder, train_split, test_split, num_classes = TFDS_CASES[name]
    cfg = make_cfg(name=name, image_size=size, channels=channels, cache=False, **extra)
    info = data.dataset_info(cfg)
    assert info.image_shape == (size, size, channels) and info.num_classes == num_classes
    test = batches(data.load_split(cfg, "test"), 100)
    evals = batches(data.make_eval_dataset(cfg, 4), 100)
    train = batches(data.make_train_dataset(cfg, 2, seed=1), 4)
    assert mock_tfds[:2] == [(builder, test_split), (builder, test_split)] and mock_tfds[2] == (builder, train_split)
    assert len(test) == MOCK_EXAMPLES and [len(b[0]) for b in evals] == [4, MOCK_EXAMPLES - 4]
    for image, label in test:
        assert image.shape == (size, size, channels) and image.dtype == np.uint8
        assert label.dtype == np.int32 and label.shape == () and 0 <= label < max(num_classes, 1)
    stacked = np.stack([im for im, _ in test])
    assert stacked.std() > 10  # real pixels (mock data is uniform noise), not a constant fill
    np.testing.assert_array_equal(np.concatenate([b[0] for b in evals]), stacked)
    for images, labels in train:
        assert images.shape == (2, size, size, channels) and images.dtype == np.uint8 and labels.shape == (2,)
    if num_classes:
        assert len({int(lab) for _, lab in test}) > 1
    if name in ("mnist", "fashion_mnist"):
        assert not stacked[:, :2].any() and not stacked[:, :, -2:].any()  # 28x28 zero-padded to 32x32
    if name == "celeba":
        assert info.attribute_names == data.CELEBA_ATTRIBUTES


@pytest.mark.slow
def test_celeba_attributes_follow_tfds(mock_tfds):
    builder = tfds.builder("celeb_a")
    assert tuple(builder.info.features["attributes"].keys()) == data.CELEBA_ATTRIBUTES
    cfg = make_cfg(name="celeba", image_size=32, channels=3)
    with_attributes = batches(data.load_split(cfg, "train", with_attributes=True), 100)
    plain = batches(data.load_split(cfg, "train"), 100)
    expected = [
        [int(ex["attributes"][a]) for a in data.CELEBA_ATTRIBUTES] for ex in tfds.as_numpy(builder.as_dataset("train"))
    ]
    for (image, attributes), (image2, label), want in zip(with_attributes, plain, expected):
        assert attributes.dtype == np.int32 and attributes.shape == (40,) and label == 0
        np.testing.assert_array_equal(attributes, want)
        np.testing.assert_array_equal(image, image2)


def test_celeba_central_crop(mock_tfds):
    encoded = tfds.builder("celeb_a").as_dataset("test", decoders={"image": tfds.decode.SkipDecoding()})
    raw = tf.io.decode_jpeg(next(iter(encoded))["image"]).numpy()
    assert raw.shape == (218, 178, 3)
    image, _ = next(iter(data.load_split(make_cfg(name="celeba", image_size=148, channels=3), "test")))
    np.testing.assert_array_equal(image, raw[35:183, 15:163])


def test_small_tfds_set_is_cached_in_memory(mock_tfds):
    cfg = make_cfg(name="cifar10", image_size=32, channels=3, cache=True)
    source = pipeline._cached_train_source(pipeline.resolve(cfg), 1, 0)
    assert isinstance(source, sources.ArraySource) and source.images.shape == (MOCK_EXAMPLES, 32, 32, 3)
    first = batches(data.make_train_dataset(cfg, 3, seed=2), 4)
    again = batches(data.make_train_dataset(cfg, 3, seed=2, start_step=2), 2)
    np.testing.assert_array_equal(first[2][0], again[0][0])
    np.testing.assert_array_equal(first[3][1], again[1][1])


def test_stream_resumes_across_epochs(mock_tfds):
    cfg = make_cfg(name="mnist", image_size=32, cache=False, random_shift=0.1)
    full = batches(data.make_train_dataset(cfg, 4, seed=9), 8)  # 32 examples: 5+ epochs of 6
    resumed = batches(data.make_train_dataset(cfg, 4, seed=9, start_step=5), 3)
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # every epoch is a permutation of the split: the labels of 6 consecutive examples from an epoch start
    plain = make_cfg(name="mnist", image_size=32, cache=False)
    labels = np.concatenate([b[1] for b in batches(data.make_train_dataset(plain, 3, seed=9), 4)])
    split_labels = sorted(int(lab) for _, lab in batches(data.load_split(plain, "train"), 100))
    assert sorted(labels[:6]) == split_labels and sorted(labels[6:]) == split_labels


def test_failed_download_is_explained(monkeypatch, tmp_path):
    def fail(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
    monkeypatch.setattr(tfds_sources, "check_download_hosts", lambda *args, **kwargs: None)  # the host answers
    cfg = make_cfg(name="cifar10", image_size=32, channels=3, data_dir=str(tmp_path))
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.make_train_dataset(cfg, 8, seed=0)
    message = str(caught.value)
    assert "TFDS dataset 'cifar10'" in message and f"data_dir '{tmp_path}'" in message
    assert "ConnectionError: Failed to resolve" in message and "tfds build cifar10" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message and "cifar-10-binary.tar.gz" in message
    assert "name='folder'" in message and "img_align_celeba" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no deep TF traceback
    assert isinstance(caught.value, ValueError)


def test_celebahq_manual_download_is_explained(tmp_path, no_network):
    # The real TFDS builder on an empty data_dir: it cannot be downloaded, only built from a manual file.
    cfg = make_cfg(name="celebahq", image_size=256, channels=3, n_bits=5, data_dir=str(tmp_path))
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_split(cfg, "train")
    message = str(caught.value)
    assert "needs a manual download" in message and "data256x256.tar" in message
    assert os.path.join(str(tmp_path), "downloads", "manual") in message and "name='folder'" in message


# ----------------------------------------------------------------------------- training streams
def test_train_stream_is_a_function_of_seed_step_and_pipeline():
    cfg = make_cfg(random_shift=0.25, random_flip=True)
    tf.random.set_seed(1)
    full = batches(data.make_train_dataset(cfg, 64, seed=3), 26)  # 1500 examples: epoch 1 starts in batch 23
    tf.random.set_seed(2)  # global TF seed is irrelevant
    resumed = batches(data.make_train_dataset(cfg, 64, seed=3, start_step=22), 4)
    for a, b in zip(full[22:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    other = batches(data.make_train_dataset(cfg, 64, seed=4), 1)
    assert not np.array_equal(other[0][0], full[0][0])
    for images, labels in full:
        assert images.shape == (64, 8, 8, 1) and images.dtype == np.uint8 and labels.dtype == np.int32


def test_each_epoch_is_a_permutation_and_pipelines_are_disjoint(npz_path):
    cfg = make_cfg(name="npz", path=npz_path, image_size=8, test_fraction=0.0)
    ids = np.concatenate([b[1] for b in batches(data.make_train_dataset(cfg, 6, seed=0), 14)])  # batches span epochs
    assert sorted(ids[:40]) == list(range(40)) and sorted(ids[40:80]) == list(range(40))
    assert not np.array_equal(ids[:40], ids[40:80])  # a new order per epoch
    seen = []
    for pipeline_id in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2)
        ids = np.concatenate([b[1] for b in batches(data.make_train_dataset(cfg, 5, seed=0, input_context=ctx), 4)])
        assert sorted(ids) == list(range(pipeline_id, 40, 2))
        seen.append(ids)
        ev = np.concatenate([b[1] for b in batches(data.make_eval_dataset(cfg, 3, "train", input_context=ctx), 99)])
        assert sorted(ev) == list(range(pipeline_id, 40, 2))
    assert not set(seen[0]) & set(seen[1])


def test_distribute_datasets_from_function():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    cfg = make_cfg()
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(cfg, ctx.get_per_replica_batch_size(32), seed=0, input_context=ctx)
    )
    images, labels = next(iter(dist))
    assert images.shape == (32, 8, 8, 1) and labels.shape == (32,)
    np.testing.assert_array_equal(images, batches(data.make_train_dataset(cfg, 32, seed=0), 1)[0][0])


def test_eval_keeps_the_last_partial_batch():
    sizes = [len(b[0]) for b in batches(data.make_eval_dataset(make_cfg(), 100), 10)]
    assert sizes == [100, 100, 97]
    assert math.isclose(sum(sizes), data.dataset_info(make_cfg()).num_test)


# ----------------------------------------------------------------------------- the datasets of the OOD experiments
@pytest.mark.parametrize(
    "name, files", [("svhn", "test_32x32.mat"), ("cifar100", "cifar-100-binary.tar.gz"), ("fashion_mnist", "t10k")]
)
def test_new_tfds_names_fail_fast_without_network(name, files, tmp_path, no_network):
    cfg = make_cfg(name=name, image_size=32, channels=1, data_dir=str(tmp_path))
    with pytest.raises(data.DatasetUnavailableError) as caught:
        data.load_split(cfg, "test")
    message = str(caught.value)
    assert "HostUnreachableError: download host" in message and files in message, message


@pytest.mark.parametrize(
    "name, source_shape", [("mnist", (28, 28, 1)), ("svhn", (32, 32, 3)), ("digits", (8, 8, 1)), ("lsun", None)]
)
def test_dataset_info_reports_the_stored_image_shape(name, source_shape):
    info = data.dataset_info(make_cfg(name=name, image_size=8 if name == "digits" else 32, channels=1))
    assert info.source_shape == source_shape and info.image_shape[2] == 1


def test_keyed_split_names_files_and_positions(image_folder, npz_path):
    cfg = make_cfg(name="npz", path=npz_path, image_size=8)
    keyed, count = data.load_keyed_split(cfg, "test")
    keyed = batches(keyed, 1000)
    plain = batches(data.load_split(cfg, "test"), 1000)
    assert count == len(plain) == len(keyed) and [k for k, _, _ in keyed] == [str(i).encode() for i in range(count)]
    for (_, image, label), (image2, label2) in zip(keyed, plain):
        np.testing.assert_array_equal(image, image2)
        assert label == label2
    cfg = make_cfg(name="folder", path=image_folder, image_size=8, test_fraction=0.0)
    keyed, count = data.load_keyed_split(cfg, "train")
    names = [os.path.relpath(k.decode(), image_folder) for k, _, _ in batches(keyed, 1000)]
    assert (
        names == sorted(names) and len(names) == count == 15 and names[-1] == "tiny.png"
    )  # 14 + tiny: corrupt skipped


def test_keyed_noise_depends_on_the_key_alone():
    images = tf.constant(np.random.default_rng(0).integers(0, 256, [6, 4, 4, 1]).astype(np.uint8))
    seed = data.noise_seed(3, 0)
    full = data.keyed_model_inputs(images, 5, seed, tf.range(6, dtype=tf.int64)).numpy()
    part = data.keyed_model_inputs(images[3:5], 5, seed, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(full[3:5], part)
    swapped = data.keyed_model_inputs(images[::-1], 5, seed, tf.range(6, dtype=tf.int64)[::-1]).numpy()
    np.testing.assert_array_equal(swapped[::-1], full)
    low = quantization.preprocess(images, 5).numpy()
    assert (full >= low).all() and (full < low + 1 / 32).all()
    other = data.keyed_model_inputs(images, 5, data.noise_seed(3, 1), tf.range(6, dtype=tf.int64)).numpy()
    assert not np.array_equal(full, other)
    assert data.keyed_model_inputs(images[:0], 5, seed, tf.zeros([0], tf.int64)).shape == (0, 4, 4, 1)
