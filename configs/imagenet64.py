"""Downsampled ImageNet 64x64 as in the paper: L=4, K=48, width 512, affine, 16 images per GPU.

Paper: test 3.81 bits/dim (8 GPUs x 16). The init batch scales as the original's
``256 * (32 / size)**2``.
"""

from configs import cifar10


def get_config():
    """ImageNet 64x64 (paper settings)."""
    config = cifar10.get_config()
    config.data.name = "imagenet64"
    config.data.image_size = 64
    config.data.random_shift = 0.0
    config.model.num_levels = 4
    config.model.num_steps = 48
    config.train.per_replica_batch_size = 16
    config.train.n_init = 64
    config.optim.beta2 = 1.0 - 1.0 / 390  # 50,000 / (8 x 16) steps per epoch
    return config
