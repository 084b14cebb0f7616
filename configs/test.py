"""A tiny, fast config for the test suite: 8x8 digits, L=2, K=2, width 16, 20 steps, EMA on."""

from configs import default


def get_config():
    """Tiny model and short cadences so every code path runs in seconds."""
    config = default.get_config()
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.n_bits = 4

    config.model.num_levels = 2
    config.model.num_steps = 2
    config.model.hidden_width = 16

    config.optim.warmup_images = 320  # 20 steps
    config.optim.ema_decay = 0.9  # exercise the EMA path (checkpointed, swapped in for eval and samples)

    config.train.batch_size = 16
    # Two batch slices in every process, whatever its threads (auto would give 2 in train.py's
    # subprocesses and 1 in pytest's): sharded steps everywhere, and resume comparisons run the same graph.
    config.train.batch_shards = 2
    config.train.num_steps = 20
    config.train.n_init = 32
    config.train.log_every = 5
    config.train.checkpoint_every = 10
    config.train.eval_every = 10
    config.train.sample_every = 10
    config.train.max_nonfinite_steps = 3

    config.eval.batch_size = 64
    config.eval.max_examples = 128
    config.sample.num_samples = 16
    config.sample.num_reconstructions = 8
    return config
