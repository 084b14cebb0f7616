"""Neural-network pieces of the original Glow, as plain ``tf.Module``s.

Everything here follows openai/glow ``tfops.py``:

* :class:`ActNormModule` -- per-channel ``y = (x + b) * exp(3 * logs)`` with
  data-dependent initialisation (the maths shared by the flow's ``ActNorm``
  bijector and the actnorms inside the coupling networks).
* :class:`Conv2D` -- "edge-bias" convolution without bias, followed by actnorm.
* :class:`Conv2DZeros` -- zero-initialised edge-bias convolution with a bias and
  an ``exp(3 * logs)`` output gain.
* :class:`LinearZeros` -- the dense analogue of ``Conv2DZeros``.
* :class:`CouplingNetwork` -- ``conv3x3 -> actnorm -> relu -> conv1x1 -> actnorm
  -> relu -> conv3x3 zeros``.

Edge-bias padding zero-pads the input and appends one channel that is 1 on the
padded border and 0 inside, then runs a VALID convolution. We compute the same
thing without materialising the extra channel::

    conv_valid(concat(pad0(x), m), [K_x; K_m]) = conv_same(x, K_x) + conv_valid(m, K_m)

where the second term does not depend on the batch: one ``[H, W, out]`` map. The
kernel keeps the original's ``[k, k, in + 1, out]`` layout. Outside data-dependent
init, an actnorm (or zero-conv gain) after a convolution is folded into it:
``(conv(x, K) + b) * g = conv(x, K * g) + b * g``, which saves elementwise passes
over the activations and lets 1x1 convolutions run as matmul + bias + relu.

Every layer computes in two halves, so that the flow can call one traced
function with the weights of each of its steps (``glow_tf.flow``): ``weights()``
reads the variables into a tuple of tensors, ``prepare(weights, ...)`` derives
what does not depend on the batch (folded kernels and border maps) and
``apply(prepared, x)`` is the batch-dependent rest. ``__call__`` chains the three
(and, inside :func:`data_dependent_init`, initialises the actnorms first).

Every module creates its variables in its own name scope and runs its methods in
it (:mod:`glow_tf._scopes`): a coupling network's first kernel reads
``<layer>/conv1/kernel`` and its ops ``<layer>/conv1/Conv2D``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from glow_tf import _validate
from glow_tf._scopes import name_scope, scoped

__all__ = [
    "ActNormModule",
    "Conv2D",
    "Conv2DZeros",
    "LinearZeros",
    "CouplingNetwork",
    "actnorm",
    "actnorm_inverse",
    "data_dependent_init",
    "in_data_dependent_init",
    "edge_bias_conv2d",
    "fold_edge_bias_conv",
    "apply_folded_conv",
    "fold_scaled_conv",
]

LOGSCALE_FACTOR = 3.0
_INIT_STD = 0.05
_init_state = threading.local()


@contextlib.contextmanager
def data_dependent_init() -> Iterator[None]:
    """Within this context every :class:`ActNormModule` call initialises itself.

    Used once by ``Glow.initialize``: a single encode pass over a batch sets each
    actnorm's bias and scale from the statistics of the activations reaching it.
    """
    previous = getattr(_init_state, "active", False)
    _init_state.active = True
    try:
        yield
    finally:
        _init_state.active = previous


def in_data_dependent_init() -> bool:
    """True inside :func:`data_dependent_init`."""
    return getattr(_init_state, "active", False)


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def actnorm(x: tf.Tensor, bias: tf.Tensor, logs: tf.Tensor) -> tf.Tensor:
    """``(x + b) * exp(3 * logs)`` per channel."""
    return (x + bias) * tf.exp(logs * LOGSCALE_FACTOR)


def actnorm_inverse(y: tf.Tensor, bias: tf.Tensor, logs: tf.Tensor) -> tf.Tensor:
    """``y * exp(-3 * logs) - b``: the inverse of :func:`actnorm`."""
    return y * tf.exp(-logs * LOGSCALE_FACTOR) - bias


class ActNormModule(tf.Module):
    """Per-channel affine normalisation ``y = (x + b) * exp(3 * logs)``.

    log|det dy/dx| per position is ``sum(3 * logs)``. Data-dependent init on a
    batch ``x`` (over every axis but the last)::

        b    = -mean(x)
        logs = log(scale / (sqrt(mean((x + b)^2)) + 1e-6)) / 3

    so the output has per-channel mean 0 and standard deviation ``scale``. The init
    happens only through :meth:`initialize` (or inside :func:`data_dependent_init`)
    and is recorded in the non-trainable ``initialized`` variable.
    """

    def __init__(self, channels: int, scale: float = 1.0, dtype: tf.DType = tf.float32, name: str | None = None):
        super().__init__(name=name)
        self.channels = int(channels)
        self.scale = float(scale)
        with self.name_scope:
            self.bias = tf.Variable(tf.zeros([channels], dtype), name="bias")
            self.logs = tf.Variable(tf.zeros([channels], dtype), name="logs")
            self.initialized = tf.Variable(False, trainable=False, name="initialized")

    @scoped
    def weights(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``(b, logs)`` as tensors."""
        return tf.convert_to_tensor(self.bias), tf.convert_to_tensor(self.logs)

    def log_scale(self) -> tf.Tensor:
        """Per-channel ``3 * logs``: the log of the multiplicative scale."""
        return self.logs * LOGSCALE_FACTOR

    @scoped
    def initialize(self, x: tf.Tensor) -> None:
        """Sets bias and scale from the batch statistics of ``x``."""
        axes = list(range(len(x.shape) - 1))
        mean = tf.reduce_mean(x, axis=axes)
        std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=axes))
        self.bias.assign(-mean)
        self.logs.assign(tf.math.log(self.scale / (std + 1e-6)) / LOGSCALE_FACTOR)
        self.initialized.assign(True)

    @scoped
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if in_data_dependent_init():
            self.initialize(x)
        return actnorm(x, *self.weights())

    @scoped
    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """``x = y * exp(-3 * logs) - b``."""
        return actnorm_inverse(y, *self.weights())


