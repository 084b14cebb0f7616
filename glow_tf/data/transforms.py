"""Image geometry for the data pipeline: crop, resize, pad, channels, augmentation.

All functions take and return uint8 tensors. Resizing uses area averaging
(``tf.image.resize(method='area')``), which is the exact box filter for integer
factors and the identity when the size does not change.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = [
    "augment_batch",
    "center_crop",
    "convert_channels",
    "fit_square",
    "pad_to",
    "resize_square",
]


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    """``clip(round(x), 0, 255)`` as uint8."""
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def center_crop(image: tf.Tensor, height: int | tf.Tensor, width: int | tf.Tensor) -> tf.Tensor:
    """The central ``height x width`` window of ``[..., H, W, C]`` (top/left offsets rounded down)."""
    shape = tf.shape(image)
    top = (shape[-3] - height) // 2
    left = (shape[-2] - width) // 2
    return image[..., top : top + height, left : left + width, :]


def resize_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Area-resizes ``[..., H, W, C]`` uint8 to ``[..., size, size, C]`` (identity when already that size)."""
    return _to_uint8(tf.image.resize(image, [size, size], method="area"))


def fit_square(image: tf.Tensor, size: int) -> tf.Tensor:
    """Central square crop of side ``min(H, W)``, then area resize to ``size x size``.

    Args:
      image: ``[H, W, C]`` or ``[B, H, W, C]`` uint8, any H and W.
      size: output side.

    Returns:
      ``[..., size, size, C]`` uint8.
    """
    shape = tf.shape(image)
    side = tf.minimum(shape[-3], shape[-2])
    return resize_square(center_crop(image, side, side), size)


def pad_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """Zero-pads ``[..., h, w, C]`` (h, w <= size, static) to ``size x size``, centred (extra pixel bottom/right)."""
    h, w = int(image.shape[-3]), int(image.shape[-2])
    if h > size or w > size:
        raise ValueError(f"pad_to: image {h}x{w} is larger than size {size}.")
    top, left = (size - h) // 2, (size - w) // 2
    paddings = [[0, 0]] * (image.shape.rank - 3) + [[top, size - h - top], [left, size - w - left], [0, 0]]
    return tf.pad(image, paddings)


def convert_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Converts ``[..., C]`` uint8 (C in 1, 3, 4; static) to ``channels`` (1 or 3).

    RGBA drops alpha; RGB -> gray is ``tf.image.rgb_to_grayscale`` (ITU-R 601 luma,
    rounded); gray -> RGB tiles the channel (as the original did for MNIST).
    """
    have = int(image.shape[-1])
    if have == 4:
        image, have = image[..., :3], 3
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return tf.concat([image] * 3, axis=-1)
    if have == 3 and channels == 1:
        return tf.image.rgb_to_grayscale(image)
    raise ValueError(f"cannot convert images with {have} channels to {channels}; channels must be 1 or 3.")


def augment_batch(images: tf.Tensor, seed: tf.Tensor, random_shift: float, random_flip: bool) -> tf.Tensor:
    """Stateless per-image augmentation of a ``[B, H, W, C]`` uint8 batch.

    * shift: each image moves by integers ``dy, dx ~ U{-m..m}`` with ``m = floor(random_shift * H)``
      (resp. W); uncovered pixels repeat the nearest edge pixel (the original's
      ``ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1)`` with its default
      'nearest' fill, but whole-pixel shifts, so no interpolation blurs the 8-bit values).
    * flip: then each image is mirrored left-right with probability 1/2.

    Output pixel ``(y, x)`` of image ``b`` is input pixel ``(clip(y - dy_b), c_b(x))`` with
    ``c_b(x) = clip(x' - dx_b)``, ``x' = W-1-x`` if flipped else ``x``: one gather per batch.

    Args:
      images: ``[B, H, W, C]`` uint8 with static H, W, C.
      seed: shape-[2] int seed; the same seed gives the same augmentation.
      random_shift: max shift as a fraction of the image size (0: none).
      random_flip: whether to flip.

    Returns:
      The augmented batch, same shape and dtype.
    """
    height, width, channels = (int(d) for d in images.shape[1:])
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    max_dy, max_dx = int(random_shift * height), int(random_shift * width)
    if not (max_dy or max_dx or random_flip):
        return images
    dy = tf.random.stateless_uniform([batch], seeds[0], -max_dy, max_dy + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform([batch], seeds[1], -max_dx, max_dx + 1, dtype=tf.int32)
    rows = tf.clip_by_value(tf.range(height)[tf.newaxis, :] - dy[:, tf.newaxis], 0, height - 1)
    cols = tf.clip_by_value(tf.range(width)[tf.newaxis, :] - dx[:, tf.newaxis], 0, width - 1)
    if random_flip:
        flip = tf.random.stateless_uniform([batch], seeds[2], 0, 2, dtype=tf.int32) > 0
        cols = tf.where(flip[:, tf.newaxis], tf.reverse(cols, axis=[1]), cols)
    pixel = tf.reshape(rows[:, :, tf.newaxis] * width + cols[:, tf.newaxis, :], [batch, height * width])
    flat = tf.reshape(images, [batch, height * width, channels])
    return tf.reshape(tf.gather(flat, pixel, batch_dims=1), tf.shape(images))
