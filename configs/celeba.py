"""CelebA at 64x64 and 5 bits, sized for one GPU (about 16 GB).

``python train.py --dataset=celeba``. L=4, K=32, width 512, affine coupling, a
global batch of 32 with gradient checkpointing (each flow step recomputed in the
backward pass keeps the activations of 32 images at 64x64 within 16 GB) and EMA
weights for samples and evaluation.
"""

from configs import cifar10


def get_config():
    """CelebA 64x64, 5 bits, one GPU."""
    config = cifar10.get_config()
    config.data.name = "celeba"
    config.data.image_size = 64
    config.data.n_bits = 5
    config.data.random_shift = 0.0
    config.data.random_flip = True
    config.model.num_levels = 4
    config.model.num_steps = 32
    config.train.batch_size = 32
    config.train.per_replica_batch_size = 0
    config.train.n_init = 64
    config.train.backprop = "checkpointing"
    config.optim.beta2 = 0.999
    config.optim.warmup_images = 200_000
    config.optim.ema_decay = 0.999
    config.eval.batch_size = 64
    config.eval.max_examples = 2048  # during training; eval mode uses the whole split
    return config
