"""Multi-scale split: the learned conditional prior p(z2 | z1) and the factoring-out of z2."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import _validate, nn
from glow_tf.bijectors.base import GlowBijector, apply_to_images, sum_over_image, validate_channels

tfb = tfp.bijectors

__all__ = ["SplitPrior", "FactorOut"]


class SplitPrior(GlowBijector):
    """The split prior ``p(z2 | z1) = N(mean(z1), exp(logs(z1)))`` as a bijector to standard-normal eps.

    With ``x = [z1, z2]`` split on channels (``C1 = C // 2``) and
    ``h = conv3x3_zeros(z1)`` (``2 * C2`` channels)::

        mean = h[..., :C2];  logs = h[..., C2:]
        inverse (image -> latent):  [z1, z2] -> [z1, (z2 - mean) * exp(-logs)]
        forward (latent -> image):  [z1, eps] -> [z1, mean + exp(logs) * eps]
        ildj = -sum(logs)

    so ``log N(eps; 0, 1) + ildj = log p(z2 | z1)``. The zero-initialised network
    gives mean 0 and std 1 at init. Sampling at temperature T scales eps by T. (The
    original interleaves mean and logs channels; contiguous halves are the same layer
    with its zero-initialised output channels relabelled, see ``AffineCoupling``.)
    """

    def __init__(
        self,
        channels: int,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        name = name or "split_prior"
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
        self.network = nn.Conv2DZeros(  # in this layer's scope: <name>/kernel
            self.split_channels, 2 * (channels - self.split_channels), 3, dtype=dtype, name=self.name
        )

    def _halves(self, t):
        return tf.split(t, [self.split_channels, self.channels - self.split_channels], axis=-1)

    def weights(self):
        return self.network.weights()

    def prepare(self, weights, event_shape, decode=False):
        return nn.fold_scaled_conv(weights, int(event_shape[0]), int(event_shape[1]), self.dtype)

    def mean_and_log_scale_with(self, prepared, z1: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(mean, logs)`` of ``p(z2 | z1)`` from prepared weights."""
        return tf.split(apply_to_images(lambda t: nn.apply_folded_conv(t, *prepared), z1), 2, axis=-1)

    def mean_and_log_scale(self, z1: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(mean, logs)`` of ``p(z2 | z1)``."""
        shape = [*z1.shape[-3:-1], self.channels]
        return self.mean_and_log_scale_with(self.prepare(self.weights(), shape), z1)

    def encode_with(self, prepared, x, **kwargs):
        z1, z2 = self._halves(x)
        mean, logs = self.mean_and_log_scale_with(prepared, z1)
        eps = (z2 - mean) * tf.exp(-logs)
        return tf.concat([z1, eps], axis=-1), -sum_over_image(logs)

    def decode_with(self, prepared, z, **kwargs):
        z1, eps = self._halves(z)
        mean, logs = self.mean_and_log_scale_with(prepared, z1)
        return tf.concat([z1, mean + tf.exp(logs) * eps], axis=-1)

    def _forward(self, z):
        return self.decode(z)

    def _inverse(self, x):
        return self.inverse_and_log_det(x)[0]

    def _inverse_log_det_jacobian(self, x):
        _, logs = self.mean_and_log_scale(self._halves(x)[0])
        return -sum_over_image(logs)

    def _forward_log_det_jacobian(self, z):
        _, logs = self.mean_and_log_scale(self._halves(z)[0])
        return sum_over_image(logs)


class FactorOut(tfb.Bijector):
    """Factors out the last channels of an image event and hands the rest to ``inner``.

    ``inner`` maps a flat latent (forward) to the kept channels ``[H, W, C1]``::

        inverse:  [H, W, C] -> concat(flatten(x[..., C1:]), inner.inverse(x[..., :C1]))
        forward:  y -> concat(inner.forward(y[n2:]), reshape(y[:n2], [H, W, C - C1]))
        ildj = inner's ildj on x[..., :C1]

    so the model's whole latent is one flat vector ``[eps_1, eps_2, ..., eps_top]``.
    Conditioning keyword arguments pass through to ``inner`` unchanged.
    """

    def __init__(
        self,
        inner: tfb.Bijector,
        image_shape: Sequence[int],
        kept_channels: int,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        h, w, c = (int(d) for d in image_shape)
        kept_channels = _validate.integer(kept_channels, "FactorOut: kept_channels", 1, c - 1)
        self.inner = inner
        self.image_shape = [h, w, c]
        self.kept_channels = kept_channels
        self.factored_size = h * w * (c - kept_channels)
        inner_size = inner.inverse_event_shape([h, w, kept_channels])
        if inner_size.rank != 1 or inner_size[0] is None:
            raise ValueError(f"FactorOut: inner must map [H, W, C1] to a flat latent, got {inner_size}.")
        self.latent_size = self.factored_size + int(inner_size[0])
        super().__init__(
            forward_min_event_ndims=1,
            inverse_min_event_ndims=3,
            validate_args=validate_args,
            parameters=parameters,
            name=name or "factor_out",
        )

    def _get_parameterization(self):
        return id(self)

    def _forward(self, y, **kwargs):
        h, w, c = self.image_shape
        batch = tf.shape(y)[:-1]
        factored = tf.reshape(y[..., : self.factored_size], tf.concat([batch, [h, w, c - self.kept_channels]], 0))
        kept = self.inner.forward(y[..., self.factored_size :], **kwargs)
        return tf.concat([kept, factored], axis=-1)

    def _inverse(self, x, **kwargs):
        batch = tf.shape(x)[:-3]
        factored = tf.reshape(x[..., self.kept_channels :], tf.concat([batch, [self.factored_size]], 0))
        kept = self.inner.inverse(x[..., : self.kept_channels], **kwargs)
        return tf.concat([factored, kept], axis=-1)

    def _inverse_log_det_jacobian(self, x, **kwargs):
        return self.inner.inverse_log_det_jacobian(x[..., : self.kept_channels], event_ndims=3, **kwargs)

    def _forward_log_det_jacobian(self, y, **kwargs):
        return self.inner.forward_log_det_jacobian(y[..., self.factored_size :], event_ndims=1, **kwargs)

    def _forward_event_shape(self, input_shape):
        return input_shape[:-1].concatenate(self.image_shape)

    def _inverse_event_shape(self, output_shape):
        return output_shape[:-3].concatenate([self.latent_size])

    def _forward_event_shape_tensor(self, input_shape):
        return tf.concat([input_shape[:-1], self.image_shape], 0)

    def _inverse_event_shape_tensor(self, output_shape):
        return tf.concat([output_shape[:-3], [self.latent_size]], 0)
