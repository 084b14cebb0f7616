"""Bits per dimension and friends, as the original Glow objective defines them.

For a continuous density ``log p(x)`` (nats) on the model space of
:mod:`glow_tf.quantization`, the discrete data with ``D = H*W*C`` dimensions and
``n_bins = 2**n_bits`` bins per dimension gets::

    objective    = log p(x) - D * log(n_bins)        # bin-width correction
    bits_per_dim = -objective / (D * ln 2)

so a density uniform on the data cube ``[-0.5, 0.5)^D`` (``log p = 0``) gives
exactly ``n_bits`` bits/dim. When ``log p(x)`` is a sum of terms ``t_j`` (per-level
log-determinants and prior log-densities), bits/dim splits the same way::

    bits_per_dim = n_bits + sum_j term_bits_per_dim(t_j),   term_bits_per_dim(t) = -t / (D * ln 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

__all__ = ["num_dims", "discrete_log_likelihood", "bits_per_dim", "term_bits_per_dim", "nats_to_bits"]


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


def term_bits_per_dim(log_density: tf.Tensor, image_shape: Sequence[int]) -> tf.Tensor:
    """The bits/dim that one term of ``log p(x)`` contributes: ``-term / (D ln 2)``.

    Args:
      log_density: a term of the log-density in nats (any shape, e.g. ``[B, L]`` per level).
      image_shape: ``[H, W, C]`` of one image.

    Returns:
      ``-log_density / (D ln 2)``; with the constant ``n_bits`` these add up to :func:`bits_per_dim`.
    """
    return -nats_to_bits(log_density) / num_dims(image_shape)


def nats_to_bits(nats: tf.Tensor) -> tf.Tensor:
    """``nats / ln 2``."""
    return nats / math.log(2.0)
