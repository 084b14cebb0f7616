"""CelebA-HQ 256x256 as in the paper: 5 bits, L=6, K=32, width 512, additive coupling, 1 image per GPU.

The paper's qualitative run used 40 GPUs x 1 image with gradient checkpointing; here
reversible backprop (activation memory independent of K) keeps one 256x256 image well
within a GPU's memory.
"""

from configs import cifar10


def get_config():
    """CelebA-HQ 256 (paper settings)."""
    config = cifar10.get_config()
    config.data.name = "celebahq"
    config.data.image_size = 256
    config.data.n_bits = 5
    config.data.random_shift = 0.0
    config.model.num_levels = 6
    config.model.num_steps = 32
    config.model.coupling = "additive"
    config.train.per_replica_batch_size = 1
    config.train.n_init = 4  # 256 * (32 / 256)**2
    config.train.backprop = "reversible"  # memory independent of K: the trick for 256x256
    config.optim.beta2 = 1.0 - 1.0 / 1250  # 50,000 / (40 x 1) steps per epoch
    config.eval.batch_size = 8
    config.sample.num_samples = 16
    config.sample.num_reconstructions = 4
    return config
