"""The config of a benchmark training run: a ``configs/*.py`` file, optionally on an ``.npz``, with its cadences."""

from __future__ import annotations

import importlib
import os

import ml_collections


def run_config(name: str, data_path: str, steps: int, eval_every: int) -> ml_collections.ConfigDict:
    """``configs/<name>.py`` trained for ``steps``, evaluated on the whole test split every ``eval_every``.

    With ``data_path`` the data is that ``.npz`` (``data.name = "npz"``, 10% held out
    as the test split). Samples and a checkpoint are written once, at the end.
    """
    config = importlib.import_module(f"configs.{name}").get_config()
    if data_path:
        config.data.name = "npz"
        config.data.path = os.path.abspath(data_path)
    config.train.num_steps = steps
    config.train.eval_every = eval_every
    config.train.sample_every = steps
    config.train.checkpoint_every = steps
    config.eval.max_examples = 0  # the whole test split
    return config
