"""TFDS-backed datasets: which builder, which splits, and how each image is cut to size.

- ``mnist``: TFDS ``mnist``, train / test; the 28x28 digit zero-padded, centred, to
  ``image_size`` (32 as in the original; below 28: padded to 32, then area-resized).
- ``cifar10``: TFDS ``cifar10``, train / test; area resize (32: unchanged).
- ``cifar100``: TFDS ``cifar100`` (the 100 fine labels), train / test; as ``cifar10``.
- ``svhn``: TFDS ``svhn_cropped`` (32x32 house-number digits, 10 classes), train / test (the
  ``extra`` split is not used, but TFDS downloads it too); as ``cifar10``.
- ``fashion_mnist``: TFDS ``fashion_mnist`` (28x28 grey, 10 classes), train / test; padded as ``mnist``.
- ``celeba``: TFDS ``celeb_a`` (218x178 aligned faces, 40 attributes), train / test;
  central 148x148 crop, area resize.
- ``celebahq``: TFDS ``celeb_a_hq/256`` (manual download), train[:27000] / train[27000:];
  area resize.
- ``imagenet32`` / ``imagenet64``: TFDS ``downsampled_imagenet/NxN`` (the paper's data)
  or ``imagenet_resized/NxN`` (``imagenet_builder``), train / validation.
- ``lsun``: TFDS ``lsun/<category>``, train / validation.

Wherever not stated, an image is cut to its central square and area-resized.
CelebA-HQ has only one TFDS split; like the original's 27,000 / 3,000 train / validation
files, the last 3,000 examples of TFDS's (fixed) order are held out here.
Images are read as encoded bytes (``tfds.decode.SkipDecoding``) and decoded after any
shuffling or skipping. Nothing is downloaded until a split is opened; a failed TFDS
download or a missing manual file becomes a :class:`DatasetUnavailableError` that says
what to put where.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable

import tensorflow as tf

from glow_tf.data import transforms
from glow_tf.data.config import CELEBA_ATTRIBUTES, DatasetUnavailableError, DataSpec
from glow_tf.data.sources import StreamSource

__all__ = [
    "TfdsSpec",
    "check_download_hosts",
    "check_native_size",
    "default_data_dir",
    "tfds_source",
    "tfds_spec",
]

_log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
CELEBA_CROP = 148
DOWNLOAD_PROBE_TIMEOUT = 5.0  # seconds per download host before "no network" is declared


def _pad_mnist(image: tf.Tensor, size: int) -> tf.Tensor:
    """The original's MNIST: 28x28 zero-padded to 32x32 (here: to ``size`` when ``size >= 28``)."""
    if size >= 28:
        return transforms.pad_to(image, size)
    return transforms.resize_square(transforms.pad_to(image, 32), size)


def _decode_image(data: tf.Tensor, feature) -> tf.Tensor:
    """TFDS's own decoding of an encoded image feature."""
    return feature.decode_example(data)


def _decode_celeba(data: tf.Tensor, feature) -> tf.Tensor:
    """The central ``min(148, H, W)`` square of an aligned CelebA face (218x178).

    JPEG bytes (what TFDS stores) decode only that window (``decode_and_crop_jpeg``);
    anything else is decoded whole and then cropped.
    """

    def window(shape):
        side = tf.minimum(CELEBA_CROP, tf.minimum(shape[0], shape[1]))
        return (shape[0] - side) // 2, (shape[1] - side) // 2, side

    def crop_decode():
        top, left, side = window(tf.io.extract_jpeg_shape(data))
        return tf.io.decode_and_crop_jpeg(data, tf.stack([top, left, side, side]), channels=3)

    def full_decode():
        image = feature.decode_example(data)
        top, left, side = window(tf.shape(image))
        return image[top : top + side, left : left + side]

    return tf.cond(tf.io.is_jpeg(data), crop_decode, full_decode)


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """Static facts about one TFDS dataset (nothing here touches the network or disk).

    ``native_size`` is the largest image_size the data supports without upsampling
    (None: any). ``source_shape`` is the stored images' ``(H, W, C)`` (None: it varies).
    ``files`` are what TFDS downloads, or, with ``manual``, what the user must place in
    ``<data_dir>/downloads/manual`` (TFDS also takes any downloadable file from there
    instead of fetching it).
    """

    builder: str
    train_split: str
    test_split: str
    num_train: int | None
    num_test: int | None
    num_classes: int
    native_size: int | None
    shuffle_window: int
    files: tuple[str, ...]
    source_shape: tuple[int, int, int] | None = None
    manual: bool = False
    decode: Callable[[tf.Tensor, object], tf.Tensor] = _decode_image
    prepare: Callable[[tf.Tensor, int], tf.Tensor] = transforms.fit_square


