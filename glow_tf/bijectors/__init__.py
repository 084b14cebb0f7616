"""Glow's layers as ``tfp.bijectors.Bijector`` subclasses (forward = latent -> image).

The kinds a model can be built from are defined next to the layers and nowhere
else: :data:`COUPLING_KINDS` and :data:`COMPUTE_DTYPES` (``coupling.py``),
:data:`PERMUTATIONS` and ChannelPermutation's :data:`PERMUTATION_KINDS` (``permutation.py``).
"""

from glow_tf.bijectors.actnorm import ActNorm
from glow_tf.bijectors.base import GlowBijector
from glow_tf.bijectors.coupling import COMPUTE_DTYPES, COUPLING_KINDS, AdditiveCoupling, AffineCoupling
from glow_tf.bijectors.invertible_conv import InvertibleConv1x1, LUInvertibleConv1x1
from glow_tf.bijectors.permutation import PERMUTATION_KINDS, PERMUTATIONS, ChannelPermutation
from glow_tf.bijectors.split import FactorOut, SplitPrior
from glow_tf.bijectors.squeeze import Squeeze, squeeze2d, unsqueeze2d
from glow_tf.bijectors.top_prior import TopPrior

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "COMPUTE_DTYPES",
    "COUPLING_KINDS",
    "ChannelPermutation",
    "FactorOut",
    "GlowBijector",
    "InvertibleConv1x1",
    "LUInvertibleConv1x1",
    "PERMUTATION_KINDS",
    "PERMUTATIONS",
    "SplitPrior",
    "Squeeze",
    "TopPrior",
    "squeeze2d",
    "unsqueeze2d",
]
