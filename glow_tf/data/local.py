"""Offline sources: scikit-learn's digits, ``.npz`` arrays and folders of PNG/JPEG files.

Held-out splits of ``npz`` and ``folder`` are deterministic: the examples whose key
(the index, or the file's path relative to the folder) has the smallest MD5 hash
form the test split, ``round(N * test_fraction)`` of them (at least one when
``test_fraction > 0`` and ``N > 1``). A folder that gains files keeps almost all of
its old assignment.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import logging
import os
import struct
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from glow_tf.data import transforms
from glow_tf.data.config import DatasetUnavailableError, DataSpec
from glow_tf.data.sources import ArraySource, FileSource

__all__ = [
    "DIGITS_NUM_TRAIN",
    "FolderScan",
    "digits_source",
    "folder_source",
    "held_out_mask",
    "npz_arrays",
    "npz_source",
    "read_image_header",
    "scan_folder",
]

_log = logging.getLogger(__name__)

DIGITS_NUM_TRAIN = 1500  # of scikit-learn's 1,797 digits: the first 1,500 train, the last 297 test.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (carry the size)


def held_out_mask(keys: Sequence[str], fraction: float) -> np.ndarray:
    """Boolean ``[N]`` mask of the test examples: the ``n_test`` keys with the smallest MD5.

    ``n_test = round(N * fraction)``, at least 1 if ``fraction > 0`` and ``N > 1``,
    at most ``N - 1``.
    """
    n = len(keys)
    n_test = int(round(n * fraction))
    if fraction > 0 and n > 1:
        n_test = min(max(n_test, 1), n - 1)
    order = sorted(range(n), key=lambda i: hashlib.md5(keys[i].encode("utf-8")).hexdigest())
    mask = np.zeros(n, bool)
    mask[order[:n_test]] = True
    return mask


def _split_arrays(images: np.ndarray, labels: np.ndarray, test: np.ndarray, split: str) -> ArraySource:
    keep = test if split == "test" else ~test
    return ArraySource(images[keep], labels[keep])


def _fit_arrays(images: np.ndarray, spec: DataSpec, chunk: int = 4096) -> np.ndarray:
    """Central square crop + area resize + channel conversion of ``[N, H, W, C]`` uint8, in chunks."""
    size, channels = spec.image_size, spec.channels
    if images.shape[1] == images.shape[2] == size and images.shape[3] == channels:
        return images
    out = [
        transforms.convert_channels(transforms.fit_square(tf.constant(images[i : i + chunk]), size), channels).numpy()
        for i in range(0, len(images), chunk)
    ]
    return np.concatenate(out) if out else np.zeros((0, size, size, channels), np.uint8)


# ----------------------------------------------------------------------------- digits
def _digits_file() -> str:
    """scikit-learn's bundled ``datasets/data/digits.csv.gz``, found without importing scikit-learn.

    (``sklearn.datasets.load_digits`` reads the same file; importing ``sklearn.datasets``
    costs about 100 MiB of memory.)
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("data.name='digits' needs scikit-learn (pip install scikit-learn).")
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")


@functools.lru_cache(maxsize=1)
def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(_digits_file(), delimiter=",")  # 1,797 rows: 64 grey levels 0..16, then the label
    images = np.floor(table[:, :64].reshape(-1, 8, 8) * (255.0 / 16.0) + 0.5).astype(np.uint8)[..., np.newaxis]
    return images, table[:, 64].astype(np.int32)


