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

where the second term does not depend on the batch and is a single
``[1, H, W, out]`` map. The kernel keeps the original's ``[k, k, in + 1, out]`` layout.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

__all__ = [
    "ActNormModule",
    "Conv2D",
    "Conv2DZeros",
    "LinearZeros",
    "CouplingNetwork",
    "data_dependent_init",
    "in_data_dependent_init",
    "edge_bias_conv2d",
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
        self.bias = tf.Variable(tf.zeros([channels], dtype), name="bias")
        self.logs = tf.Variable(tf.zeros([channels], dtype), name="logs")
        self.initialized = tf.Variable(False, trainable=False, name="initialized")

    def log_scale(self) -> tf.Tensor:
        """Per-channel ``3 * logs``: the log of the multiplicative scale."""
        return self.logs * LOGSCALE_FACTOR

    def initialize(self, x: tf.Tensor) -> None:
        """Sets bias and scale from the batch statistics of ``x``."""
        axes = list(range(len(x.shape) - 1))
        mean = tf.reduce_mean(x, axis=axes)
        std = tf.sqrt(tf.reduce_mean(tf.square(x - mean), axis=axes))
        self.bias.assign(-mean)
        self.logs.assign(tf.math.log(self.scale / (std + 1e-6)) / LOGSCALE_FACTOR)
        self.initialized.assign(True)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if in_data_dependent_init():
            self.initialize(x)
        return (x + self.bias) * tf.exp(self.log_scale())

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """``x = y * exp(-3 * logs) - b``."""
        return y * tf.exp(-self.log_scale()) - self.bias


def _border_mask(height: int, width: int, pad_h: int, pad_w: int, dtype: tf.DType) -> tf.Tensor:
    """``[1, H + 2a, W + 2b, 1]``: 1 on the zero-padded border, 0 inside."""
    mask = np.ones([1, height + 2 * pad_h, width + 2 * pad_w, 1], np.float64)
    mask[:, pad_h : pad_h + height, pad_w : pad_w + width, :] = 0.0
    return tf.constant(mask, dtype)


def edge_bias_conv2d(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """The original's ``SAME`` convolution with edge-bias padding, stride 1.

    Args:
      x: ``[B, H, W, Cin]`` with static ``H, W``.
      kernel: ``[kh, kw, Cin + 1, Cout]`` for odd ``kh, kw > 1`` (the last input
        channel belongs to the border indicator), or ``[1, 1, Cin, Cout]``.

    Returns:
      ``[B, H, W, Cout]``.
    """
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if kh == 1 and kw == 1:
        return tf.nn.conv2d(x, kernel, 1, "VALID")
    cin = int(x.shape[-1])
    main = tf.nn.conv2d(x, kernel[:, :, :cin, :], 1, "SAME")
    mask = _border_mask(int(x.shape[1]), int(x.shape[2]), (kh - 1) // 2, (kw - 1) // 2, x.dtype)
    border = tf.nn.conv2d(mask, kernel[:, :, cin:, :], 1, "VALID")
    return main + border


def _kernel_shape(in_channels: int, out_channels: int, kernel_size: int) -> list[int]:
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
    extra = 1 if kernel_size > 1 else 0
    return [kernel_size, kernel_size, in_channels + extra, out_channels]


class Conv2D(tf.Module):
    """Edge-bias convolution (no bias, weights ~ N(0, 0.05)) followed by actnorm."""

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
        self.kernel = tf.Variable(tf.constant(init, dtype), name="kernel")
        self.actnorm = ActNormModule(out_channels, dtype=dtype, name="actnorm")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return self.actnorm(edge_bias_conv2d(x, self.kernel))


class Conv2DZeros(tf.Module):
    """``(edge_bias_conv(x) + b) * exp(3 * logs)`` with kernel, b and logs all zero at init."""

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
        self.kernel = tf.Variable(tf.zeros(shape, dtype), name="kernel")
        self.bias = tf.Variable(tf.zeros([out_channels], dtype), name="bias")
        self.logs = tf.Variable(tf.zeros([out_channels], dtype), name="logs")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        h = edge_bias_conv2d(x, self.kernel) + self.bias
        return h * tf.exp(self.logs * LOGSCALE_FACTOR)


class LinearZeros(tf.Module):
    """``(x @ W + b) * exp(3 * logs)`` with W, b and logs all zero at init."""

    def __init__(self, in_features: int, out_features: int, dtype: tf.DType = tf.float32, name: str | None = None):
        super().__init__(name=name)
        self.kernel = tf.Variable(tf.zeros([in_features, out_features], dtype), name="kernel")
        self.bias = tf.Variable(tf.zeros([out_features], dtype), name="bias")
        self.logs = tf.Variable(tf.zeros([out_features], dtype), name="logs")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return (tf.matmul(x, self.kernel) + self.bias) * tf.exp(self.logs * LOGSCALE_FACTOR)


class CouplingNetwork(tf.Module):
    """The original's coupling network ``f``.

    ``relu(actnorm(conv3x3(x))) -> relu(actnorm(conv1x1(.))) -> conv3x3_zeros``.
    The last layer starts at zero, so the network outputs 0 at init.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_width: int,
        seed: int | np.random.Generator | None = None,
        dtype: tf.DType = tf.float32,
        name: str | None = None,
    ):
        super().__init__(name=name)
        if hidden_width < 1:
            raise ValueError(f"hidden_width must be a positive integer, got {hidden_width!r}.")
        rng = _rng(seed)
        self.conv1 = Conv2D(in_channels, hidden_width, 3, seed=rng, dtype=dtype, name="conv1")
        self.conv2 = Conv2D(hidden_width, hidden_width, 1, seed=rng, dtype=dtype, name="conv2")
        self.conv_out = Conv2DZeros(hidden_width, out_channels, 3, dtype=dtype, name="conv_out")

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        h = tf.nn.relu(self.conv1(x))
        h = tf.nn.relu(self.conv2(h))
        return self.conv_out(h)
