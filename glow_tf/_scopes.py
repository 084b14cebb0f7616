"""Name scopes of glow_tf's layers: one readable name per layer, however often a graph calls it.

Variables take the scope their layer is built in: ``Glow`` builds level ``i`` in
``level{i}`` and its flow step ``k`` in ``level{i}/step{k}``, and every layer (bijector
or network module) creates its variables in its own scope, so they read
``level0/step3/coupling/conv1/kernel``, ``level1/split_prior/kernel``,
``top_prior/learned_top/bias``. Checkpoints do not depend on these names: they
restore by object path (``model/levels/0/layers/9/network/conv1/kernel``).

Ops take the scope of the call: ``Glow``'s passes enter ``level{i}`` and ``step{k}``
and each layer's methods enter the layer's name (:func:`scoped`), so graphs and
profiles read ``level0/step3/coupling/conv1/Conv2D``. Inside the traced function
that runs every flow step of a level (:mod:`glow_tf.flow`) the step is not known:
its ops read ``level0/step/coupling/conv1/Conv2D`` and the calls of it
``level0/step3/...``.
"""

from __future__ import annotations

import functools

import tensorflow as tf

__all__ = ["name_scope", "scoped"]


def name_scope(name: str) -> tf.name_scope:
    """``tf.name_scope(name)`` inside the current scope, reused when entered again.

    A plain ``tf.name_scope`` entered twice in one graph makes ``name_1`` the second
    time; this one enters the same scope (its ops get unique names inside it), so
    every call of a layer in a graph shares the layer's name.
    """
    current = tf.get_current_name_scope()
    return tf.name_scope(f"{current}/{name}/" if current else f"{name}/")


def scoped(method):
    """Runs a method of an object with a ``name`` inside :func:`name_scope` of that name.

    Nothing is entered when the current scope already ends with the name (one
    method of the layer calling another, or a network sharing its layer's name).
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        current = tf.get_current_name_scope()
        if current == self.name or current.endswith("/" + self.name):
            return method(self, *args, **kwargs)
        with name_scope(self.name):
            return method(self, *args, **kwargs)

    return wrapper
