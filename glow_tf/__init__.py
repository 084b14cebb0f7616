"""glow-tf: Glow (Kingma & Dhariwal 2018) as TensorFlow Probability bijectors."""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from glow_tf import bijectors, metrics, nn, parallelism  # noqa: E402
from glow_tf.metrics import bits_per_dim  # noqa: E402
from glow_tf.model import Glow  # noqa: E402
from glow_tf.quantization import dequantize, postprocess, preprocess  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Glow",
    "bijectors",
    "bits_per_dim",
    "dequantize",
    "metrics",
    "nn",
    "parallelism",
    "postprocess",
    "preprocess",
]
