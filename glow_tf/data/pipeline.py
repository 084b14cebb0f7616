"""``tf.data`` pipelines: evaluation splits and infinite, exactly resumable training streams.

Training order (per input pipeline ``p`` of ``P``, over its shard of ``n`` examples):
example position ``t = k * B + j`` of batch ``k`` lies in epoch ``e = t // n``, and

* random-access sources (arrays, files) take example
  ``index_shuffle(t mod n, seed=[K_shuffle(seed, p), e])``: a fresh stateless
  permutation per epoch, so batch ``k`` is computed directly, and ``start_step=s``
  starts at batch ``s`` at no cost;
* streamed TFDS splits rotate epoch ``e`` by a stateless offset ``r_e < W`` and
  permute each window of ``W`` consecutive examples with a stateless seed
  ``(K_shuffle, e, window)``; ``start_step=s`` skips ``(s*B) mod n`` encoded
  (undecoded) examples of epoch ``(s*B) // n``, a read proportional to the offset.

Augmentation of batch ``k`` uses the stateless seed ``[K_augment(seed, p), k]``. So
batch ``k`` is a function of ``(seed, k, p)`` only, and a run restarted with
``start_step=s`` sees exactly the batches ``s, s+1, ...`` of an uninterrupted run
(folder files that fail to decode are dropped, which shifts later positions equally
in both runs).

Costs to know: with ``cache`` (default), a training shard of at most
``CACHE_MAX_BYTES`` decoded bytes is decoded once into memory and then served by
index (digits and npz always are); larger TFDS splits stream, and resuming one skips
up to an epoch of encoded records (e.g. ImageNet32: up to 1.28M records read, not
decoded, roughly tens of seconds). Streamed TFDS shards are taken element-wise, so
every input pipeline reads the whole split and decodes only its share.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from glow_tf import _validate
from glow_tf.data import local, tfds_sources, transforms
from glow_tf.data.config import DataSpec, check_split, resolve
from glow_tf.data.sources import ArraySource, FileSource, StreamSource, deterministic, materialize

__all__ = [
    "CACHE_MAX_BYTES",
    "load_keyed_split",
    "load_split",
    "make_eval_dataset",
    "make_train_dataset",
    "open_source",
]

_log = logging.getLogger(__name__)
AUTOTUNE = tf.data.AUTOTUNE
# With cfg.cache, training sets up to this many decoded bytes per input pipeline live in memory
# (CelebA at 64x64 is 1.9 GiB; host memory peaks at about twice this while the stream starts).
CACHE_MAX_BYTES = 2 << 30
_SHUFFLE_TAG, _AUGMENT_TAG = 1, 2

Source = ArraySource | FileSource | StreamSource


def open_source(spec: DataSpec, split: str, with_attributes: bool = False) -> Source:
    """The example source of one split of ``spec`` (no sharding, no caching)."""
    if with_attributes and spec.name != "celeba":
        raise ValueError(f"with_attributes=True needs name='celeba' (the 40 CelebA attributes), got {spec.name!r}.")
    if spec.name == "digits":
        source = local.digits_source(spec, split)
    elif spec.name == "npz":
        source = local.npz_source(spec, split)
    elif spec.name == "folder":
        source = local.folder_source(spec, split)
    else:
        source = tfds_sources.tfds_source(spec, split, with_attributes)
    if source.num_examples == 0:
        raise ValueError(f"The {split!r} split of {spec.name} is empty (test_fraction={spec.test_fraction}).")
    return source


def _pipeline(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    if input_context is None:
        return 1, 0
    return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)


def _key(*values: int) -> int:
    """A 63-bit integer hashed from non-negative ints (NumPy ``SeedSequence``)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def load_split(cfg, split: str, with_attributes: bool = False) -> tf.data.Dataset:
    """One split, unbatched, in a fixed order, without augmentation.

    Args:
      cfg: the ``config.data`` section (see ``default_config``).
      split: 'train' or 'test'.
      with_attributes: (celeba only) yield the 40 attributes instead of the label.

    Returns:
      Elements ``(image uint8 [S, S, C], label int32 [])`` or, with attributes,
      ``(image, attributes int32 [40])`` in ``CELEBA_ATTRIBUTES`` order.

    Raises:
      ValueError: bad config or split; DatasetUnavailableError when TFDS cannot provide it.
    """
    spec = resolve(cfg)
    source = open_source(spec, check_split(split), with_attributes)
    return deterministic(source.dataset()).prefetch(AUTOTUNE)