@functools.cache
def _border_patches(height: int, width: int, kh: int, kw: int) -> np.ndarray:
    """``[H * W, kh * kw]``: the border indicator seen by each kernel tap at each output position.

    The indicator is 1 on the zero-padded border of an ``H x W`` image and 0 inside,
    so ``conv_valid(indicator, K_m) = patches @ K_m`` as a matrix product.
    """
    a, b = (kh - 1) // 2, (kw - 1) // 2
    mask = np.ones([height + 2 * a, width + 2 * b])
    mask[a : a + height, b : b + width] = 0.0
    taps = [mask[i : i + height, j : j + width].reshape(-1) for i in range(kh) for j in range(kw)]
    return np.stack(taps, axis=1)


def edge_bias_conv2d(
    x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor | None = None, gain: tf.Tensor | None = None
) -> tf.Tensor:
    """The original's ``SAME`` convolution with edge-bias padding (stride 1), with an optional affine output.

    Computes ``(edge_bias_conv(x, K) + bias) * gain`` (per output channel) as::

        conv_same(x, K_x * gain) + (patches @ K_m + bias) * gain

    where ``K = [K_x; K_m]`` on the input-channel axis and the second term is a
    batch-independent ``[H, W, Cout]`` map (see :func:`_border_patches`). A 1x1
    kernel has no border channel and runs as one matrix product. Weights are
    folded in their own dtype and cast to ``x.dtype`` (the compute dtype) last.

    Args:
      x: ``[B, H, W, Cin]`` with static ``H, W, Cin``.
      kernel: ``[kh, kw, Cin + 1, Cout]`` for odd ``kh, kw > 1``, or ``[1, 1, Cin, Cout]``.
      bias: optional ``[Cout]`` added before the gain.
      gain: optional ``[Cout]`` multiplier.

    Returns:
      ``[B, H, W, Cout]``.
    """
    height, width = (int(d) for d in x.shape[1:3])
    return apply_folded_conv(x, *fold_edge_bias_conv(kernel, bias, gain, height, width, x.dtype))


