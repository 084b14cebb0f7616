"""Shared base of the Glow bijectors."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import _validate, nn
from glow_tf._scopes import scoped

tfb = tfp.bijectors

__all__ = [
    "GlowBijector",
    "apply_to_images",
    "float_indices",
    "num_positions",
    "per_example",
    "place_gradients",
    "sum_over_image",
    "validate_channels",
    "zeros_for_none",
]


def sum_over_image(t: tf.Tensor) -> tf.Tensor:
    """Sums ``[..., H, W, C]`` over its last three axes."""
    return tf.reduce_sum(t, axis=[-3, -2, -1])


def apply_to_images(network, x: tf.Tensor) -> tf.Tensor:
    """Applies a network on ``[B, H, W, C]`` images to ``x`` of any batch rank ``[..., H, W, C]``."""
    if x.shape.rank == 4:
        return network(x)
    h = network(tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0)))
    return tf.reshape(h, tf.concat([tf.shape(x)[:-3], tf.shape(h)[-3:]], 0))


def num_positions(x: tf.Tensor) -> tf.Tensor:
    """``H * W`` of an image tensor ``[..., H, W, C]``, as ``x.dtype``."""
    shape = x.shape[-3:-1]
    if shape.is_fully_defined():
        return tf.constant(float(shape[0] * shape[1]), x.dtype)
    return tf.cast(tf.reduce_prod(tf.shape(x)[-3:-1]), x.dtype)


def validate_channels(channels: int, name: str, minimum: int = 1, even: bool = False) -> int:
    """Returns ``channels`` or raises ``ValueError`` naming the layer and the bad value."""
    channels = _validate.integer(channels, f"{name}: channels", minimum=minimum)
    if even and channels % 2:
        raise ValueError(f"{name}: channels must be even to split into two halves, got {channels}.")
    return channels


def per_example(log_det: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A log-det that may be a scalar (the same for every example) as ``[B]``."""
    return log_det + tf.zeros(tf.shape(x)[:1], x.dtype)


def zeros_for_none(grads, like) -> list:
    """Gradients with None (unconnected) replaced by zeros shaped like ``like``."""
    return [tf.zeros_like(t) if g is None else g for g, t in zip(grads, like)]


def float_indices(weights) -> list[int]:
    """Positions of the floating-point tensors in ``weights`` (the differentiable ones)."""
    return [i for i, w in enumerate(weights) if w.dtype.is_floating]


# The fused-pass methods: every GlowBijector subclass runs its own definitions of them inside its name scope.
_SCOPED_METHODS = ("weights", "prepare", "encode_with", "decode_with", "initialize_and_encode", "rebuild_and_vjp")


def place_gradients(grads, indices: list[int], size: int, like) -> tuple:
    """A gradient per weight: ``grads`` at ``indices`` (zeros where None), None elsewhere."""
    out = [None] * size
    for i, g, t in zip(indices, grads, like):
        out[i] = tf.zeros_like(t) if g is None else g
    return tuple(out)