def load_keyed_split(cfg, split: str) -> tuple[tf.data.Dataset, int]:
    """:func:`load_split` with a key naming each example, for per-example reports.

    Args:
      cfg: the ``config.data`` section.
      split: 'train' or 'test'.

    Returns:
      ``(dataset, num_examples)``: elements ``(key string [], image uint8 [S, S, C], label int32 [])``
      in the order of :func:`load_split`, where ``key`` is the file's path for ``folder`` and the
      example's position in the split (``"0"``, ``"1"``, ...) otherwise. ``num_examples`` is the
      split's size (for ``folder``, files that fail to decode are dropped from the dataset but counted).

    Raises:
      ValueError: bad config or split; DatasetUnavailableError when TFDS cannot provide it.
    """
    spec = resolve(cfg)
    source = open_source(spec, check_split(split))
    if isinstance(source, FileSource):
        records = tf.data.Dataset.from_tensor_slices(source.records())
        ds = records.map(lambda path, *rest: (path, *source.load(path, *rest)), num_parallel_calls=AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True)
    else:
        ds = source.dataset().enumerate().map(lambda i, example: (tf.strings.as_string(i), *example))
    return deterministic(ds).prefetch(AUTOTUNE), source.num_examples


def make_eval_dataset(
    cfg,
    batch_size: int,
    split: str = "test",
    input_context: tf.distribute.InputContext | None = None,
    max_examples: int = 0,
) -> tf.data.Dataset:
    """One pass over a split in batches (the last batch may be smaller), sharded per input pipeline.

    Args:
      cfg: the ``config.data`` section.
      batch_size: examples per batch (per replica under a strategy).
      split: 'train' or 'test'.
      input_context: from ``distribute_datasets_from_function``; pipeline ``p`` of
        ``P`` takes the examples ``p, p + P, ...`` of the split.
      max_examples: > 0 keeps only the first ``max_examples`` examples of the split
        (over all pipelines together, whatever number of replicas each one feeds).

    Returns:
      Elements ``(images uint8 [b, S, S, C], labels int32 [b])`` with ``b <= batch_size``.
    """
    batch_size = _validate.positive_int(batch_size, "batch_size")
    max_examples = _validate.integer(max_examples, "max_examples", minimum=0)
    spec = resolve(cfg)
    num, index = _pipeline(input_context)
    ds = open_source(spec, check_split(split)).shard(num, index).dataset()
    if max_examples:
        ds = ds.take(len(range(index, max_examples, num)))  # this pipeline's share of the first max_examples
    return deterministic(ds.batch(batch_size)).prefetch(AUTOTUNE)


@functools.lru_cache(maxsize=2)
def _cached_train_source(spec: DataSpec, num: int, index: int) -> Source:
    """The training shard, decoded into memory when ``spec.cache`` and it fits ``CACHE_MAX_BYTES``."""
    source = open_source(spec, "train").shard(num, index)
    nbytes = source.num_examples * spec.image_size**2 * spec.channels
    if spec.cache and not isinstance(source, ArraySource):
        if nbytes <= CACHE_MAX_BYTES:
            _log.info("Caching %d decoded %s training images in memory.", source.num_examples, spec.name)
            return materialize(source)
        _log.info("Not caching %s: %.1f GiB > CACHE_MAX_BYTES; streaming it.", spec.name, nbytes / 2**30)
    return source


