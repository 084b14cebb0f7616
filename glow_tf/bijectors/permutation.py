"""Fixed channel permutations: the original's ``reverse`` and ``shuffle``."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from glow_tf import _validate
from glow_tf.bijectors.base import GlowBijector, validate_channels

__all__ = ["ChannelPermutation", "PERMUTATION_KINDS", "PERMUTATIONS"]

PERMUTATION_KINDS = ("shuffle", "reverse")  # ChannelPermutation's fixed permutations
# Every permutation a flow step can use: the learned 1x1 convolution (invertible_conv.py) or a fixed one.
PERMUTATIONS = ("invconv", *PERMUTATION_KINDS)


class ChannelPermutation(GlowBijector):
    """Permutes channels at every position; volume preserving.

    ::

        inverse (image -> latent):  z[..., j] = x[..., perm[j]]
        forward (latent -> image):  x = z[..., argsort(perm)]
        ildj = 0

    ``kind='reverse'`` uses ``perm = [C-1, ..., 0]``; ``kind='shuffle'`` a random
    permutation drawn from ``seed``. The permutation is stored in a non-trainable
    ``tf.Variable`` so it survives a checkpoint round trip.
    """

    def __init__(
        self,
        channels: int,
        kind: str = "reverse",
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        validate_args: bool = False,
        name: str | None = None,
    ):
        parameters = dict(locals())
        name = name or f"{kind}_permutation"
        channels = validate_channels(channels, name)
        if _validate.choice(kind, PERMUTATION_KINDS, "permutation kind") == "reverse":
            perm = np.arange(channels)[::-1]
        else:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            perm = rng.permutation(channels)
        super().__init__(
            forward_min_event_ndims=1,
            is_constant_jacobian=True,
            dtype=dtype,
            validate_args=validate_args,
            parameters=parameters,
            name=name,
        )
        self.kind = kind
        with self.name_scope:
            self.permutation = tf.Variable(perm.astype(np.int32), trainable=False, name="permutation")

    def weights(self):
        return (tf.convert_to_tensor(self.permutation),)

    def prepare(self, weights, event_shape, decode=False):
        return (tf.math.invert_permutation(weights[0]),) if decode else weights

    def encode_with(self, prepared, x, **kwargs):
        return tf.gather(x, prepared[0], axis=-1), tf.zeros([], x.dtype)

    def decode_with(self, prepared, z, **kwargs):
        return tf.gather(z, prepared[0], axis=-1)

    def _forward(self, z):
        return self.decode(z)

    def _inverse(self, x):
        return self.inverse_and_log_det(x)[0]

    def _inverse_log_det_jacobian(self, x):
        return tf.zeros([], self.dtype)

    def _forward_log_det_jacobian(self, z):
        return tf.zeros([], self.dtype)
