"""From uint8 batches to model inputs: the glue between the data and glow_tf.quantization.

The maths (bit reduction, scaling to ``[-0.5, 0.5)``, uniform dequantisation) lives in
:mod:`glow_tf.quantization`; this module only decides which noise seed a batch gets.
"""

from __future__ import annotations

import tensorflow as tf

from glow_tf import quantization

__all__ = ["deterministic_inputs", "keyed_model_inputs", "model_inputs", "noise_seed"]

# Distinguishes the dequantisation stream from other uses of the same user seed.
_DEQUANTIZE_TAG = 0x6465_7175  # "dequ"


def noise_seed(seed: int | tf.Tensor, step: int | tf.Tensor, replica_id: int | tf.Tensor = 0) -> tf.Tensor:
    """Shape-[2] int64 stateless seed derived from ``(seed, step, replica_id)``.

    ``fold_in(fold_in([seed, TAG], step), replica_id)``: a resumed run at the same step
    draws the same noise, and replicas draw different noise.
    """
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(_DEQUANTIZE_TAG, tf.int64)])
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(replica_id, tf.int64))


def model_inputs(
    images_uint8: tf.Tensor,
    n_bits: int,
    seed: int | tf.Tensor | None,
    step: int | tf.Tensor = 0,
    replica_id: int | tf.Tensor = 0,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Dequantised model inputs of a uint8 batch (train and eval, as the original).

    ``x = floor(u / 2**(8 - n_bits)) / 2**n_bits - 0.5 + U(0, 2**-n_bits)``, so every
    value lies inside its bin ``[q / n_bins - 0.5, (q + 1) / n_bins - 0.5)``.

    Args:
      images_uint8: ``[..., H, W, C]`` uint8 pixels.
      n_bits: bits per pixel, 1..8.
      seed: int seed; the noise is stateless from :func:`noise_seed` ``(seed, step,
        replica_id)``. ``None`` draws unseeded noise.
      step: training step (int or scalar tensor, e.g. ``optimizer.iterations``).
      replica_id: replica index inside the step (different replicas, different noise).
      dtype: float dtype of the result.

    Returns:
      Float tensor of the same shape in ``[-0.5, 0.5)``.
    """
    x = quantization.preprocess(images_uint8, n_bits, dtype)
    if seed is None:
        return quantization.dequantize(x, n_bits)
    return quantization.dequantize(x, n_bits, seed=noise_seed(seed, step, replica_id))


def keyed_model_inputs(
    images_uint8: tf.Tensor, n_bits: int, seed: tf.Tensor, keys: tf.Tensor, dtype: tf.DType = tf.float32
) -> tf.Tensor:
    """Dequantised model inputs whose noise is a function of each example's key alone.

    Example ``n`` gets ``quantization.dequantize(preprocess(u_n), seed=fold_in(seed, keys[n]))``, so
    its noise does not depend on the batch it is in, its position there or the batch size (use the
    example's index in its dataset as the key).

    Args:
      images_uint8: ``[N, H, W, C]`` uint8 pixels.
      n_bits: bits per pixel, 1..8.
      seed: shape-[2] int64 stateless seed (e.g. :func:`noise_seed` ``(seed, draw)``).
      keys: ``[N]`` int64 per-example keys.
      dtype: float dtype of the result.

    Returns:
      ``[N, H, W, C]`` floats in ``[-0.5, 0.5)``, each inside its bin.
    """
    x = quantization.preprocess(images_uint8, n_bits, dtype)
    seed = tf.cast(seed, tf.int64)

    def one(args):
        image, key = args
        return quantization.dequantize(image, n_bits, seed=tf.random.experimental.stateless_fold_in(seed, key))

    spec = tf.TensorSpec(x.shape[1:], dtype)
    return tf.map_fn(one, (x, tf.cast(keys, tf.int64)), fn_output_signature=spec)


def deterministic_inputs(images_uint8: tf.Tensor, n_bits: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Bin midpoints ``preprocess(u) + 0.5 / n_bins``: noise-free inputs for encoding and reconstruction.

    ``quantization.postprocess`` maps them back to the (bit-reduced) input exactly.
    """
    return quantization.preprocess(images_uint8, n_bits, dtype) + 0.5 / quantization.num_bins(n_bits)
