"""MNIST (TFDS) at 28x28x1, 8 bits: L=2 (28 -> 14 -> 7), K=8, width 128, affine coupling.

Sized for a CPU (``python benchmarks/train_quality.py --config=mnist
--data_path=../shared/data/mnist_t10k.npz`` measures its speed and test bits/dim);
on a GPU raise ``model.num_steps`` and ``model.hidden_width`` (e.g. 32 and 512).

Offline, train on the MNIST test set shipped as an ``.npz`` instead::

    python train.py --dataset=mnist --config.data.name=npz \
        --config.data.path=../shared/data/mnist_t10k.npz
"""

from configs import default


def get_config():
    """MNIST, a CPU-friendly model."""
    config = default.get_config()
    config.data.name = "mnist"
    config.data.image_size = 28
    config.data.channels = 1
    config.data.n_bits = 8

    config.model.num_levels = 2
    config.model.num_steps = 8
    config.model.hidden_width = 128
    config.model.coupling = "affine"

    config.optim.warmup_images = 64_000  # 1000 steps
    config.optim.ema_decay = 0.999

    config.train.batch_size = 64
    config.train.num_steps = 20_000
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.eval_every = 2000
    config.train.sample_every = 2000
    config.eval.max_examples = 2000
    return config