_LSUN_TRAIN_SIZES = {"bedroom": 3_033_042, "church_outdoor": 126_227, "tower": 708_264}
_IMAGENET = {
    # (builder, size): (num_train, num_test, num_classes, files)
    ("downsampled_imagenet", 32): (1_281_149, 49_999, 0, ("train_32x32.tar", "valid_32x32.tar")),
    ("downsampled_imagenet", 64): (1_281_149, 49_999, 0, ("train_64x64.tar", "valid_64x64.tar")),
    ("imagenet_resized", 32): (1_281_167, 50_000, 1000, ("Imagenet32_train_npz.zip", "Imagenet32_val_npz.zip")),
    ("imagenet_resized", 64): (
        1_281_167,
        50_000,
        1000,
        ("Imagenet64_train_part1_npz.zip", "Imagenet64_train_part2_npz.zip", "Imagenet64_val_npz.zip"),
    ),
}


def tfds_spec(spec: DataSpec) -> TfdsSpec:
    """The :class:`TfdsSpec` of a TFDS-backed ``spec.name``."""
    name = spec.name
    if name in ("mnist", "fashion_mnist"):
        files = tuple(f"{p}-{k}-idx{d}-ubyte.gz" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1)))
        return TfdsSpec(name, "train", "test", 60_000, 10_000, 10, None, 10_000, files, (28, 28, 1), prepare=_pad_mnist)
    if name in ("cifar10", "cifar100"):
        classes = 10 if name == "cifar10" else 100
        files = (f"cifar-{classes}-binary.tar.gz",)
        return TfdsSpec(name, "train", "test", 50_000, 10_000, classes, 32, 10_000, files, (32, 32, 3))
    if name == "svhn":
        files = ("train_32x32.mat", "test_32x32.mat", "extra_32x32.mat")
        return TfdsSpec("svhn_cropped", "train", "test", 73_257, 26_032, 10, 32, 10_000, files, (32, 32, 3))
    if name == "celeba":
        files = (
            "img_align_celeba.zip",
            "list_eval_partition.txt",
            "list_attr_celeba.txt",
            "list_landmarks_align_celeba.txt",
            "identity_CelebA.txt",
        )
        return TfdsSpec(
            "celeb_a",
            "train",
            "test",
            162_770,
            19_962,
            0,
            CELEBA_CROP,
            10_000,
            files,
            (218, 178, 3),
            decode=_decode_celeba,
        )
    if name == "celebahq":
        return TfdsSpec(
            "celeb_a_hq/256",
            "train[:27000]",
            "train[27000:]",
            27_000,
            3_000,
            0,
            256,
            1_000,
            ("data256x256.tar",),
            (256, 256, 3),
            manual=True,
        )
    if name in ("imagenet32", "imagenet64"):
        size = int(name[-2:])
        num_train, num_test, classes, files = _IMAGENET[(spec.imagenet_builder, size)]
        window = 20_000 if size == 32 else 10_000
        builder = f"{spec.imagenet_builder}/{size}x{size}"
        shape = (size, size, 3)
        return TfdsSpec(builder, "train", "validation", num_train, num_test, classes, size, window, files, shape)
    if name == "lsun":
        cat = spec.lsun_category
        files = (f"{cat}_train_lmdb.zip", f"{cat}_val_lmdb.zip")
        return TfdsSpec(f"lsun/{cat}", "train", "validation", _LSUN_TRAIN_SIZES.get(cat), 300, 0, 256, 5_000, files)
    raise ValueError(f"{name!r} is not a TFDS-backed dataset.")


def check_native_size(spec: DataSpec, tspec: TfdsSpec) -> None:
    """Raises ``ValueError`` when ``image_size`` exceeds what the dataset's images offer."""
    if tspec.native_size is not None and spec.image_size > tspec.native_size:
        raise ValueError(
            f"image_size={spec.image_size} is larger than the {spec.name} images ({tspec.native_size}x"
            f"{tspec.native_size} after its crop); the data is never upsampled: use image_size <= {tspec.native_size}."
        )


