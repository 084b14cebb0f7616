"""The top-level prior: learned (``learn_top``) and class-conditional, as a bijector to eps."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from glow_tf import _validate, nn
from glow_tf._scopes import name_scope
from glow_tf.bijectors.base import GlowBijector, sum_over_image, validate_channels

__all__ = ["TopPrior"]


class TopPrior(GlowBijector):
    """The top prior ``N(mean, exp(logs))`` of the original as a bijector to standard-normal eps.

    With ``h = 0`` of shape ``[H, W, 2C]``; ``h = conv3x3_zeros(h)`` if ``learn_top``
    (a learned per-position map through the bias and the edge-bias border channel);
    ``h += linear_zeros(one_hot(labels))`` broadcast over positions if
    ``num_classes > 0``; and ``mean, logs = h[..., :C], h[..., C:]``::

        inverse (image -> latent):  eps = (z - mean) * exp(-logs)
        forward (latent -> image):  z = mean + exp(logs) * eps
        ildj = -sum(logs)

    Labels pass as a bijector keyword argument: ``bijector.inverse(z, labels=y)``,
    as int class indices ``[B]`` or (soft) one-hot vectors ``[B, num_classes]``.
    Zero-initialised networks make the prior N(0, 1) at init.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        learn_top: bool = False,
        num_classes: int = 0,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        name = name or "top_prior"
        h, w, c = (int(d) for d in event_shape)
        validate_channels(c, name)
        num_classes = _validate.integer(num_classes, f"{name}: num_classes", minimum=0)
        super().__init__(
            forward_min_event_ndims=3,
            is_constant_jacobian=not (learn_top or num_classes),
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )
        self.event_shape_ = [h, w, c]
        self.learn_top = bool(learn_top)
        self.num_classes = num_classes
        with self.name_scope:
            self.network = nn.Conv2DZeros(2 * c, 2 * c, 3, dtype=dtype, name="learned_top") if learn_top else None
            self.embedding = (
                nn.LinearZeros(num_classes, 2 * c, dtype=dtype, name="label_embedding") if num_classes else None
            )

    def one_hot(self, labels: tf.Tensor) -> tf.Tensor:
        """Integer labels ``[B]`` to one-hot ``[B, num_classes]``; float labels pass through."""
        labels = tf.convert_to_tensor(labels)
        if labels.dtype.is_integer:
            return tf.one_hot(labels, self.num_classes, dtype=self.dtype)
        return tf.cast(labels, self.dtype)

    def weights(self):
        network = self.network.weights() if self.network is not None else ()
        return network + (self.embedding.weights() if self.embedding is not None else ())

    def prepare(self, weights, event_shape, decode=False):
        """``(map, embedding weights...)``: the label-independent ``[H, W, 2C]`` map of mean and log-std."""
        h, w, c = self.event_shape_
        params = tf.zeros([h, w, 2 * c], self.dtype)
        if self.network is not None:
            with name_scope(self.network.name):
                folded = nn.fold_scaled_conv(weights[:3], h, w, self.dtype)
                params = nn.apply_folded_conv(params[tf.newaxis], *folded)[0]
            weights = weights[3:]
        return (params, *weights)

    def mean_and_log_scale_with(self, prepared, labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(mean, logs)`` from prepared weights: ``[H, W, C]`` each, or ``[B, H, W, C]`` given labels ``[B]``."""
        params, embedding = prepared[0], prepared[1:]
        if self.embedding is not None:
            if labels is None:
                raise ValueError(
                    f"{self.name}: this prior is class-conditional ({self.num_classes} classes); pass labels."
                )
            with name_scope(self.embedding.name):
                emb = nn.LinearZeros.apply(embedding, self.one_hot(labels))
            params = params + emb[..., tf.newaxis, tf.newaxis, :]
        c = self.event_shape_[-1]
        return params[..., :c], params[..., c:]

    def mean_and_log_scale(self, labels: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(mean, logs)``: ``[H, W, C]`` each, or ``[B, H, W, C]`` given labels ``[B]``."""
        return self.mean_and_log_scale_with(self.prepare(self.weights(), self.event_shape_), labels)

    def encode_with(self, prepared, z, labels=None, **kwargs):
        mean, logs = self.mean_and_log_scale_with(prepared, labels)
        return (z - mean) * tf.exp(-logs), -sum_over_image(logs)

    def decode_with(self, prepared, eps, labels=None, **kwargs):
        mean, logs = self.mean_and_log_scale_with(prepared, labels)
        return mean + tf.exp(logs) * eps

    def _forward(self, eps, labels=None):
        return self.decode(eps, labels=labels)

    def _inverse(self, z, labels=None):
        return self.inverse_and_log_det(z, labels=labels)[0]

    def _inverse_log_det_jacobian(self, z, labels=None):
        return -sum_over_image(self.mean_and_log_scale(labels)[1])

    def _forward_log_det_jacobian(self, eps, labels=None):
        return sum_over_image(self.mean_and_log_scale(labels)[1])
