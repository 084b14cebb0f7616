"""The PyTorch peer of the model benchmark (system ``torch_glow``).

A PyTorch Glow written for this benchmark with the layer structure and operations of
y0ast/Glow-PyTorch (not that code): it was written here after reading that port, so
that glow_tf can be timed against "the PyTorch port people use" in the same run. It
runs, channels-first in float32, what the port runs with ``flow_permutation=invconv``,
``flow_coupling=affine``, ``LU_decomposed=True``, ``learn_top=True`` and no class
conditioning:

* input: uniform dequantisation noise U(0, 1/256) added to x in [-0.5, 0.5), the
  objective starting at ``-log(256) * C*H*W`` per image;
* per level: squeeze 2x2 (channel order c, dy, dx), K flow steps, then (except on the
  last level) a split whose dropped half is scored under N(mean, exp(logs)) from a
  zero-initialised 3x3 conv of the kept half (mean / logs interleaved: even / odd
  channels);
* flow step: actnorm (``(x + bias) * exp(logs)``, data-dependent init on the first
  forward pass) -> LU 1x1 conv (``W = P L U`` rebuilt every call; in reverse
  ``U^-1 (L^-1 P^-1)`` from three ``torch.inverse`` calls every call) -> affine
  coupling on the second channel half: ``h = NN(first half)``, shift = even channels,
  scale = ``sigmoid(odd channels + 2)``, ``x2 = (x2 + shift) * scale``;
* coupling NN: 3x3 conv (no bias, N(0, 0.05) init, zero "same" padding) -> actnorm ->
  ReLU -> 1x1 conv (same) -> actnorm -> ReLU -> zero-initialised 3x3 conv with bias,
  output scaled by ``exp(3 * logs)``;
* top prior: a zero [1, 2C, H, W] buffer repeated over the batch through a
  zero-initialised 3x3 conv (learn_top), mean / logs = first / second channel half;
* loss: mean over the batch of ``-objective / (log(2) * C*H*W)`` (bits/dim);
* sampling at temperature T: every Gaussian drawn as ``torch.normal(mean, exp(logs) * T)``
  (top and split priors), reverse pass under ``torch.no_grad()``, computing the
  log-det terms as the port does even though sampling discards them.

Differences from the port (see :data:`DIFFERENCES`, also reported in the result's info):

* the dequantisation noise is added out of place (the port adds it in place to the
  input batch, which the benchmark reuses every step);
* sampling draws ``num_samples`` images (the port's prior hardcodes 32 when sampling
  without a given z);
* actnorm is initialised on the one benchmark batch (the port: 8 batches of 64);
* ``torch.optim.Adamax(lr)`` without weight decay or warm-up, as the TF systems (the
  port: weight decay 5e-5 and a learning-rate warm-up; older train.py Adamax, newer Adam);
* ``torch.linalg.qr`` / ``torch.linalg.lu`` for the initial rotation and its PLU
  factors (the port's deprecated ``torch.qr`` / ``torch.lu`` + ``lu_unpack`` compute
  the same factorisation);
* the LU masks are buffers (the port transposes and copies the lower mask every call);
* the reverse pass accumulates the log-det over layers (the port starts each layer at
  0 and drops it: the same operations);
* only the configuration above is implemented (no additive coupling, shuffle /
  reverse permutations, class-conditioning heads).

PyTorch is imported lazily: importing this module does not need it.
"""

from __future__ import annotations

import functools
import math
import time
from types import SimpleNamespace

from _bench_systems import BenchConfig, RunOptions, SystemFns

__all__ = ["DIFFERENCES", "build_torch_glow"]

DIFFERENCES = (
    "written for this benchmark after y0ast/Glow-PyTorch (not its code); dequantisation noise added out of place; "
    "samples num_samples images (port hardcodes 32); actnorm init on the one benchmark batch (port: 8x64); "
    "Adamax(lr) without weight decay / warm-up (port: weight_decay=5e-5, warm-up; newer train.py uses Adam); "
    "torch.linalg.qr/lu for the LU init; LU masks as buffers; reverse pass accumulates the log-det; "
    "invconv + affine + learn_top only, no class conditioning"
)
_N_BINS = 256


