"""Affine and additive coupling layers exactly as the original computes them."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from glow_tf import nn
from glow_tf.bijectors.base import (
    GlowBijector,
    apply_to_images,
    per_example,
    sum_over_image,
    validate_channels,
    zeros_for_none,
)

__all__ = ["AffineCoupling", "AdditiveCoupling", "COUPLING_KINDS", "COMPUTE_DTYPES"]

COUPLING_KINDS = ("affine", "additive")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # what a coupling's network may compute in (compute_dtype)


class _Coupling(GlowBijector):
    """The first ``C1 = C // 2`` channels pass unchanged and condition the rest.

    ``compute_dtype`` (default ``dtype``) is the dtype the network ``NN`` runs in,
    e.g. ``tf.bfloat16`` for mixed precision; the coupling maths and log-det stay
    in ``dtype``.
    """

    def __init__(
        self, channels, hidden_width, network_channels, seed, dtype, compute_dtype, validate_args, parameters, name
    ):
        channels = validate_channels(channels, name, minimum=2)
        super().__init__(
            forward_min_event_ndims=3,
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )
        self.channels = channels
        self.split_channels = channels // 2
        out_channels = network_channels(channels - self.split_channels)
        self.network = nn.CouplingNetwork(  # in this layer's scope: <name>/conv1/kernel
            self.split_channels,
            out_channels,
            hidden_width,
            seed=seed,
            dtype=dtype,
            compute_dtype=compute_dtype,
            name=self.name,
        )

    def _halves(self, t):
        return tf.split(t, [self.split_channels, self.channels - self.split_channels], axis=-1)

    def weights(self):
        return self.network.weights()

    def prepare(self, weights, event_shape, decode=False):
        return self.network.prepare(weights, int(event_shape[0]), int(event_shape[1]))

    def network_output(self, prepared, x1: tf.Tensor) -> tf.Tensor:
        """``NN(x1)`` from prepared network weights, for any batch rank ``[..., H, W, C1]``."""
        return apply_to_images(lambda t: self.network.apply(prepared, t), x1)

    def couple(self, x2: tf.Tensor, h: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The coupling maths given the network output ``h = NN(x1)``: ``(z2, ildj)``."""
        raise NotImplementedError

    def uncouple(self, z2: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
        """The inverse of :meth:`couple` for the same ``h``: ``x2``."""
        raise NotImplementedError

    def encode_with(self, prepared, x, **kwargs):
        x1, x2 = self._halves(x)
        z2, log_det = self.couple(x2, self.network_output(prepared, x1))
        return tf.concat([x1, z2], axis=-1), log_det

    def decode_with(self, prepared, z, **kwargs):
        z1, z2 = self._halves(z)
        return tf.concat([z1, self.uncouple(z2, self.network_output(prepared, z1))], axis=-1)

    def initialize_and_encode(self, x, **kwargs):
        x1, x2 = self._halves(x)
        z2, log_det = self.couple(x2, self.network(x1))  # the network initialises its actnorms
        return tf.concat([x1, z2], axis=-1), log_det

    def rebuild_and_vjp(self, weights, zs, dzs, dlds):
        """:meth:`GlowBijector.rebuild_and_vjp` with one evaluation of the network.

        ``z1 = x1``, so ``h = NN(z1)`` is the network output of the forward pass: it
        gives ``x2 = uncouple(z2, h)`` and, differentiated, the whole product.
        """
        shape, split = zs[0].shape[-3:], self.split_channels
        with tf.GradientTape() as tape:
            tape.watch(list(weights))
            prepared = self.prepare(weights, shape)
            z1s = [z[..., :split] for z in zs]
            tape.watch(z1s)
            hs = [self.network_output(prepared, z1) for z1 in z1s]
            x2s = [tf.stop_gradient(self.uncouple(z[..., split:], h)) for z, h in zip(zs, hs)]
            tape.watch(x2s)
            outs = [self.couple(x2, h) for x2, h in zip(x2s, hs)]
            lds = [per_example(ld, x2) for (_, ld), x2 in zip(outs, x2s)]
        dz2s = [dz[..., split:] for dz in dzs]
        dz1_net, dx2s, dweights = tape.gradient(
            ([z2 for z2, _ in outs], lds), (z1s, x2s, list(weights)), output_gradients=(dz2s, dlds)
        )
        dz1_net, dx2s = zeros_for_none(dz1_net, z1s), zeros_for_none(dx2s, x2s)
        xs = [tf.concat([z1, x2], axis=-1) for z1, x2 in zip(z1s, x2s)]
        dxs = [tf.concat([dz[..., :split] + g1, g2], axis=-1) for dz, g1, g2 in zip(dzs, dz1_net, dx2s)]
        return xs, dxs, tuple(zeros_for_none(dweights, weights))

    def _forward(self, z):
        return self.decode(z)

    def _inverse(self, x):
        return self.inverse_and_log_det(x)[0]

    def _inverse_log_det_jacobian(self, x):
        return self.inverse_and_log_det(x)[1]

    def _forward_log_det_jacobian(self, z):
        return -self._inverse_log_det_jacobian(z)  # x1 = z1, so the network sees the same input


class AffineCoupling(_Coupling):
    """The original's affine coupling.

    With ``x = [x1, x2]`` split on channels and ``h = NN(x1)`` (``2 * C2`` channels)::

        shift = h[..., :C2];  scale = sigmoid(h[..., C2:] + 2)
        inverse (image -> latent):  z = [x1, (x2 + shift) * scale]
        forward (latent -> image):  x = [z1, z2 / scale - shift]
        ildj = sum log(scale)

    The network's last layer starts at zero, so at init ``scale = sigmoid(2) ~= 0.881``
    (the step is not the identity, as in the original). The original reads shift and
    scale from interleaved channels (``h[..., 0::2]``, ``h[..., 1::2]``); we store the
    zero-initialised last layer's output channels as contiguous halves instead. That
    only relabels that layer's output channels: the same function family, the same
    init and (Adamax being elementwise) the same training trajectory, without strided
    slices in the hot path.
    """

    def __init__(
        self,
        channels: int,
        hidden_width: int = 512,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | None = None,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(
            channels,
            hidden_width,
            lambda c2: 2 * c2,
            seed,
            dtype,
            compute_dtype,
            validate_args,
            parameters,
            name or "affine_coupling",
        )

    @staticmethod
    def _shift_and_logit(h):
        """``(shift, u)`` with ``scale = sigmoid(u)``."""
        shift, raw_scale = tf.split(h, 2, axis=-1)
        return shift, raw_scale + 2.0

    def couple(self, x2, h):
        shift, u = self._shift_and_logit(h)
        return (x2 + shift) * tf.sigmoid(u), sum_over_image(tf.math.log_sigmoid(u))

    def uncouple(self, z2, h):
        shift, u = self._shift_and_logit(h)
        return z2 * (1.0 + tf.exp(-u)) - shift  # 1 / sigmoid(u) = 1 + exp(-u)


class AdditiveCoupling(_Coupling):
    """The original's additive coupling (NICE).

    ::

        inverse (image -> latent):  z = [x1, x2 + NN(x1)]
        forward (latent -> image):  x = [z1, z2 - NN(z1)]
        ildj = 0

    The zero-initialised last layer makes the layer the identity at init.
    """

    def __init__(
        self,
        channels: int,
        hidden_width: int = 512,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | None = None,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        super().__init__(
            channels,
            hidden_width,
            lambda c2: c2,
            seed,
            dtype,
            compute_dtype,
            validate_args,
            parameters,
            name or "additive_coupling",
        )

    def couple(self, x2, h):
        return x2 + h, tf.zeros([], x2.dtype)

    def uncouple(self, z2, h):
        return z2 - h

    def _inverse_log_det_jacobian(self, x):
        return tf.zeros([], self.dtype)
