"""Shared test set-up: quiet TF logs, a fixed TF seed per test, and the shared fixtures.

``pytest.ini``'s ``pythonpath = .`` puts the repository root on ``sys.path`` (``configs``,
``train`` and ``glow_tf`` import from the checkout); ``tests/`` is there too, for ``helpers``.

Fixtures (session-scoped factories, usable from fixtures of any scope):

* ``test_config(**{"section.key": value})`` -- ``configs/test.py`` (8x8 digits) with overrides.
* ``tiny_model(image_shape, n_bits, num_classes=0, seed=0, num_steps=2, **glow_kwargs)`` -- an
  initialised, perturbed 2-level Glow of width 8 (:func:`helpers.tiny_model`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import helpers  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    tf.random.set_seed(0)


@pytest.fixture(scope="session")
def test_config():
    """``configs/test.py``'s config with ``{"section.key": value}`` overrides (a new one per call)."""
    return helpers.make_test_config


@pytest.fixture(scope="session")
def tiny_model():
    """An initialised, perturbed 2-level Glow: ``tiny_model(image_shape, n_bits, num_classes=0, seed=0, ...)``."""
    return helpers.tiny_model
