"""Defaults shared by every experiment: the original Glow's settings on one device.

The schema lives in ``glow_tf/config_lib.py:default_config`` (a comment on every
field; the ``data.*`` fields are documented in ``glow_tf/data/config.py:default_config``)
so that the library can reject unknown keys; the experiment files next to this one
import it and change a few fields.
Override any field on the command line, e.g. ``--config.train.batch_size=32``.
"""

from glow_tf import config_lib


def get_config():
    """The default ``ConfigDict`` (CIFAR-10-like model, see ``config_lib.default_config``)."""
    return config_lib.default_config()