class GlowBijector(tfb.Bijector):
    """Base of every Glow layer: a bijector with fused passes computed from explicit weights.

    Each layer's maths is a function of its weights, in three parts:

    * ``weights()``: its variables (and fixed tensors such as a permutation) read
      into a tuple of tensors;
    * ``prepare(weights, event_shape)``: what does not depend on the batch (folded
      kernels, ``W``, log-determinants); ``prepare(..., decode=True)`` what the
      forward (decode) direction needs;
    * ``encode_with(prepared, x)`` -> ``(inverse(x), ildj)`` for an image event
      ``[..., H, W, C]``, the log-det summed over ``H, W, C`` (a scalar when it does
      not depend on the example), and ``decode_with(prepared, z)`` -> ``forward(z)``.

    The functions use nothing of ``self`` but static facts (channels, kind), so one
    layer's functions run any layer of the same configuration given its weights:
    ``glow_tf.flow`` traces a flow step once and calls it with every step's weights.
    ``inverse_and_log_det`` and ``forward_and_log_det`` apply them to this layer's own
    weights (evaluating any network once); TFP's generic methods stay available (and
    exact) for interoperability.

    Names (:mod:`glow_tf._scopes`): a layer creates its variables in its name scope
    (``self.name_scope``: the scope it was built in, then its name), and the methods
    above, in this class and in every subclass that defines them, build their ops
    inside a scope of the layer's name within the caller's scope.

    Every instance holds its own variables, so instances never share TFP's cache.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in _SCOPED_METHODS:
            if name in vars(cls):
                setattr(cls, name, scoped(vars(cls)[name]))

    @scoped
    def weights(self) -> tuple[tf.Tensor, ...]:
        """This layer's weights as tensors (reads of its variables); empty for weightless layers."""
        return ()

    @scoped
    def prepare(self, weights: tuple, event_shape, decode: bool = False) -> tuple:
        """The batch-independent tensors ``encode_with`` (or ``decode_with``) needs; default: ``weights``."""
        del event_shape, decode
        return weights

    def encode_with(self, prepared: tuple, x: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """``(inverse(x), ildj)`` given ``prepare(weights, x.shape[-3:])``."""
        raise NotImplementedError

    def decode_with(self, prepared: tuple, z: tf.Tensor, **kwargs) -> tf.Tensor:
        """``forward(z)`` given ``prepare(weights, z.shape[-3:], decode=True)``."""
        raise NotImplementedError

    @scoped
    def initialize_and_encode(self, x: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """The data-dependent init pass through this layer (layers with actnorms initialise them first)."""
        return self.encode_with(self.prepare(self.weights(), x.shape[-3:]), x, **kwargs)

    def inverse_and_log_det(self, x: tf.Tensor, **kwargs) -> tuple[tf.Tensor, tf.Tensor]:
        """Fused ``(inverse(x), inverse_log_det_jacobian(x, event_ndims=3))`` with this layer's weights.

        Inside ``nn.data_dependent_init()`` the layer's actnorms are initialised on ``x`` first.
        """
        if nn.in_data_dependent_init():
            return self.initialize_and_encode(x, **kwargs)
        return self.encode_with(self.prepare(self.weights(), x.shape[-3:]), x, **kwargs)

    @scoped
    def rebuild_and_vjp(self, weights: tuple, zs: list, dzs: list, dlds: list) -> tuple[list, list, tuple]:
        """Rebuilds this layer's inputs from its outputs ``zs`` and takes its vector-Jacobian product.

        For shape-preserving layers on a list of batch slices (reversible backprop,
        ``glow_tf.flow``): ``xs = forward(zs)``, then ``(dxs, dweights) = d/d(xs,
        weights) sum(zs . dzs + ildj . dlds)`` by differentiating ``encode_with(xs)``.
        This suits layers that are cheap to evaluate twice (actnorm, permutations,
        1x1 convolutions); the couplings override it to evaluate their network once.

        Returns:
          ``(xs, dxs, dweights)``; ``dweights[i]`` is None for a non-float weight.
        """
        shape = zs[0].shape[-3:]
        decoded = self.prepare(weights, shape, decode=True)
        xs = [tf.stop_gradient(self.decode_with(decoded, z)) for z in zs]
        floats = float_indices(weights)
        sources = [weights[i] for i in floats]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            tape.watch(sources)
            prepared = self.prepare(weights, shape)
            outs = [self.encode_with(prepared, x) for x in xs]
            lds = [per_example(ld, x) for (_, ld), x in zip(outs, xs)]
        dxs, dfloat = tape.gradient(([z for z, _ in outs], lds), (xs, sources), output_gradients=(dzs, dlds))
        return xs, zeros_for_none(dxs, xs), place_gradients(dfloat, floats, len(weights), sources)

    def decode(self, z: tf.Tensor, **kwargs) -> tf.Tensor:
        """Fused ``forward(z)`` with this layer's weights (the counterpart of ``inverse_and_log_det``)."""
        return self.decode_with(self.prepare(self.weights(), z.shape[-3:], decode=True), z, **kwargs)

    def _get_parameterization(self):
        return id(self)
