"""Attribute directions in latent space, as the original Glow's CelebA manipulation.

For each binary attribute ``a`` over a labelled set of images with flattened
deterministic encodings ``eps`` (see :class:`glow_tf.inference.InferenceModel`)::

    dz_a = mean(eps | a) - mean(eps | not a)

and an image is edited with ``decode(eps + alpha * dz_a)``
(:func:`glow_tf.latent_tools.manipulate`). Labels come from CelebA's 40 attributes
through :mod:`glow_tf.data` or from a folder of images with a CSV file.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Iterable, Sequence

import numpy as np

from glow_tf import data
from glow_tf.inference import InferenceModel
from glow_tf.latent_tools import load_image

__all__ = [
    "Directions",
    "DirectionAccumulator",
    "to_binary",
    "attribute_directions",
    "directions_from_dataset",
    "read_attribute_csv",
    "directions_from_csv",
]


def to_binary(values, what: str = "attributes") -> np.ndarray:
    """Boolean array from attribute values coded 0/1, -1/1 or bool.

    Raises:
      ValueError: for any other value.
    """
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    valid = np.isin(values, (-1, 0, 1))
    if not valid.all():
        raise ValueError(f"{what} must be 0/1 or -1/1, got {np.unique(values[~valid])[:5].tolist()}.")
    return values > 0


@dataclasses.dataclass
class Directions:
    """Attribute directions ``dz`` (one flat latent vector per attribute) and their support.

    Attributes:
      names: attribute names.
      vectors: float32 ``[A, D]``, ``vectors[i] = mean(eps | names[i]) - mean(eps | not names[i])``.
      num_positive, num_negative: int64 ``[A]`` images with / without each attribute.
      image_shape: ``(H, W, C)`` of the model the encodings came from.
    """

    names: tuple[str, ...]
    vectors: np.ndarray
    num_positive: np.ndarray
    num_negative: np.ndarray
    image_shape: tuple[int, ...]

    def get(self, name: str) -> np.ndarray:
        """The ``[D]`` direction of attribute ``name``.

        Raises:
          ValueError: an unknown name (the message lists the known ones).
        """
        if name not in self.names:
            raise ValueError(f"Unknown attribute {name!r}; known attributes: {', '.join(self.names)}.")
        return self.vectors[self.names.index(name)]

    def save(self, path: str) -> str:
        """Writes an ``.npz`` file (folders created); returns ``path``."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as f:
            np.savez(
                f,
                names=np.asarray(self.names),
                vectors=self.vectors,
                num_positive=self.num_positive,
                num_negative=self.num_negative,
                image_shape=np.asarray(self.image_shape, np.int64),
            )
        return path

    @classmethod
    def load(cls, path: str) -> Directions:
        """Reads a file written by :meth:`save`.

        Raises:
          FileNotFoundError: no such file.
          ValueError: the file is not a directions file.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No directions file {path!r} (write one with the attribute-directions command).")
        with np.load(path) as f:
            missing = {"names", "vectors", "num_positive", "num_negative", "image_shape"} - set(f.files)
            if missing:
                raise ValueError(f"{path!r} is not a directions file (missing {sorted(missing)}).")
            return cls(
                names=tuple(str(n) for n in f["names"]),
                vectors=f["vectors"].astype(np.float32),
                num_positive=f["num_positive"],
                num_negative=f["num_negative"],
                image_shape=tuple(int(d) for d in f["image_shape"]),
            )


class DirectionAccumulator:
    """Streams ``(flat eps, attributes)`` batches into per-attribute sums (float64), so any dataset size fits.

    Args:
      names: the ``A`` attribute names, in the column order of the attributes passed to :meth:`add`.
      latent_size: ``D``, the flat latent size.
    """

    def __init__(self, names: Sequence[str], latent_size: int):
        if not names or len(set(names)) != len(names):
            raise ValueError(f"attribute names must be non-empty and unique, got {list(names)!r}.")
        self.names = tuple(str(n) for n in names)
        self.latent_size = int(latent_size)
        self._positive_sums = np.zeros([len(names), latent_size], np.float64)
        self._total_sum = np.zeros([latent_size], np.float64)
        self._num_positive = np.zeros([len(names)], np.int64)
        self.count = 0

    def add(self, flat_eps, attributes) -> None:
        """Adds ``[B, D]`` encodings with their ``[B, A]`` attributes (0/1, -1/1 or bool)."""
        flat_eps = np.asarray(flat_eps, np.float64)
        positive = to_binary(attributes)
        if flat_eps.ndim != 2 or flat_eps.shape[1] != self.latent_size:
            raise ValueError(f"flat_eps must have shape [B, {self.latent_size}], got {flat_eps.shape}.")
        if positive.shape != (flat_eps.shape[0], len(self.names)):
            raise ValueError(
                f"attributes must have shape [{flat_eps.shape[0]}, {len(self.names)}], got {positive.shape}."
            )
        self._positive_sums += positive.T.astype(np.float64) @ flat_eps
        self._total_sum += flat_eps.sum(axis=0)
        self._num_positive += positive.sum(axis=0)
        self.count += flat_eps.shape[0]

    def result(self, image_shape: Sequence[int] = ()) -> Directions:
        """``mean(eps | a) - mean(eps | not a)`` for every attribute.

        Raises:
          ValueError: when an attribute never or always holds (its direction is undefined).
        """
        num_negative = self.count - self._num_positive
        empty = [n for n, p, q in zip(self.names, self._num_positive, num_negative) if p == 0 or q == 0]
        if empty:
            raise ValueError(
                f"Attributes {empty} hold for none or all of the {self.count} images; "
                "their directions need examples with and without them."
            )
        positive_mean = self._positive_sums / self._num_positive[:, None]
        negative_mean = (self._total_sum[None] - self._positive_sums) / num_negative[:, None]
        return Directions(
            names=self.names,
            vectors=(positive_mean - negative_mean).astype(np.float32),
            num_positive=self._num_positive.copy(),
            num_negative=num_negative,
            image_shape=tuple(int(d) for d in image_shape),
        )


def attribute_directions(
    model: InferenceModel, batches: Iterable, names: Sequence[str], max_examples: int | None = None
) -> Directions:
    """Attribute directions from labelled image batches, encoded deterministically.

    Args:
      model: the model.
      batches: iterable of ``(images uint8 [B, H, W, C], attributes [B, A])``, or
        ``(images, attributes, labels)`` for a class-conditional model.
      names: the ``A`` attribute names.
      max_examples: stop after this many images (None: all).

    Returns:
      The :class:`Directions`.

    Raises:
      ValueError: images that do not fit the model, bad attribute values, or an
        attribute that never or always holds.
    """
    acc = DirectionAccumulator(names, model.latent_size)
    for batch in batches:
        images, attributes = np.asarray(batch[0]), np.asarray(batch[1])
        labels = np.asarray(batch[2]) if len(batch) > 2 else None
        if max_examples is not None:
            keep = max(0, max_examples - acc.count)
            images, attributes = images[:keep], attributes[:keep]
            labels = None if labels is None else labels[:keep]
        if len(images):
            acc.add(model.flatten_latents(model.encode(images, labels)), attributes)
        if max_examples is not None and acc.count >= max_examples:
            break
    return acc.result(model.image_shape)


def directions_from_dataset(
    model: InferenceModel, data_cfg, split: str = "train", max_examples: int | None = None, batch_size: int = 64
) -> Directions:
    """Directions of every attribute of a dataset with attributes (CelebA through TFDS).

    Args:
      model: an unconditional model of the dataset's image shape.
      data_cfg: the ``config.data`` section (``name='celeba'``, ``image_size``, ``data_dir``, ...).
      split: ``'train'`` or ``'test'``.
      max_examples: images to use (None: the whole split).
      batch_size: encoding batch size.

    Raises:
      ValueError: a dataset without attributes, or images of another shape than the model's.
      glow_tf.data.DatasetUnavailableError: TFDS cannot provide the dataset.
    """
    info = data.dataset_info(data_cfg)
    if not info.attribute_names:
        raise ValueError(
            f"Dataset {info.name!r} has no attributes; use 'celeba' or a folder of images with a CSV of attributes."
        )
    if tuple(info.image_shape) != model.image_shape:
        raise ValueError(f"Dataset images are {info.image_shape}, the model takes {model.image_shape}.")
    ds = data.load_split(data_cfg, split, with_attributes=True)
    if max_examples is not None:
        ds = ds.take(max_examples)
    batches = ((x.numpy(), a.numpy()) for x, a in ds.batch(batch_size))
    return attribute_directions(model, batches, info.attribute_names, max_examples)


def read_attribute_csv(path: str) -> tuple[list[str], tuple[str, ...], np.ndarray]:
    """Reads ``file,attr1,attr2,...`` rows (a header row names the attributes).

    Returns:
      ``(files, names, values)``: file names relative to the CSV's image folder,
      the attribute names and bool ``[N, A]`` values (0/1 or -1/1 in the file).

    Raises:
      FileNotFoundError: no such file.
      ValueError: no attribute columns, no rows, a short row or a value other than 0/1/-1.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No attribute CSV {path!r}.")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"{path}: the header row must be 'file,<attribute>,...' with at least one attribute.")
    names = tuple(c.strip() for c in rows[0][1:])
    files, values = [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(names) + 1:
            raise ValueError(f"{path}:{line}: expected {len(names) + 1} columns, got {len(row)}.")
        try:
            values.append([int(float(c)) for c in row[1:]])
        except ValueError:
            raise ValueError(f"{path}:{line}: attribute values must be 0/1 or -1/1, got {row[1:]}.") from None
        files.append(row[0].strip())
    if not files:
        raise ValueError(f"{path}: no rows after the header.")
    return files, names, to_binary(np.asarray(values), f"{path}: attribute values")


def directions_from_csv(
    model: InferenceModel, folder: str, csv_path: str, batch_size: int = 64, resize: bool = False
) -> Directions:
    """Directions from images in ``folder`` labelled by ``csv_path`` (see :func:`read_attribute_csv`).

    Args:
      model: an unconditional model.
      folder: the images' folder (the CSV's file names are relative to it).
      csv_path: the CSV file.
      batch_size: encoding batch size.
      resize: centre-crop and resize images of another size (see ``load_image``).

    Raises:
      FileNotFoundError: a missing CSV or image file.
      ValueError: a bad CSV, images of the wrong size (without ``resize``), or an
        attribute that never or always holds.
    """
    files, names, values = read_attribute_csv(csv_path)

    def batches():
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images = np.stack([load_image(os.path.join(folder, f), model.image_shape, resize) for f in chunk])
            yield images, values[start : start + len(chunk)]

    return attribute_directions(model, batches(), names)
