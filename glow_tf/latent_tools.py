"""Sampling and latent-space tools over a trained Glow, live or exported.

Every tool here takes a :class:`glow_tf.inference.InferenceModel` (uint8 images in
and out, NumPy arrays; a model in this process or a SavedModel written by
:mod:`glow_tf.export`), which this module re-exports with
:func:`~glow_tf.inference.load_inference_model`. The maths, as the original:

* sample grids: ``z = mean + exp(logs) * T * N(0, 1)`` at every level (T scales the noise only);
* interpolation: ``decode((1 - t) * eps_a + t * eps_b)`` for ``t`` in ``[0, 1]``;
* attribute manipulation: ``decode(eps + alpha * dz)`` with a direction from
  :mod:`glow_tf.attributes`.

Encodings here are deterministic (bin midpoints, no dequantisation noise), so
``decode(encode(x))`` gives back ``x`` (at the model's bit depth) exactly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from glow_tf import _validate, summaries
from glow_tf.data import transforms
from glow_tf.inference import InferenceModel, check_temperature, load_inference_model

__all__ = [
    "InferenceModel",
    "load_inference_model",
    "check_temperature",
    "sample_grids",
    "interpolate",
    "manipulate",
    "load_image",
    "save_pngs",
]


def _single_image(model: InferenceModel, image, what: str) -> np.ndarray:
    """``[1, H, W, C]`` from one ``[H, W, C]`` image (or a batch of one)."""
    image = np.asarray(image)
    return model.check_images(image[None] if image.ndim == 3 else image, what)[:1]


def sample_grids(
    model: InferenceModel,
    temperatures: Sequence[float] = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    num_samples: int = 16,
    classes: Sequence[int] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Grids of samples at each temperature (per class for a class-conditional model).

    Every grid of one call uses the same noise draw (``seed``), so grids differ
    only by temperature (and class).

    Args:
      model: the model.
      temperatures: each >= 0.
      num_samples: images per grid.
      classes: class ids to draw (default: all classes); must be None when unconditional.
      seed: noise seed.

    Returns:
      ``{"T0.70": grid}`` or ``{"class3_T0.70": grid}``: uint8 ``[H', W', C]`` grids.

    Raises:
      ValueError: a negative temperature, classes for an unconditional model, or a class out of range.
    """
    temperatures = [check_temperature(t) for t in temperatures]
    if model.num_classes:
        classes = list(range(model.num_classes)) if classes is None else list(classes)
        if not classes:
            raise ValueError("sample_grids: classes is empty; pass class ids or None for every class.")
        model.check_labels(np.asarray(classes, np.int64), len(classes), "sample_grids")  # range check up front
    elif classes is not None:
        raise ValueError("sample_grids: classes given, but the model is not class-conditional.")
    grids = {}
    for c in classes if model.num_classes else [None]:
        for t in temperatures:
            labels = None if c is None else np.full([num_samples], c, np.int32)
            name = f"T{t:.2f}" if c is None else f"class{c}_T{t:.2f}"
            grids[name] = summaries.image_grid(model.sample(num_samples, t, labels, seed=seed))
    return grids


def interpolate(model: InferenceModel, image_a, image_b, steps: int = 8, labels=None) -> np.ndarray:
    """Decodes ``(1 - t) * eps_a + t * eps_b`` for ``steps`` evenly spaced ``t`` in ``[0, 1]``.

    The first image is the reconstruction of ``image_a`` and the last that of
    ``image_b``. For a class-conditional model ``labels = (label_a, label_b)``; each
    frame is decoded with the label of the nearer end.

    Returns:
      uint8 ``[steps, H, W, C]``.

    Raises:
      ValueError: ``steps`` < 2, or images/labels that do not fit the model.
    """
    _validate.integer(steps, "steps", minimum=2)
    pair = np.concatenate([_single_image(model, image_a, "interpolate"), _single_image(model, image_b, "interpolate")])
    pair_labels = None if labels is None else np.asarray(labels).reshape(-1)
    flat = model.flatten_latents(model.encode(pair, pair_labels))
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    mixes = (1.0 - t) * flat[:1] + t * flat[1:]
    frame_labels = None if pair_labels is None else np.where(t[:, 0] < 0.5, pair_labels[0], pair_labels[-1])
    return model.decode(model.unflatten_latents(mixes), frame_labels)


def manipulate(model: InferenceModel, image, direction, alphas: Sequence[float], label=None) -> np.ndarray:
    """Decodes ``eps + alpha * direction`` of one image for each ``alpha`` (alpha 0: the reconstruction).

    Args:
      model: the model.
      image: uint8 ``[H, W, C]``.
      direction: flat ``[D]`` latent direction (e.g. ``Directions.get(name)``).
      alphas: strengths.
      label: class id for a class-conditional model.

    Returns:
      uint8 ``[len(alphas), H, W, C]``.

    Raises:
      ValueError: an image or direction that does not fit the model, or no alphas.
    """
    direction = np.asarray(direction, np.float32).reshape(-1)
    if direction.size != model.latent_size:
        raise ValueError(f"direction has {direction.size} entries; the model's latent size is {model.latent_size}.")
    alphas = np.asarray(alphas, np.float32).reshape(-1)
    if alphas.size == 0:
        raise ValueError("manipulate needs at least one alpha.")
    labels = None if label is None else np.asarray([label])
    flat = model.flatten_latents(model.encode(_single_image(model, image, "manipulate"), labels))
    edits = flat + alphas[:, None] * direction[None]
    return model.decode(model.unflatten_latents(edits), None if label is None else np.full([alphas.size], label))


def load_image(path: str, image_shape: Sequence[int], resize: bool = False) -> np.ndarray:
    """Reads a PNG/JPEG/BMP/GIF file as uint8 ``[H, W, C]`` for a model of ``image_shape``.

    An image whose channels differ from the model's is converted (gray <-> RGB as
    :func:`glow_tf.data.transforms.convert_channels`; alpha is dropped) with a
    logged note naming the file. With ``resize`` the largest central square is
    cropped and resized (area) to the model's size.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the image has another size and ``resize`` is False.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"No image file {path!r}.")
    height, width, channels = (int(d) for d in image_shape)
    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    have = int(image.shape[-1])
    if have != channels:
        kinds = {1: "grayscale", 2: "grayscale+alpha", 3: "RGB", 4: "RGBA"}
        logging.warning(
            "%s: converting a %s image to %s for this %d-channel model.",
            path,
            kinds.get(have, f"{have}-channel"),
            kinds[channels],
            channels,
        )
        image = transforms.convert_channels(image[..., :1] if have == 2 else image, channels)
    if tuple(image.shape[:2]) != (height, width):
        if not resize:
            raise ValueError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]}, the model takes {height}x{width} "
                "(pass resize=True / --resize to centre-crop and resize)."
            )
        side = min(int(image.shape[0]), int(image.shape[1]))
        image = tf.image.resize_with_crop_or_pad(image, side, side)
        image = tf.cast(tf.round(tf.image.resize(image, [height, width], method="area")), tf.uint8)
    return image.numpy()


def save_pngs(images: Mapping[str, np.ndarray], out_dir: str, prefix: str = "") -> list[str]:
    """Writes ``name -> [H, W, C]`` uint8 images as ``out_dir/<prefix><name>.png``; returns the paths."""
    return [summaries.write_png(os.path.join(out_dir, f"{prefix}{name}.png"), img) for name, img in images.items()]
