"""CIFAR-10 as in the paper: 32x32x3, 8 bits, L=3, K=32, width 512, affine coupling, 1x1 conv.

Paper: test 3.35 bits/dim on 8 GPUs x 64 images with lr 1e-3 and 10 warm-up epochs.
``per_replica_batch_size=64`` reproduces the paper's 64 per GPU on any number of GPUs
(global batch 512 on 8); ``--config.train.batch_size=N`` sets a global batch instead.
"""

from configs import default


def get_config():
    """CIFAR-10 (paper settings)."""
    config = default.get_config()
    config.data.name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.n_bits = 8
    config.data.random_shift = 0.1  # the paper's CIFAR-10 run used random shifts of up to 10%

    config.model.num_levels = 3
    config.model.num_steps = 32
    config.model.hidden_width = 512
    config.model.coupling = "affine"
    config.model.permutation = "invconv"
    config.model.learn_top = True

    config.optim.learning_rate = 1e-3
    config.optim.warmup_images = 500_000  # 10 epochs of 50,000 images
    config.optim.beta2 = 1.0 - 1.0 / 98  # original: 1 - 1/steps_per_epoch (50,000 / 512 images)

    config.train.batch_size = 0
    config.train.per_replica_batch_size = 64
    config.train.n_init = 256
    config.train.backprop = "checkpointing"  # the original checkpoints every flow step by default
    config.train.num_steps = 200_000
    return config
