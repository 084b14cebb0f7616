"""Static facts about a configured dataset, without downloading anything."""

from __future__ import annotations

import dataclasses

from glow_tf.data import local, tfds_sources
from glow_tf.data.config import CELEBA_ATTRIBUTES, resolve

__all__ = ["DatasetInfo", "dataset_info"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Shape and size of a configured dataset.

    Attributes:
      name: the dataset name.
      image_shape: ``(H, W, C)`` of the pipeline's images.
      num_classes: number of class labels (0: unlabelled, labels are all 0).
      num_train, num_test: examples per split (None if unknown without reading the data).
      attribute_names: CelebA's 40 binary attributes (``load_split(..., with_attributes=True)``), else ().
      source_shape: ``(H, W, C)`` of the stored images before the pipeline crops, pads, resizes
        or converts them to ``image_shape`` (None where it varies: ``folder``, ``lsun``).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int | None
    num_test: int | None
    attribute_names: tuple[str, ...] = ()
    source_shape: tuple[int, int, int] | None = None


def dataset_info(cfg) -> DatasetInfo:
    """Describes the dataset of ``cfg`` (the ``config.data`` section); never downloads.

    ``folder`` and ``npz`` read their files to count them; TFDS datasets report their
    published split sizes (the pipeline uses the prepared dataset's own counts).

    Raises:
      ValueError: a bad config, an unreadable/empty ``path``, or ``image_size``
        larger than the images.
    """
    spec = resolve(cfg)
    shape = (spec.image_size, spec.image_size, spec.channels)
    if spec.name == "digits":
        images, labels = local._digits_uint8()
        num_test = len(images) - local.DIGITS_NUM_TRAIN
        return DatasetInfo("digits", shape, 10, local.DIGITS_NUM_TRAIN, num_test, (), tuple(images.shape[1:]))
    if spec.name == "npz":
        images, labels = local.npz_arrays(spec)
        num_test = int(local.held_out_mask([str(i) for i in range(len(images))], spec.test_fraction).sum())
        num_classes = 0 if labels is None else int(labels.max()) + 1
        return DatasetInfo("npz", shape, num_classes, len(images) - num_test, num_test, (), tuple(images.shape[1:]))
    if spec.name == "folder":
        scan, test_index = local.folder_split(spec, "test")
        return DatasetInfo("folder", shape, 0, len(scan.files) - len(test_index), len(test_index))
    tspec = tfds_sources.tfds_spec(spec)
    tfds_sources.check_native_size(spec, tspec)
    attributes = CELEBA_ATTRIBUTES if spec.name == "celeba" else ()
    return DatasetInfo(
        spec.name, shape, tspec.num_classes, tspec.num_train, tspec.num_test, attributes, tspec.source_shape
    )
