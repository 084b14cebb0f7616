"""Datasets for glow-tf: ``tf.data`` pipelines of ``(uint8 image [H, W, C], label)``.

Names (:data:`DATASETS`): ``digits`` (scikit-learn's 8x8 digits, offline), ``npz``
(arrays in a .npz file), ``folder`` (any tree of png/jpg files), and the TFDS datasets
``mnist``, ``cifar10``, ``cifar100``, ``svhn``, ``fashion_mnist``, ``celeba``, ``celebahq``,
``imagenet32``, ``imagenet64``, ``lsun``.

Entry points, all configured by the ``config.data`` section (:func:`default_config`):

* :func:`dataset_info`: shapes, class count, split sizes; downloads nothing.
* :func:`load_split`: one split, unbatched, fixed order, no augmentation
  (:func:`load_keyed_split`: the same with a key per example, for per-example reports).
* :func:`make_train_dataset`: infinite, shuffled, augmented, per-replica batches,
  sharded per input pipeline, exactly resumable from any step.
* :func:`make_eval_dataset`: one batched pass over a split.
* :func:`model_inputs` / :func:`deterministic_inputs` / :func:`keyed_model_inputs`: uint8
  batches to model space through :mod:`glow_tf.quantization` (the last with per-example noise).

``make_train_dataset`` and ``make_eval_dataset`` take the ``tf.distribute.InputContext``
that ``strategy.distribute_datasets_from_function`` passes, e.g.::

    dist = strategy.distribute_datasets_from_function(
        lambda ctx: data.make_train_dataset(cfg.data, ctx.get_per_replica_batch_size(global_batch), seed, step, ctx))
"""

from glow_tf.data.config import (
    CELEBA_ATTRIBUTES,
    DATASETS,
    IMAGENET_BUILDERS,
    LSUN_CATEGORIES,
    DatasetUnavailableError,
    check_image_size,
    default_config,
)
from glow_tf.data.info import DatasetInfo, dataset_info
from glow_tf.data.inputs import deterministic_inputs, keyed_model_inputs, model_inputs, noise_seed
from glow_tf.data.pipeline import CACHE_MAX_BYTES, load_keyed_split, load_split, make_eval_dataset, make_train_dataset

__all__ = [
    "CACHE_MAX_BYTES",
    "CELEBA_ATTRIBUTES",
    "DATASETS",
    "IMAGENET_BUILDERS",
    "LSUN_CATEGORIES",
    "DatasetInfo",
    "DatasetUnavailableError",
    "check_image_size",
    "dataset_info",
    "default_config",
    "deterministic_inputs",
    "keyed_model_inputs",
    "load_keyed_split",
    "load_split",
    "make_eval_dataset",
    "make_train_dataset",
    "model_inputs",
    "noise_seed",
]