@functools.cache
def _torch_model():
    """Imports PyTorch and defines the model classes (once); returns them in a namespace."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    log_2pi = math.log(2.0 * math.pi)

    def gaussian_log_density(x, mean, log_std):
        """Per-image log N(x; mean, exp(log_std)^2), summed over C, H, W."""
        return (-0.5 * (2.0 * log_std + (x - mean) ** 2 / torch.exp(2.0 * log_std) + log_2pi)).sum(dim=(1, 2, 3))

    def squeeze(x):
        """[B, C, H, W] -> [B, 4C, H/2, W/2], new channel index c * 4 + dy * 2 + dx."""
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, 4 * c, h // 2, w // 2)

    def unsqueeze(x):
        """Inverse of :func:`squeeze`."""
        b, c, h, w = x.shape
        x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c // 4, 2 * h, 2 * w)

    class ActNorm(nn.Module):
        """Per-channel ``(x + bias) * exp(logs)``, initialised from the first batch it sees."""

        def __init__(self, channels: int):
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.initialized = False

        def _maybe_initialize(self, x) -> None:
            if self.initialized:
                return
            if not self.training:
                raise ValueError("ActNorm used in eval mode before its data-dependent init")
            with torch.no_grad():
                bias = -x.mean(dim=(0, 2, 3), keepdim=True)
                std = (x + bias).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
                self.bias.copy_(bias)
                self.logs.copy_(torch.log(1.0 / (std + 1e-6)))
            self.initialized = True

        def forward(self, x):
            self._maybe_initialize(x)
            return (x + self.bias) * torch.exp(self.logs)

        def reverse(self, y):
            self._maybe_initialize(y)
            return y * torch.exp(-self.logs) - self.bias

        def log_det(self, x):
            """Log-det of the forward map for one image of ``x``'s spatial size (a scalar)."""
            return self.logs.sum() * (x.shape[2] * x.shape[3])

    class ConvActNorm(nn.Module):
        """Bias-free conv (N(0, 0.05) init, zero "same" padding) followed by an actnorm."""

        def __init__(self, in_channels: int, out_channels: int, kernel: int):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
            with torch.no_grad():
                self.conv.weight.normal_(0.0, 0.05)
            self.actnorm = ActNorm(out_channels)

        def forward(self, x):
            return self.actnorm(self.conv(x))

    class ZeroConv(nn.Module):
        """Zero-initialised 3x3 conv with bias, output scaled by ``exp(3 * logs)``."""

        def __init__(self, in_channels: int, out_channels: int):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
            self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

        def forward(self, x):
            return self.conv(x) * torch.exp(3.0 * self.logs)

    class InvConvLU(nn.Module):
        """1x1 convolution ``W = P L U`` with a random rotation as initial W."""

        def __init__(self, channels: int):
            super().__init__()
            rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
            perm, lower, upper = torch.linalg.lu(rotation)
            diag = torch.diagonal(upper)
            strict_lower = torch.tril(torch.ones(channels, channels), -1)
            self.register_buffer("perm", perm)
            self.register_buffer("sign", torch.sign(diag))
            self.register_buffer("lower_mask", strict_lower)
            self.register_buffer("upper_mask", strict_lower.T.contiguous())
            self.register_buffer("eye", torch.eye(channels))
            self.lower = nn.Parameter(lower)
            self.log_abs_diag = nn.Parameter(torch.log(diag.abs()))
            self.upper = nn.Parameter(torch.triu(upper, 1))

        def _factors(self):
            lower = self.lower * self.lower_mask + self.eye
            upper = self.upper * self.upper_mask + torch.diag(self.sign * torch.exp(self.log_abs_diag))
            return lower, upper

        def forward(self, x):
            lower, upper = self._factors()
            weight = self.perm @ (lower @ upper)
            return F.conv2d(x, weight[:, :, None, None])

        def reverse(self, y):
            lower, upper = self._factors()
            weight = torch.inverse(upper) @ (torch.inverse(lower) @ torch.inverse(self.perm))
            return F.conv2d(y, weight[:, :, None, None])

        def log_det(self, x):
            return self.log_abs_diag.sum() * (x.shape[2] * x.shape[3])

    class FlowStep(nn.Module):
        """Actnorm -> LU 1x1 conv -> affine coupling (sigmoid scale)."""

        def __init__(self, channels: int, hidden: int):
            super().__init__()
            self.actnorm = ActNorm(channels)
            self.invconv = InvConvLU(channels)
            self.coupling_nn = nn.Sequential(
                ConvActNorm(channels // 2, hidden, 3),
                nn.ReLU(),
                ConvActNorm(hidden, hidden, 1),
                nn.ReLU(),
                ZeroConv(hidden, channels),
            )

        def _shift_scale(self, x1):
            h = self.coupling_nn(x1)
            return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)

        def forward(self, x, log_det):
            x = self.actnorm(x)
            log_det = log_det + self.actnorm.log_det(x)
            x = self.invconv(x)
            log_det = log_det + self.invconv.log_det(x)
            x1, x2 = x.chunk(2, dim=1)
            shift, scale = self._shift_scale(x1)
            x2 = (x2 + shift) * scale
            log_det = log_det + torch.log(scale).sum(dim=(1, 2, 3))
            return torch.cat((x1, x2), dim=1), log_det

        def reverse(self, y, log_det):
            y1, y2 = y.chunk(2, dim=1)
            shift, scale = self._shift_scale(y1)
            y2 = y2 / scale - shift
            log_det = log_det - torch.log(scale).sum(dim=(1, 2, 3))
            y = self.invconv.reverse(torch.cat((y1, y2), dim=1))
            log_det = log_det - self.invconv.log_det(y)
            y = self.actnorm.reverse(y)
            log_det = log_det - self.actnorm.log_det(y)
            return y, log_det

    class SplitPrior(nn.Module):
        """Drops the second channel half, scored under a Gaussian predicted from the first."""

        def __init__(self, channels: int):
            super().__init__()
            self.conv = ZeroConv(channels // 2, channels)

        def _mean_logs(self, kept):
            h = self.conv(kept)
            return h[:, 0::2], h[:, 1::2]

        def forward(self, x, log_det):
            kept, dropped = x.chunk(2, dim=1)
            mean, logs = self._mean_logs(kept)
            return kept, log_det + gaussian_log_density(dropped, mean, logs)

        def reverse(self, kept, temperature: float):
            mean, logs = self._mean_logs(kept)
            return torch.cat((kept, torch.normal(mean, torch.exp(logs) * temperature)), dim=1)

    class Glow(nn.Module):
        """Multi-scale Glow on [B, C, H, W] images in [-0.5, 0.5) with a learned top prior."""

        def __init__(self, image_shape, num_levels: int, num_steps: int, hidden: int):
            super().__init__()
            height, width, channels = image_shape
            self.image_shape = (channels, height, width)
            self.levels = nn.ModuleList()
            self.splits = nn.ModuleList()
            for level in range(num_levels):
                channels, height, width = 4 * channels, height // 2, width // 2
                self.levels.append(nn.ModuleList(FlowStep(channels, hidden) for _ in range(num_steps)))
                if level < num_levels - 1:
                    self.splits.append(SplitPrior(channels))
                    channels //= 2
            self.register_buffer("top_input", torch.zeros(1, 2 * channels, height, width))
            self.top_prior = ZeroConv(2 * channels, 2 * channels)

        def _top_mean_logs(self, batch: int):
            return self.top_prior(self.top_input.repeat(batch, 1, 1, 1)).chunk(2, dim=1)

        def encode(self, x, log_det):
            """Data -> top latent; ``log_det`` accumulates flow log-dets and split log-likelihoods."""
            for level, steps in enumerate(self.levels):
                x = squeeze(x)
                for step in steps:
                    x, log_det = step(x, log_det)
                if level < len(self.splits):
                    x, log_det = self.splits[level](x, log_det)
            return x, log_det

        def decode(self, z, temperature: float):
            """Top latent -> data, drawing the split halves at ``temperature``; returns (x, log-det)."""
            log_det = 0.0
            for level in reversed(range(len(self.levels))):
                if level < len(self.splits):
                    z = self.splits[level].reverse(z, temperature)
                for step in reversed(self.levels[level]):
                    z, log_det = step.reverse(z, log_det)
                z = unsqueeze(z)
            return z, log_det

        def forward(self, x):
            """Returns ``(z, objective)``: per-image log-likelihood (nats) of dequantised 8-bit x."""
            dims = math.prod(x.shape[1:])
            x = x + torch.empty_like(x).uniform_(0.0, 1.0 / _N_BINS)
            objective = torch.full((x.shape[0],), -math.log(_N_BINS) * dims, device=x.device)
            z, objective = self.encode(x, objective)
            mean, logs = self._top_mean_logs(x.shape[0])
            return z, objective + gaussian_log_density(z, mean, logs)

        def bits_per_dim(self, x):
            """Per-image negative log-likelihood in bits/dim (the port's training loss)."""
            _, objective = self(x)
            return -objective / (math.log(2.0) * math.prod(x.shape[1:]))

        def sample(self, num: int, temperature: float):
            mean, logs = self._top_mean_logs(num)
            return self.decode(torch.normal(mean, torch.exp(logs) * temperature), temperature)[0]

    return SimpleNamespace(
        torch=torch, Glow=Glow, FlowStep=FlowStep, squeeze=squeeze, unsqueeze=unsqueeze, density=gaussian_log_density
    )


def build_torch_glow(config: BenchConfig, options: RunOptions, jit: bool, images) -> tuple[SystemFns, float]:
    """The PyTorch Glow above at the config's size, trained with ``torch.optim.Adamax``.

    Returns the system's callables and the seconds of the data-dependent actnorm init
    (one no-grad forward pass in train mode on the benchmark batch, as the port does).
    ``train`` and ``evaluate`` ignore their TF argument and use a torch copy of ``images``.
    """
    if jit:
        raise NotImplementedError("torch_glow has no torch.compile variant.")
    ns = _torch_model()
    torch = ns.torch
    torch.set_num_threads(options.threads)
    try:
        torch.set_num_interop_threads(options.threads)
    except RuntimeError:  # only settable once, before any inter-op work
        pass
    torch.manual_seed(options.seed)

    model = ns.Glow(config.image_shape, config.num_levels, config.num_steps, config.hidden_width)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    init_start = time.perf_counter()
    model.train()
    with torch.no_grad():
        model(x)
    init_s = time.perf_counter() - init_start
    optimizer = torch.optim.Adamax(model.parameters(), lr=config.learning_rate)

    def train(_x):
        model.train()
        optimizer.zero_grad()
        loss = model.bits_per_dim(x).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    def sample():
        model.eval()
        with torch.no_grad():
            return model.sample(config.num_samples, config.temperature)

    def evaluate(_x):
        model.eval()
        with torch.no_grad():
            return model(x)[1]

    params = list(model.parameters())
    info = {
        "train_loss": f"mean bits/dim incl. -log(256)*pixels (the port's objective), Adamax({config.learning_rate:g})",
        "evaluate": "per-image log-likelihood (nats) of the dequantised batch, eval mode, no_grad",
        "input_layout": "NCHW float32 (a torch copy of the benchmark batch; the TF tensor argument is ignored)",
        "num_trainable_variables": len(params),
        "num_parameters": int(sum(p.numel() for p in params)),
        "parameter_note": "LU lower/upper are full CxC tensors, masked in use (as in the port)",
        "differences": DIFFERENCES,
        "torch_version": torch.__version__,
        "torch_threads": [torch.get_num_threads(), torch.get_num_interop_threads()],
        "reference": "layer structure of y0ast/Glow-PyTorch",
    }
    return SystemFns(train, sample, evaluate, lambda bpd: bpd, info), init_s
