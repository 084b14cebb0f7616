"""LSUN 64x64 as in the paper: L=3, K=48, width 512, affine, 16 images per GPU.

Paper: test 2.38 / 2.46 / 2.67 bits/dim on bedroom / tower / church_outdoor (8 GPUs x 16).
Pick the category with ``--config.data.lsun_category=tower``.
"""

from configs import cifar10


def get_config():
    """LSUN (paper settings), bedroom by default."""
    config = cifar10.get_config()
    config.data.name = "lsun"
    config.data.lsun_category = "bedroom"
    config.data.image_size = 64
    config.data.random_shift = 0.0
    config.model.num_levels = 3
    config.model.num_steps = 48
    config.train.per_replica_batch_size = 16
    config.train.n_init = 64
    config.optim.beta2 = 1.0 - 1.0 / 390  # 50,000 / (8 x 16) steps per epoch
    return config
