"""Analytic FLOP count of a Glow training step, from the layer shapes.

Counting method (stated verbatim in every report as :data:`METHOD`):

* A convolution or matmul costs ``2 * MACs`` FLOPs (one multiply, one add):
  ``2 * H * W * k * k * Cin * Cout`` per image for a ``k x k`` convolution.
* Counted per flow step: the coupling network (``conv3x3 C/2 -> width``,
  ``conv1x1 width -> width``, ``conv3x3 width -> 2 * (C - C/2)``) and the invertible
  1x1 convolution (``C x C`` per position). Per level: the split prior
  (``conv3x3 C/2 -> 2 * (C - C/2)``). The learned top prior acts on a constant input
  (one ``[1, h, w, 2C]`` conv per batch) and is divided by the batch size.
* The edge-bias border channel of the original is counted as one extra input channel
  of every 3x3 convolution (what the original computes; glow_tf computes it as a
  batch-independent correction, so this slightly over-counts glow_tf).
* Not counted: element-wise ops (actnorm, relu, sigmoid, exp, adds), reductions,
  squeezes, concatenations, the 1x1-conv weight maths (LU products, determinants) and
  the optimizer update: all O(activations) or O(parameters), not O(activations x width).
* Training step = forward + backward, with backward = 2 x forward (gradient with
  respect to the inputs and with respect to the weights, each as costly as the
  forward op), so ``train = 3 x forward``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METHOD", "FlopCount", "glow_flops"]

METHOD = (
    "2*MACs of every convolution/matmul from the layer shapes (coupling-network convs incl. the "
    "edge-bias border channel, invertible 1x1 convs, split priors; the learned top prior's "
    "constant-input conv divided by the batch); element-wise ops, reductions, weight maths and "
    "the optimizer are not counted; train step = 3 x forward (backward = 2 x forward)."
)


@dataclass(frozen=True)
class FlopCount:
    """Per-image FLOPs of one forward pass, broken down by component."""

    coupling_networks: float
    invertible_convs: float
    split_priors: float
    top_prior: float

    @property
    def forward(self) -> float:
        """Per-image FLOPs of one forward (log-likelihood) pass."""
        return self.coupling_networks + self.invertible_convs + self.split_priors + self.top_prior

    @property
    def train(self) -> float:
        """Per-image FLOPs of one training step (forward + backward = 3 x forward)."""
        return 3.0 * self.forward

    def as_dict(self) -> dict[str, float]:
        """JSON-friendly breakdown in GFLOP per image."""
        giga = 1e-9
        return {
            "forward_gflop_per_image": self.forward * giga,
            "train_gflop_per_image": self.train * giga,
            "coupling_networks_gflop_per_image": self.coupling_networks * giga,
            "invertible_convs_gflop_per_image": self.invertible_convs * giga,
            "split_priors_gflop_per_image": self.split_priors * giga,
            "top_prior_gflop_per_image": self.top_prior * giga,
        }


def _conv_flops(positions: int, kernel: int, cin: int, cout: int) -> float:
    """``2 * MACs`` of a stride-1 SAME convolution; 3x3 convs get the edge-bias channel."""
    extra = 1 if kernel > 1 else 0
    return 2.0 * positions * kernel * kernel * (cin + extra) * cout


def glow_flops(
    image_shape: tuple[int, int, int],
    num_levels: int,
    num_steps: int,
    hidden_width: int,
    learn_top: bool = True,
    batch_size: int = 16,
) -> FlopCount:
    """Per-image forward FLOPs of Glow with affine coupling (the original's architecture).

    Args:
      image_shape: ``(H, W, C)`` of one image.
      num_levels: L, number of scales.
      num_steps: K, flow steps per scale.
      hidden_width: channels of the coupling networks.
      learn_top: whether the top prior has its (constant-input) conv.
      batch_size: images per batch (the top prior's conv is per batch).

    Returns:
      A :class:`FlopCount`.
    """
    h, w, c = image_shape
    coupling = invconv = split = top = 0.0
    for level in range(num_levels):
        h, w, c = h // 2, w // 2, c * 4
        pos = h * w
        c1 = c // 2
        step = (
            _conv_flops(pos, 3, c1, hidden_width)
            + _conv_flops(pos, 1, hidden_width, hidden_width)
            + _conv_flops(pos, 3, hidden_width, 2 * (c - c1))
        )
        coupling += num_steps * step
        invconv += num_steps * 2.0 * pos * c * c
        if level < num_levels - 1:
            split += _conv_flops(pos, 3, c1, 2 * (c - c1))
            c = c1
        elif learn_top:
            top += _conv_flops(pos, 3, 2 * c, 2 * c) / batch_size
    return FlopCount(coupling, invconv, split, top)