def _batch_indices(k: tf.Tensor, batch_size: int, n: int, key: int) -> tf.Tensor:
    """``[B]`` example indices of batch ``k``: ``index_shuffle(t mod n, [key, t // n])`` for its positions t.

    Requires ``batch_size <= n``, so a batch spans at most two epochs.
    """
    first = k * batch_size
    positions = first + tf.range(batch_size, dtype=tf.int64)
    epoch0 = first // n
    offsets = positions % n
    max_index = tf.constant(n - 1, tf.int64)
    key = tf.constant(key, tf.int64)
    this = tf.random.experimental.index_shuffle(offsets, tf.stack([key, epoch0]), max_index)
    following = tf.random.experimental.index_shuffle(offsets, tf.stack([key, epoch0 + 1]), max_index)
    return tf.where(positions // n == epoch0, this, following)


def _array_batches(source: ArraySource, batch_size: int, key: int, start_step: int) -> tf.data.Dataset:
    # The arrays travel as a repeated dataset element rather than as captured constants, which
    # tf.data's graph rewrites would serialise (a copy of the whole set, seconds per GiB).
    arrays = tf.data.Dataset.from_tensors((source.images, source.labels)).repeat()
    n = source.num_examples

    def batch(k, arrays):
        index = _batch_indices(k, batch_size, n, key)
        return k, tf.gather(arrays[0], index), tf.gather(arrays[1], index)

    return tf.data.Dataset.zip(tf.data.Dataset.counter(start_step), arrays).map(batch, num_parallel_calls=AUTOTUNE)


def _file_batches(source: FileSource, batch_size: int, key: int, start_step: int) -> tf.data.Dataset:
    records = tuple(tf.constant(r) for r in source.records())
    n = source.num_examples

    def batch_records(k):
        index = _batch_indices(k, batch_size, n, key)
        return tuple(tf.gather(r, index) for r in records)

    ds = tf.data.Dataset.counter(start_step).map(batch_records).unbatch()
    ds = ds.map(source.load, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
    return ds.batch(batch_size, drop_remainder=True).enumerate(start_step).map(lambda k, b: (k, *b))


def _stream_epoch(source: StreamSource, key: int) -> Callable[[tf.Tensor], tf.data.Dataset]:
    """``epoch -> dataset`` of that epoch's encoded examples in their shuffled order."""
    window = min(source.shuffle_window, source.num_examples)

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = tf.stack([tf.constant(key, tf.int64), e])
        rotate = tf.random.stateless_uniform([], epoch_seed, 0, window, dtype=tf.int64)

        def permute(w, chunk):
            data, label = chunk
            seed = tf.random.experimental.stateless_fold_in(epoch_seed, w)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(data)[:1], seed))
            return tf.gather(data, order), tf.gather(label, order)

        ds = source.encoded()
        ds = ds.skip(rotate).concatenate(ds.take(rotate))
        return ds.batch(window).enumerate(1).map(permute).unbatch()

    return epoch


def _stream_batches(source: StreamSource, batch_size: int, key: int, start_step: int) -> tf.data.Dataset:
    first_epoch, offset = divmod(start_step * batch_size, source.num_examples)
    if offset:
        _log.info("Resuming %d examples into epoch %d: skipping them (read, not decoded).", offset, first_epoch)
    ds = tf.data.Dataset.counter(first_epoch).flat_map(_stream_epoch(source, key)).skip(offset)
    ds = ds.map(source.decode, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).enumerate(start_step).map(lambda k, b: (k, *b))


def make_train_dataset(
    cfg,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The infinite, shuffled, augmented training stream of one input pipeline.

    Batch ``k`` depends only on ``(seed, k, input pipeline id)`` (see the module
    docstring), so ``start_step=s`` yields exactly batches ``s, s+1, ...``.

    Args:
      cfg: the ``config.data`` section.
      batch_size: examples per batch on this pipeline (the per-replica batch under
        ``strategy.distribute_datasets_from_function``); every batch is full.
      seed: non-negative int seed of shuffling and augmentation.
      start_step: index of the first batch (the global step to resume from).
      input_context: from ``distribute_datasets_from_function``; each pipeline takes
        the examples ``id, id + num_input_pipelines, ...`` of the training split.

    Returns:
      Elements ``(images uint8 [B, S, S, C], labels int32 [B])``, prefetched.

    Raises:
      ValueError: bad arguments, or ``batch_size`` above this pipeline's example count.
      DatasetUnavailableError: TFDS cannot provide the data here.
    """
    spec = resolve(cfg)
    batch_size = _validate.positive_int(batch_size, "batch_size")
    seed = _validate.seed(seed)
    start_step = _validate.integer(start_step, "start_step", minimum=0)
    num, index = _pipeline(input_context)
    source = _cached_train_source(spec, num, index)
    if batch_size > source.num_examples:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {source.num_examples} training examples of {spec.name} on input "
            f"pipeline {index} of {num}; use a batch_size <= {source.num_examples}."
        )
    shuffle_key = _key(seed, index, _SHUFFLE_TAG)
    if isinstance(source, ArraySource):
        ds = _array_batches(source, batch_size, shuffle_key, start_step)
    elif isinstance(source, FileSource):
        ds = _file_batches(source, batch_size, shuffle_key, start_step)
    else:
        ds = _stream_batches(source, batch_size, shuffle_key, start_step)
    augment_key = tf.constant(_key(seed, index, _AUGMENT_TAG), tf.int64)

    def finish(k, images, labels):
        if spec.random_shift or spec.random_flip:
            images = transforms.augment_batch(images, tf.stack([augment_key, k]), spec.random_shift, spec.random_flip)
        return images, labels

    return deterministic(ds.map(finish, num_parallel_calls=AUTOTUNE)).prefetch(AUTOTUNE)
