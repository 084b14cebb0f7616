"""Invertible 1x1 convolutions: a learned CxC matrix applied at every position."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from glow_tf.bijectors.base import GlowBijector, num_positions, validate_channels

__all__ = ["InvertibleConv1x1", "LUInvertibleConv1x1", "random_rotation", "log_abs_det"]


def random_rotation(channels: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """A random orthogonal ``[C, C]`` matrix: Q of the QR decomposition of a Gaussian matrix."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=[channels, channels]))
    return q


def log_abs_det(w: tf.Tensor) -> tf.Tensor:
    """``log|det W|`` computed in float64 as ``sum(log|diag(R)|)`` of ``W = QR``.

    QR has gradients and an XLA CPU kernel, unlike ``slogdet``.
    """
    r = tf.linalg.qr(tf.cast(w, tf.float64))[1]
    return tf.cast(tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(r)))), w.dtype)


def _matmul_channels(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """``y[..., j] = sum_i x[..., i] w[i, j]`` as one 2-D matmul."""
    channels = int(w.shape[0])
    y = tf.matmul(tf.reshape(x, [-1, channels]), w)
    return tf.reshape(y, tf.shape(x))


class _Conv1x1(GlowBijector):
    """Shared maths: ``inverse(x) = x W``, ``forward(z) = z W^-1``, ildj = log|det W| per position.

    Subclasses define ``W``, ``W^-1`` and ``log|det W|`` as functions of ``weights()``.
    """

    def __init__(self, channels, dtype, validate_args, parameters, name):
        channels = validate_channels(channels, name)
        self.channels = channels
        super().__init__(
            forward_min_event_ndims=1,
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )

    def weight_of(self, weights: tuple) -> tf.Tensor:
        """The ``[C, C]`` matrix ``W`` of the encode direction."""
        raise NotImplementedError

    def inverse_weight_of(self, weights: tuple) -> tf.Tensor:
        """``W^-1``, computed once per call (never per position)."""
        raise NotImplementedError

    def log_abs_det_of(self, weights: tuple) -> tf.Tensor:
        """``log|det W|``."""
        raise NotImplementedError

    def weight(self) -> tf.Tensor:
        """``W`` of this layer's current weights."""
        return self.weight_of(self.weights())

    def inverse_weight(self) -> tf.Tensor:
        """``W^-1`` of this layer's current weights."""
        return self.inverse_weight_of(self.weights())

    def log_abs_det_weight(self) -> tf.Tensor:
        """``log|det W|`` of this layer's current weights."""
        return self.log_abs_det_of(self.weights())

    def prepare(self, weights, event_shape, decode=False):
        if decode:
            return (self.inverse_weight_of(weights),)
        return self.weight_of(weights), self.log_abs_det_of(weights)

    def encode_with(self, prepared, x, **kwargs):
        w, log_det = prepared
        return _matmul_channels(x, w), num_positions(x) * log_det

    def decode_with(self, prepared, z, **kwargs):
        return _matmul_channels(z, prepared[0])

    def _forward(self, z):
        return _matmul_channels(z, self.inverse_weight())

    def _inverse(self, x):
        return _matmul_channels(x, self.weight())

    def _inverse_log_det_jacobian(self, x):
        return self.log_abs_det_weight()

    def _forward_log_det_jacobian(self, z):
        return -self.log_abs_det_weight()


class InvertibleConv1x1(_Conv1x1):
    """Invertible 1x1 convolution with an unconstrained matrix ``W`` (the original's default).

    ::

        inverse (image -> latent):  z = x W          (at every position)
        forward (latent -> image):  x = z W^-1
        ildj = log|det W| per position, the determinant taken in float64

    ``W`` starts as a random rotation (log-det 0).
    """

    def __init__(
        self,
        channels: int,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(channels, dtype, validate_args, parameters, name or "invertible_conv1x1")
        with self.name_scope:
            self.w = tf.Variable(tf.constant(random_rotation(self.channels, seed), dtype), name="w")

    def weights(self):
        return (tf.convert_to_tensor(self.w),)

    def weight_of(self, weights):
        return weights[0]

    def inverse_weight_of(self, weights):
        return tf.linalg.inv(weights[0])

    def log_abs_det_of(self, weights):
        return log_abs_det(weights[0])


class LUInvertibleConv1x1(_Conv1x1):
    """Invertible 1x1 convolution in the LU parametrisation (paper eq. 10).

    ::

        W = P L (U + diag(sign_s * exp(log_s)))
        ildj = sum(log_s) per position

    ``P`` (a permutation) and ``sign_s`` are fixed; ``L`` (unit lower triangular),
    ``U`` (strictly upper triangular) and ``log_s`` are trained. All start from the
    LU decomposition of a random rotation. ``P`` and ``sign_s`` are stored as
    non-trainable variables so a checkpoint restores them. ``weights()`` is
    ``(P, sign_s, L, U, log_s)``.
    """

    def __init__(
        self,
        channels: int,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(channels, dtype, validate_args, parameters, name or "lu_invertible_conv1x1")
        channels = self.channels
        w0 = tf.constant(random_rotation(channels, seed), tf.float64)
        lu, perm = tf.linalg.lu(w0)  # w0[perm] = L @ U
        lower = tf.linalg.band_part(lu, -1, 0) - tf.linalg.diag(tf.linalg.diag_part(lu))
        upper = tf.linalg.band_part(lu, 0, -1)
        s = tf.linalg.diag_part(upper)
        permutation = tf.transpose(tf.gather(tf.eye(channels, dtype=tf.float64), perm))
        ones = np.ones([channels, channels])
        self._lower_mask = tf.constant(np.tril(ones, -1), dtype)
        self._upper_mask = tf.constant(np.triu(ones, 1), dtype)
        with self.name_scope:
            self.permutation = tf.Variable(tf.cast(permutation, dtype), trainable=False, name="permutation")
            self.sign_s = tf.Variable(tf.cast(tf.sign(s), dtype), trainable=False, name="sign_s")
            self.lower = tf.Variable(tf.cast(lower, dtype), name="lower")
            self.upper = tf.Variable(tf.cast(upper - tf.linalg.diag(s), dtype), name="upper")
            self.log_s = tf.Variable(tf.cast(tf.math.log(tf.abs(s)), dtype), name="log_s")

    def weights(self):
        variables = (self.permutation, self.sign_s, self.lower, self.upper, self.log_s)
        return tuple(tf.convert_to_tensor(v) for v in variables)

    def _factors(self, weights) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        permutation, sign_s, lower, upper, log_s = weights
        eye = tf.eye(self.channels, dtype=self.dtype)
        lower = lower * self._lower_mask + eye
        upper = upper * self._upper_mask + tf.linalg.diag(sign_s * tf.exp(log_s))
        return permutation, lower, upper

    def weight_of(self, weights):
        permutation, lower, upper = self._factors(weights)
        return tf.matmul(permutation, tf.matmul(lower, upper))

    def inverse_weight_of(self, weights):
        permutation, lower, upper = self._factors(weights)
        l_inv_pt = tf.linalg.triangular_solve(lower, tf.transpose(permutation), lower=True)
        return tf.linalg.triangular_solve(upper, l_inv_pt, lower=False)

    def log_abs_det_of(self, weights):
        return tf.reduce_sum(weights[4])