def default_data_dir() -> str:
    """TFDS's default data_dir: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _first_line(error: BaseException, limit: int = 300) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:limit]}"


def unavailable_message(spec: DataSpec, tspec: TfdsSpec, error: BaseException) -> str:
    """What failed, and the three ways out (prepare elsewhere, manual files, ``folder``)."""
    root = spec.data_dir or default_data_dir()
    manual_dir = os.path.join(root, "downloads", "manual")
    files = ", ".join(tspec.files)
    folder = "or extract the images into a directory and use data.name='folder', data.path=<that directory>"
    if tspec.manual:
        return (
            f"TFDS dataset {tspec.builder!r} (data.name={spec.name!r}) is not prepared in data_dir {root!r} and TFDS "
            f"cannot download it: it needs a manual download. Put {files} (a tar archive of the 30,000 CelebA-HQ "
            f"images at 256x256, as made with https://github.com/tkarras/progressive_growing_of_gans) into "
            f"{manual_dir} and run again (TFDS builds the dataset from it once), {folder}. [TFDS: {_first_line(error)}]"
        )
    return (
        f"TFDS dataset {tspec.builder!r} (data.name={spec.name!r}) is not prepared in data_dir {root!r} and preparing "
        f"it failed [{_first_line(error)}]. Without network access: (1) prepare it on a machine with network "
        f"(`tfds build {tspec.builder} --data_dir DIR`) and point data.data_dir at a copy of DIR; (2) or download "
        f"{files} yourself into {manual_dir}: TFDS uses files found there instead of downloading; (3) {folder} "
        f"(e.g. an extracted img_align_celeba/), or use name='npz' or 'digits', which need no download."
    )


class HostUnreachableError(OSError):
    """A download host that does not answer (no DNS entry, no route, or a connection timeout)."""


def _hosts_to_download(builder, manual_dir: str) -> list[tuple[str, int]]:
    """``(host, port)`` of every file the builder would download that is not already in ``manual_dir``."""
    hosts = set()
    for url, info in (builder.url_infos or {}).items():
        filename = getattr(info, "filename", None) or os.path.basename(urllib.parse.urlparse(url).path)
        if filename and os.path.exists(os.path.join(manual_dir, filename)):
            continue  # TFDS takes a file placed in the manual folder instead of downloading it
        parsed = urllib.parse.urlparse(url)
        if parsed.hostname:
            hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)))
    return sorted(hosts)


def check_download_hosts(builder, manual_dir: str, timeout: float = DOWNLOAD_PROBE_TIMEOUT) -> None:
    """Fails within ``timeout`` seconds per host when a file to download cannot be reached.

    TFDS retries an unreachable host with back-off for minutes before giving up;
    one TCP connection attempt per host (to the proxy, when one is configured)
    answers the same question in seconds.

    Raises:
      HostUnreachableError: naming the host and the reason.
    """
    proxies = urllib.request.getproxies()
    for host, port in _hosts_to_download(builder, manual_dir):
        proxy = proxies.get("https" if port == 443 else "http")
        target = host
        if proxy and not urllib.request.proxy_bypass(host):
            parsed = urllib.parse.urlparse(proxy)
            target, port = parsed.hostname or host, parsed.port or port
        try:
            socket.create_connection((target, port), timeout=timeout).close()
        except OSError as err:
            via = f" through the proxy {target}:{port}" if target != host else ""
            raise HostUnreachableError(f"download host {host} cannot be reached{via} ({err})") from None


def _open_builder(spec: DataSpec, tspec: TfdsSpec):
    """``tfds.builder`` + ``download_and_prepare``, with every failure turned into a short error.

    A dataset that is not prepared yet is only downloaded after its download hosts
    answered (:func:`check_download_hosts`), so no network means an error in seconds.
    """
    try:
        import tensorflow_datasets as tfds

        builder = tfds.builder(tspec.builder, data_dir=spec.data_dir)
        mocked = type(builder).download_and_prepare.__module__.startswith("tensorflow_datasets.testing")
        if not builder.is_prepared() and not mocked:  # under tfds.testing.mock_data nothing is downloaded
            root = spec.data_dir or default_data_dir()
            check_download_hosts(builder, os.path.join(root, "downloads", "manual"))
        builder.download_and_prepare()
    except Exception as e:  # no network, missing manual files, missing TFDS extras, ...
        raise DatasetUnavailableError(unavailable_message(spec, tspec, e)) from None
    return builder


def _select(with_attributes: bool, has_label: bool) -> Callable[[dict], tuple[tf.Tensor, tf.Tensor]]:
    """TFDS example dict -> ``(encoded image, label)``; the label is int32 class, 0, or celeba's [40] attributes."""

    def select(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
        if with_attributes:
            attributes = example["attributes"]
            label = tf.stack([tf.cast(attributes[a], tf.int32) for a in CELEBA_ATTRIBUTES])
        elif has_label:
            label = tf.cast(example["label"], tf.int32)
        else:
            label = tf.constant(0, tf.int32)
        return example["image"], label

    return select


def tfds_source(spec: DataSpec, split: str, with_attributes: bool = False) -> StreamSource:
    """A :class:`StreamSource` over one split of a TFDS dataset (prepared on first use).

    Raises:
      DatasetUnavailableError: TFDS cannot provide the data here (message says why and what to do).
      ValueError: ``image_size`` larger than the images.
    """
    import tensorflow_datasets as tfds

    tspec = tfds_spec(spec)
    check_native_size(spec, tspec)
    builder = _open_builder(spec, tspec)
    tfds_split = tspec.train_split if split == "train" else tspec.test_split
    try:
        encoded = builder.as_dataset(
            split=tfds_split,
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False),
        )
    except Exception as e:
        raise DatasetUnavailableError(unavailable_message(spec, tspec, e)) from None
    has_label = "label" in builder.info.features
    encoded = encoded.map(_select(with_attributes, has_label), num_parallel_calls=AUTOTUNE)
    total = int(encoded.cardinality())
    if total < 0:
        total = tspec.num_train if split == "train" else tspec.num_test
    if total is None:
        _log.warning("Counting the %s split of %s (its size is not recorded)...", tfds_split, tspec.builder)
        total = int(encoded.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    image_feature = builder.info.features["image"]
    size, channels = spec.image_size, spec.channels

    def decode(data: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tspec.prepare(tspec.decode(data, image_feature), size)
        image = transforms.convert_channels(image, channels)
        image.set_shape([size, size, channels])
        return image, label

    return StreamSource(lambda: encoded, decode, total, tspec.shuffle_window)
