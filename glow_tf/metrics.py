"""Bits per dimension and friends, as the original Glow objective defines them.

For a continuous density ``log p(x)`` (nats) on the model space of
:mod:`glow_tf.quantization`, the discrete data with ``D = H*W*C`` dimensions and
``n_bins = 2**n_bits`` bins per dimension gets::

    objective    = log p(x) - D * log(n_bins)        # bin-width correction
    bits_per_dim = -objective / (D * ln 2)

so a density uniform on the data cube ``[-0.5, 0.5)^D`` (``log p = 0``) gives
exactly ``n_bits`` bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

__all__ = ["num_dims", "discrete_log_likelihood", "bits_per_dim", "nats_to_bits"]


def num_dims(image_shape: Sequence[int]) -> int:
    """``D = H * W * C`` for an image shape ``[H, W, C]``."""
    return int(math.prod(int(d) for d in image_shape))


def discrete_log_likelihood(log_prob: tf.Tensor, image_shape: Sequence[int], n_bits: int) -> tf.Tensor:
    """The original's objective: ``log p(x) - D * log(2**n_bits)`` in nats."""
    return log_prob - num_dims(image_shape) * n_bits * math.log(2.0)


def bits_per_dim(log_prob: tf.Tensor, image_shape: Sequence[int], n_bits: int) -> tf.Tensor:
    """Bits per dimension of the quantised data from a continuous ``log p(x)``.

    Args:
      log_prob: ``[B]`` log-density in nats on the model space.
      image_shape: ``[H, W, C]`` of one image.
      n_bits: bits per pixel of the data.

    Returns:
      ``[B]`` values ``-(log p(x) - D log n_bins) / (D ln 2)``.
    """
    objective = discrete_log_likelihood(log_prob, image_shape, n_bits)
    return -objective / (num_dims(image_shape) * math.log(2.0))


def nats_to_bits(nats: tf.Tensor) -> tf.Tensor:
    """``nats / ln 2``."""
    return nats / math.log(2.0)
