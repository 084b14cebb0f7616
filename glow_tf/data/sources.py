"""The three kinds of example sources behind every dataset, each yielding ``(image uint8, label)``.

* :class:`ArraySource`: decoded, already-sized arrays in memory (digits, npz, cached sets);
  random access, so training batches are gathered by index.
* :class:`FileSource`: image files with a precomputed central-square crop window (folder);
  random access by file index, decoded on the fly.
* :class:`StreamSource`: a TFDS split read in file order as encoded bytes; decoded after
  shuffling, so skipped or shuffled examples cost no decode.

Every source has ``num_examples``, ``shard(num, index)`` (examples ``index, index + num,
...``) and ``dataset()`` (unbatched, deterministic order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from glow_tf.data import transforms

__all__ = ["ArraySource", "FileSource", "StreamSource", "materialize"]

AUTOTUNE = tf.data.AUTOTUNE


def deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` with deterministic element order enforced (parallel maps keep their input order)."""
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options)


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
    """In-memory examples: ``images`` ``[N, S, S, C]`` uint8 and ``labels`` ``[N]`` (or ``[N, A]``) int32.

    Both are held as TF tensors (NumPy inputs are converted once), so pipelines can
    pass them as dataset elements without copying them again.
    """

    images: tf.Tensor
    labels: tf.Tensor

    def __post_init__(self):
        images, labels = tf.convert_to_tensor(self.images), tf.convert_to_tensor(self.labels)
        if images.dtype != tf.uint8 or images.shape.rank != 4:
            raise ValueError(f"ArraySource needs uint8 [N, H, W, C] images, got {images.dtype.name} {images.shape}")
        if labels.dtype != tf.int32 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"ArraySource: {images.shape[0]} images but labels {labels.dtype.name} {labels.shape}.")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    def shard(self, num: int, index: int) -> ArraySource:
        if num == 1:
            return self
        return ArraySource(self.images[index::num], self.labels[index::num])

    def dataset(self) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((self.images, self.labels))


@dataclasses.dataclass(frozen=True, eq=False)
class FileSource:
    """Image files (PNG or JPEG) cropped to a known central square, area-resized, unlabelled (label 0).

    ``windows[i] = (top, left, side)`` is the central square of file ``i``;
    ``is_jpeg[i]`` picks ``decode_and_crop_jpeg`` (decodes only the window) over
    ``decode_png``. Files that pass the header scan but fail to decode (e.g. a
    truncated JPEG) are dropped by ``ignore_errors`` with a TF warning.
    """

    paths: np.ndarray  # [N] str
    is_jpeg: np.ndarray  # [N] bool
    windows: np.ndarray  # [N, 3] int32
    image_size: int
    channels: int

    @property
    def num_examples(self) -> int:
        return len(self.paths)

    def shard(self, num: int, index: int) -> FileSource:
        if num == 1:
            return self
        sl = slice(index, None, num)
        return FileSource(self.paths[sl], self.is_jpeg[sl], self.windows[sl], self.image_size, self.channels)

    def load(self, path: tf.Tensor, is_jpeg: tf.Tensor, window: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Reads, crops and resizes one file: ``(image [S, S, C] uint8, label 0)``."""
        contents = tf.io.read_file(path)
        top, left, side = window[0], window[1], window[2]

        def jpeg():
            return tf.io.decode_and_crop_jpeg(contents, tf.stack([top, left, side, side]), channels=self.channels)

        def png():
            return tf.io.decode_png(contents, channels=self.channels)[top : top + side, left : left + side]

        image = tf.cond(is_jpeg, jpeg, png)
        image = transforms.resize_square(image, self.image_size)
        image.set_shape([self.image_size, self.image_size, self.channels])
        return image, tf.constant(0, tf.int32)

    def records(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.paths, self.is_jpeg, self.windows

    def dataset(self) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices(self.records())
        return ds.map(self.load, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)


@dataclasses.dataclass(frozen=True, eq=False)
class StreamSource:
    """A sequentially read split: ``make()`` gives ``(encoded image, label)`` in a fixed order.

    Args (fields):
      make: builds the encoded dataset (called once per use).
      decode: ``(encoded, label) -> (image uint8 [S, S, C], label)``.
      total: examples in the unsharded split.
      shuffle_window: examples per stateless shuffle window in training.
      num_shards, shard_index: element-level sharding of ``make()``.
    """

    make: Callable[[], tf.data.Dataset]
    decode: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]
    total: int
    shuffle_window: int
    num_shards: int = 1
    shard_index: int = 0

    @property
    def num_examples(self) -> int:
        return len(range(self.shard_index, self.total, self.num_shards))

    def shard(self, num: int, index: int) -> StreamSource:
        if num == 1:
            return self
        if self.num_shards != 1:
            raise ValueError("StreamSource is already sharded.")
        return dataclasses.replace(self, num_shards=num, shard_index=index)

    def encoded(self) -> tf.data.Dataset:
        ds = self.make()
        return ds.shard(self.num_shards, self.shard_index) if self.num_shards > 1 else ds

    def dataset(self) -> tf.data.Dataset:
        return self.encoded().map(self.decode, num_parallel_calls=AUTOTUNE)


def materialize(source: FileSource | StreamSource, chunk: int = 512) -> ArraySource:
    """Decodes a whole source into memory in one deterministic pass.

    Host memory peaks at about twice the decoded size (the chunks and their concatenation).

    Raises:
      ValueError: when no example could be decoded.
    """
    images, labels = [], []
    for image_batch, label_batch in deterministic(source.dataset().batch(chunk).prefetch(2)):
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise ValueError("No example of the dataset could be decoded (are all files unreadable?).")
    return ArraySource(tf.concat(images, axis=0), tf.concat(labels, axis=0))
