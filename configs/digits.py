"""The offline quick start: scikit-learn's 1,797 real 8x8 handwritten digits on a laptop CPU.

``python train.py --dataset=digits`` needs no download and shows digit-like samples
in ``runs/digits/samples/`` within minutes on 2 CPU cores. L=2, K=8, width 64,
affine coupling, a global batch of 64, 5 bits, EMA weights for samples and eval.
"""

from configs import default


def get_config():
    """8x8 digits, small model, a few thousand steps."""
    config = default.get_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.n_bits = 5  # the 17 grey levels of the digits stay distinct (4 bits would merge two)

    config.model.num_levels = 2
    config.model.num_steps = 8
    config.model.hidden_width = 64
    config.model.coupling = "affine"

    config.optim.warmup_images = 6_400  # 100 steps
    config.optim.ema_decay = 0.99

    config.train.batch_size = 64
    # Test bits/dim bottoms out near step 1,250 (~50 epochs of the 1,500 training digits), then the model
    # overfits; the best-by-eval checkpoint is kept either way.
    config.train.num_steps = 1_500
    config.train.n_init = 256
    config.train.log_every = 100
    config.train.checkpoint_every = 250
    config.train.eval_every = 250
    config.train.sample_every = 250

    config.eval.batch_size = 256
    config.sample.num_samples = 64
    return config