@functools.lru_cache(maxsize=4)
def _digits_arrays(image_size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_uint8()
    x = tf.constant(images)
    x = transforms.pad_to(x, image_size) if image_size >= 8 else transforms.resize_square(x, image_size)
    return transforms.convert_channels(x, channels).numpy(), labels


def digits_source(spec: DataSpec, split: str) -> ArraySource:
    """scikit-learn's 1,797 real 8x8 handwritten digits (10 classes), no network needed.

    Their 17 grey levels ``v in 0..16`` map to uint8 as ``floor(v * 255 / 16 + 0.5)``
    (0 -> 0, 8 -> 128, 16 -> 255). For ``image_size >= 8`` the 8x8 digit is zero-padded,
    centred, to ``image_size`` (8: unchanged); smaller sizes are area-resized.
    Split: the first 1,500 train, the last 297 test.
    """
    images, labels = _digits_arrays(spec.image_size, spec.channels)
    part = slice(None, DIGITS_NUM_TRAIN) if split == "train" else slice(DIGITS_NUM_TRAIN, None)
    return ArraySource(images[part], labels[part])


# ----------------------------------------------------------------------------- npz
def _file_key(path: str) -> tuple[str, float, int]:
    try:
        stat = os.stat(path)
    except OSError as e:
        raise ValueError(f"Cannot read data.path {path!r}: {e.strerror or e}.") from None
    return os.path.abspath(path), stat.st_mtime, stat.st_size


@functools.lru_cache(maxsize=2)
def _load_npz(key: tuple[str, float, int]) -> tuple[np.ndarray, np.ndarray | None]:
    path = key[0]
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except Exception as e:  # zipfile/OSError/ValueError: a bad or non-npz file
        raise ValueError(f"Cannot read {path!r} as a .npz file ({type(e).__name__}: {e}).") from None
    if "images" not in arrays:
        raise ValueError(f"{path!r} has no 'images' array; it has {sorted(arrays)}. Expected uint8 [N, H, W, C].")
    images = arrays["images"]
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4) or len(images) == 0:
        raise ValueError(f"{path!r}: 'images' must be [N, H, W] or [N, H, W, C] with C in 1, 3, 4; got {images.shape}.")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or images.min() < 0 or images.max() > 255:
            raise ValueError(f"{path!r}: 'images' must be uint8 pixels 0..255; got dtype {images.dtype}.")
        images = images.astype(np.uint8)
    labels = arrays.get("labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
            raise ValueError(f"{path!r}: 'labels' must be [N] non-negative ints; got {labels.dtype} {labels.shape}.")
        labels = labels.astype(np.int32)
    return images, labels


def npz_arrays(spec: DataSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """The raw ``images`` ``[N, H, W, C]`` uint8 and optional ``labels`` ``[N]`` int32 of ``spec.path``.

    Raises:
      ValueError: unreadable file, missing/ill-shaped arrays, or images smaller than
        ``image_size``.
    """
    images, labels = _load_npz(_file_key(spec.path))
    height, width = images.shape[1:3]
    if min(height, width) < spec.image_size:
        raise ValueError(
            f"The images in {spec.path!r} are {height}x{width}, smaller than image_size={spec.image_size}; "
            f"use image_size <= {min(height, width)} (the data is never upsampled)."
        )
    return images, labels


@functools.lru_cache(maxsize=2)
def _npz_fitted(spec: DataSpec, file_key: tuple[str, float, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    del file_key  # part of the memo key only: a rewritten file is read again
    images, labels = npz_arrays(spec)
    test = held_out_mask([str(i) for i in range(len(images))], spec.test_fraction)
    labels = np.zeros(len(images), np.int32) if labels is None else labels
    return _fit_arrays(images, spec), labels, test


def npz_source(spec: DataSpec, split: str) -> ArraySource:
    """``images`` (and optional ``labels``, else 0) of a .npz file, central-cropped and area-resized."""
    key = _file_key(spec.path)
    images, labels, test = _npz_fitted(dataclasses.replace(spec, path=key[0]), key)
    return _split_arrays(images, labels, test, split)


# ----------------------------------------------------------------------------- folder
def _jpeg_size(f) -> tuple[int, int]:
    """``(height, width)`` from the first start-of-frame segment of a JPEG stream after SOI."""
    while True:
        byte = f.read(1)
        if byte != b"\xff":
            raise ValueError("bad JPEG marker")
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            raise ValueError("JPEG ends before its frame header")
        marker = byte[0]
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # segments without a length
            continue
        if marker in (0xD9, 0xDA):
            raise ValueError("JPEG has no frame header before its scan data")
        (length,) = struct.unpack(">H", f.read(2))
        if marker in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", f.read(5))
            return height, width
        if length < 2:
            raise ValueError("bad JPEG segment length")
        f.seek(length - 2, os.SEEK_CUR)


def read_image_header(path: str) -> tuple[bool, int, int]:
    """``(is_jpeg, height, width)`` of a PNG or JPEG file from its header alone.

    PNG: signature, IHDR, and the IEND chunk at the end (catches truncated files).
    JPEG: SOI, then the markers up to the first start-of-frame segment.

    Raises:
      ValueError: not a PNG or JPEG, or a damaged header.
      OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        head = f.read(24)
        if head.startswith(_PNG_SIGNATURE):
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise ValueError("PNG without IHDR")
            width, height = struct.unpack(">II", head[16:24])
            f.seek(-12, os.SEEK_END)
            if f.read(12)[4:8] != b"IEND":
                raise ValueError("PNG is truncated (no IEND chunk)")
            is_jpeg = False
        elif head.startswith(b"\xff\xd8"):
            f.seek(2)
            height, width = _jpeg_size(f)
            is_jpeg = True
        else:
            raise ValueError("not a PNG or JPEG file")
    if height < 1 or width < 1:
        raise ValueError("empty image")
    return is_jpeg, int(height), int(width)


@dataclasses.dataclass(frozen=True)
class FolderScan:
    """What :func:`scan_folder` found: usable files (sorted relative paths) and skipped ones."""

    root: str
    files: tuple[str, ...]
    is_jpeg: tuple[bool, ...]
    sizes: tuple[tuple[int, int], ...]  # (height, width)
    corrupt: tuple[str, ...]
    too_small: tuple[str, ...]


def _list_images(root: str) -> list[str]:
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a directory"
        raise ValueError(f"data.path {root!r} {what}; name='folder' needs a directory of png/jpg images.")
    errors: list[OSError] = []
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
        dirnames.sort()
        found.extend(
            os.path.relpath(os.path.join(dirpath, name), root)
            for name in filenames
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if errors and not found:
        raise ValueError(f"Cannot read folder {root!r}: {errors[0].strerror or errors[0]}.")
    if not found:
        raise ValueError(f"Folder {root!r} contains no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively).")
    return sorted(found)


@functools.lru_cache(maxsize=4)
def scan_folder(root: str, image_size: int) -> FolderScan:
    """Lists the PNG/JPEG files under ``root`` and reads their headers (once per process).

    Files whose header cannot be read are counted as corrupt, files whose shorter side
    is below ``image_size`` as too small; both are skipped with one logged warning.

    Raises:
      ValueError: naming ``root`` when it is missing, unreadable, empty, or has no usable image.
    """
    root = os.path.abspath(root)
    files, is_jpeg, sizes, corrupt, too_small = [], [], [], [], []
    for rel in _list_images(root):
        try:
            jpeg, height, width = read_image_header(os.path.join(root, rel))
        except (OSError, ValueError, struct.error):
            corrupt.append(rel)
            continue
        if min(height, width) < image_size:
            too_small.append(rel)
            continue
        files.append(rel)
        is_jpeg.append(jpeg)
        sizes.append((height, width))
    if corrupt or too_small:
        _log.warning(
            "Folder %s: skipped %d corrupt or unreadable file(s)%s and %d image(s) smaller than image_size=%d%s.",
            root,
            len(corrupt),
            f" (e.g. {', '.join(corrupt[:3])})" if corrupt else "",
            len(too_small),
            image_size,
            f" (e.g. {', '.join(too_small[:3])})" if too_small else "",
        )
    if not files:
        raise ValueError(
            f"Folder {root!r} has no usable image: {len(corrupt)} corrupt or unreadable, {len(too_small)} smaller "
            f"than image_size={image_size} (the data is never upsampled; lower image_size)."
        )
    return FolderScan(root, tuple(files), tuple(is_jpeg), tuple(sizes), tuple(corrupt), tuple(too_small))


def folder_split(spec: DataSpec, split: str) -> tuple[FolderScan, np.ndarray]:
    """The scan of ``spec.path`` and the indices of ``split``'s files (sorted by path)."""
    scan = scan_folder(os.path.abspath(spec.path), spec.image_size)
    test = held_out_mask(scan.files, spec.test_fraction)
    return scan, np.flatnonzero(test if split == "test" else ~test)


def folder_source(spec: DataSpec, split: str) -> FileSource:
    """Every png/jpg under ``spec.path`` (recursively), central square crop, area resize; label 0.

    Grayscale or RGB output by ``spec.channels`` whatever the files are.
    """
    scan, index = folder_split(spec, split)
    if len(index) == 0:
        raise ValueError(
            f"The {split!r} split of folder {scan.root!r} is empty ({len(scan.files)} usable images, "
            f"test_fraction={spec.test_fraction})."
        )
    sizes = np.asarray(scan.sizes, np.int64)[index]
    side = sizes.min(axis=1)
    windows = np.stack([(sizes[:, 0] - side) // 2, (sizes[:, 1] - side) // 2, side], axis=1).astype(np.int32)
    paths = np.asarray([os.path.join(scan.root, scan.files[i]) for i in index])
    return FileSource(paths, np.asarray(scan.is_jpeg)[index], windows, spec.image_size, spec.channels)
