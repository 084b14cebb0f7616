"""Pixel quantisation maths of the original Glow: the one home for it.

With ``n_bins = 2**n_bits`` an 8-bit image ``u`` maps to the model space as::

    q = floor(u / 2**(8 - n_bits))          # 0 .. n_bins - 1
    x = q / n_bins - 0.5                    # [-0.5, 0.5 - 1/n_bins]
    x_deq = x + Uniform(0, 1 / n_bins)      # dequantisation (train and test)

and back to 8 bits as ``clip(floor((x + 0.5) * n_bins) * (256 / n_bins), 0, 255)``.
The bin-width term of the objective lives in :mod:`glow_tf.metrics`.
"""

from __future__ import annotations

import tensorflow as tf

from glow_tf import _validate

__all__ = ["num_bins", "validate_n_bits", "preprocess", "dequantize", "postprocess"]


def validate_n_bits(n_bits: int) -> int:
    """Returns ``n_bits`` as an int, or raises ``ValueError`` unless 1 <= n_bits <= 8."""
    return _validate.integer(n_bits, "n_bits", minimum=1, maximum=8)


def num_bins(n_bits: int) -> int:
    """Number of quantisation bins, ``2**n_bits``."""
    return 2 ** validate_n_bits(n_bits)


def preprocess(images: tf.Tensor, n_bits: int = 8, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Maps uint8 images to bin left edges in ``[-0.5, 0.5 - 1/n_bins]``.

    Args:
      images: integer tensor of 8-bit pixel values (any shape), 0..255.
      n_bits: bits kept per pixel; lower bits are dropped as in the original.
      dtype: float dtype of the result.

    Returns:
      ``floor(images / 2**(8 - n_bits)) / 2**n_bits - 0.5`` in ``dtype`` (no noise).
    """
    bins = num_bins(n_bits)
    x = tf.cast(images, dtype)
    if n_bits < 8:
        x = tf.floor(x / (2 ** (8 - n_bits)))
    return x / bins - 0.5


def dequantize(x: tf.Tensor, n_bits: int = 8, seed: tf.Tensor | None = None) -> tf.Tensor:
    """Adds uniform noise of one bin width: ``x + U(0, 1/n_bins)``.

    Args:
      x: output of :func:`preprocess`.
      n_bits: bits per pixel used by :func:`preprocess`.
      seed: optional shape-[2] integer seed; when given the noise comes from
        ``tf.random.stateless_uniform`` so the same (seed) gives the same noise
        (a resumed run passes e.g. ``[seed, step]``).

    Returns:
      The dequantised tensor; every value lies inside its bin ``[x, x + 1/n_bins)``.
    """
    bins = num_bins(n_bits)
    shape = tf.shape(x)
    if seed is None:
        noise = tf.random.uniform(shape, 0.0, 1.0 / bins, dtype=x.dtype)
    else:
        noise = tf.random.stateless_uniform(shape, seed, 0.0, 1.0 / bins, dtype=x.dtype)
    return x + noise


def postprocess(x: tf.Tensor, n_bits: int = 8) -> tf.Tensor:
    """Maps model-space values back to uint8 pixels.

    ``clip(floor((x + 0.5) * n_bins) * (256 / n_bins), 0, 255)``, so
    ``postprocess(preprocess(u)) == u`` at 8 bits and equals ``u`` with its lower
    ``8 - n_bits`` bits cleared at fewer bits.
    """
    bins = num_bins(n_bits)
    pixels = tf.floor((x + 0.5) * bins) * (256 // bins)
    return tf.cast(tf.clip_by_value(pixels, 0.0, 255.0), tf.uint8)