def fold_edge_bias_conv(
    kernel: tf.Tensor, bias: tf.Tensor | None, gain: tf.Tensor | None, height: int, width: int, dtype: tf.DType
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """The batch-independent half of :func:`edge_bias_conv2d`: ``(K_x * gain, offset)`` in ``dtype``.

    ``offset`` is the ``[H, W, Cout]`` map ``(patches @ K_m + bias) * gain``; for a
    1x1 kernel the folded kernel is a ``[Cin, Cout]`` matrix and ``offset`` the
    ``[Cout]`` bias (or None).
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    if gain is not None:
        kernel = kernel * gain
        bias = None if bias is None else bias * gain
    if kh == 1 and kw == 1:
        return tf.cast(tf.reshape(kernel, [cin, cout]), dtype), None if bias is None else tf.cast(bias, dtype)
    kernel_x, kernel_m = tf.split(kernel, [cin - 1, 1], axis=2)
    patches = tf.constant(_border_patches(height, width, kh, kw), kernel.dtype)
    offset = tf.matmul(patches, tf.reshape(kernel_m, [kh * kw, cout]))
    if bias is not None:
        offset += bias
    return tf.cast(kernel_x, dtype), tf.cast(tf.reshape(offset, [height, width, cout]), dtype)


def apply_folded_conv(x: tf.Tensor, kernel: tf.Tensor, offset: tf.Tensor | None) -> tf.Tensor:
    """The batch-dependent half of :func:`edge_bias_conv2d`, given :func:`fold_edge_bias_conv`'s output."""
    if kernel.shape.rank == 2:
        height, width, cin = (int(d) for d in x.shape[1:])
        y = tf.matmul(tf.reshape(x, [-1, cin]), kernel)
        if offset is not None:
            y = tf.nn.bias_add(y, offset)
        return tf.reshape(y, [-1, height, width, int(kernel.shape[1])])
    y = tf.nn.conv2d(x, kernel, 1, "SAME")
    return y if offset is None else y + offset


def fold_scaled_conv(weights: tuple, height: int, width: int, dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor | None]:
    """:func:`fold_edge_bias_conv` of ``weights = (K, b, logs)``, i.e. of ``(edge_bias_conv(x, K) + b) * exp(3 logs)``.

    The layout of both :class:`Conv2D` (``b`` and ``logs`` of its actnorm) and
    :class:`Conv2DZeros`.
    """
    kernel, bias, logs = weights
    return fold_edge_bias_conv(kernel, bias, tf.exp(logs * LOGSCALE_FACTOR), height, width, dtype)


def _spatial(x: tf.Tensor) -> tuple[int, int]:
    return int(x.shape[1]), int(x.shape[2])


def _kernel_shape(in_channels: int, out_channels: int, kernel_size: int) -> list[int]:
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
    extra = 1 if kernel_size > 1 else 0
    return [kernel_size, kernel_size, in_channels + extra, out_channels]


class Conv2D(tf.Module):
    """Edge-bias convolution (no bias, weights ~ N(0, 0.05)) followed by actnorm.

    ``weights()`` is ``(K, b, logs)`` (the actnorm's ``b`` and ``logs``); outside
    data-dependent init the actnorm is folded into the convolution
    (:func:`fold_scaled_conv`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        shape = _kernel_shape(in_channels, out_channels, kernel_size)
        init = _rng(seed).normal(0.0, _INIT_STD, shape)
        with self.name_scope:
            self.kernel = tf.Variable(tf.constant(init, dtype), name="kernel")
            self.actnorm = ActNormModule(out_channels, dtype=dtype, name="actnorm")

    @scoped
    def weights(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return (tf.convert_to_tensor(self.kernel), *self.actnorm.weights())

    @scoped
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if in_data_dependent_init():
            return self.actnorm(edge_bias_conv2d(x, self.kernel))
        return apply_folded_conv(x, *fold_scaled_conv(self.weights(), *_spatial(x), x.dtype))


class Conv2DZeros(tf.Module):
    """``(edge_bias_conv(x) + b) * exp(3 * logs)`` with kernel, b and logs all zero at init.

    ``weights()`` is ``(K, b, logs)``, folded by :func:`fold_scaled_conv`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dtype: tf.DType = tf.float32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        shape = _kernel_shape(in_channels, out_channels, kernel_size)
        with self.name_scope:
            self.kernel = tf.Variable(tf.zeros(shape, dtype), name="kernel")
            self.bias = tf.Variable(tf.zeros([out_channels], dtype), name="bias")
            self.logs = tf.Variable(tf.zeros([out_channels], dtype), name="logs")

    @scoped
    def weights(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return tf.convert_to_tensor(self.kernel), tf.convert_to_tensor(self.bias), tf.convert_to_tensor(self.logs)

    @scoped
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return apply_folded_conv(x, *fold_scaled_conv(self.weights(), *_spatial(x), x.dtype))


class LinearZeros(tf.Module):
    """``(x @ W + b) * exp(3 * logs)`` with W, b and logs all zero at init."""

    def __init__(self, in_features: int, out_features: int, dtype: tf.DType = tf.float32, name: str | None = None):
        super().__init__(name=name)
        with self.name_scope:
            self.kernel = tf.Variable(tf.zeros([in_features, out_features], dtype), name="kernel")
            self.bias = tf.Variable(tf.zeros([out_features], dtype), name="bias")
            self.logs = tf.Variable(tf.zeros([out_features], dtype), name="logs")

    @scoped
    def weights(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return tf.convert_to_tensor(self.kernel), tf.convert_to_tensor(self.bias), tf.convert_to_tensor(self.logs)

    @staticmethod
    def apply(weights: tuple, x: tf.Tensor) -> tf.Tensor:
        """``(x @ W + b) * exp(3 * logs)`` for ``weights = (W, b, logs)``."""
        kernel, bias, logs = weights
        return (tf.matmul(x, kernel) + bias) * tf.exp(logs * LOGSCALE_FACTOR)

    @scoped
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.apply(self.weights(), x)


class CouplingNetwork(tf.Module):
    """The original's coupling network ``f``.

    ``relu(actnorm(conv3x3(x))) -> relu(actnorm(conv1x1(.))) -> conv3x3_zeros``.
    The last layer starts at zero, so the network outputs 0 at init.

    ``weights()`` are the nine tensors ``(K, b, logs)`` of ``conv1``, ``conv2`` and
    ``conv_out``; ``prepare`` folds them (batch-independent) and ``apply`` runs the
    three convolutions. With a ``compute_dtype`` other than ``dtype`` (mixed
    precision, e.g. ``bfloat16``) the folded weights and the input are cast to it,
    the three convolutions run in it, and the output is cast back to ``dtype``;
    variables stay in ``dtype``. The data-dependent init always runs in ``dtype``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_width: int,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | None = None,
        name: str | None = None,
    ):
        super().__init__(name=name)
        hidden_width = _validate.positive_int(hidden_width, "hidden_width")
        self.dtype = tf.as_dtype(dtype)
        self.compute_dtype = tf.as_dtype(compute_dtype or dtype)
        rng = _rng(seed)
        with self.name_scope:
            self.conv1 = Conv2D(in_channels, hidden_width, 3, seed=rng, dtype=dtype, name="conv1")
            self.conv2 = Conv2D(hidden_width, hidden_width, 1, seed=rng, dtype=dtype, name="conv2")
            self.conv_out = Conv2DZeros(hidden_width, out_channels, 3, dtype=dtype, name="conv_out")

    @property
    def convs(self) -> tuple[Conv2D, Conv2D, Conv2DZeros]:
        """``(conv1, conv2, conv_out)``."""
        return self.conv1, self.conv2, self.conv_out

    @scoped
    def weights(self) -> tuple[tf.Tensor, ...]:
        return (*self.conv1.weights(), *self.conv2.weights(), *self.conv_out.weights())

    @scoped
    def prepare(self, weights: tuple, height: int, width: int) -> tuple:
        """The three folded convolutions ``((K1, offset1), (K2, bias2), (K3, offset3))`` in the compute dtype."""
        folded = []
        for i, conv in enumerate(self.convs):
            with name_scope(conv.name):
                folded.append(fold_scaled_conv(weights[3 * i : 3 * i + 3], height, width, self.compute_dtype))
        return tuple(folded)

    @scoped
    def apply(self, prepared: tuple, x: tf.Tensor) -> tf.Tensor:
        """``f(x)`` from :meth:`prepare`'s output (``x`` and the result in ``dtype``)."""
        h = tf.cast(x, self.compute_dtype)
        for conv, (kernel, offset) in zip(self.convs, prepared):
            with name_scope(conv.name):
                h = apply_folded_conv(h, kernel, offset)
                h = tf.cast(h, self.dtype) if conv is self.conv_out else tf.nn.relu(h)
        return h

    @scoped
    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if in_data_dependent_init():  # layer by layer, each actnorm initialised on what reaches it
            return self.conv_out(tf.nn.relu(self.conv2(tf.nn.relu(self.conv1(x)))))
        return self.apply(self.prepare(self.weights(), *_spatial(x)), x)
