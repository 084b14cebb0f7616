"""Downsampled ImageNet 32x32 as in the paper: L=3, K=48, width 512, affine, 64 images per GPU.

Paper: test 4.09 bits/dim (8 GPUs x 64).
"""

from configs import cifar10


def get_config():
    """ImageNet 32x32 (paper settings)."""
    config = cifar10.get_config()
    config.data.name = "imagenet32"
    config.data.random_shift = 0.0
    config.model.num_steps = 48
    return config
