"""A level's flow-step variables stacked: one ``[K, ...]`` variable per variable of a step, a view per step.

All ``K`` flow steps of a level create the same variables (same names in their
``step{k}`` scopes, same shapes), so ``Glow(stack_variables=True)`` keeps them as one
variable per kind, ``level0/steps/coupling/conv1/kernel`` of shape ``[K, 3, 3, C, W]``,
whose row ``k`` is step ``k``'s. The layers hold a :class:`StepSlice` where they
would hold their own variable: it reads as row ``k`` (a tensor), assigns row ``k``
(the data-dependent init, the OpenAI converter) and converts like a variable, so
every layer stays an ordinary bijector.

What it buys: a training step captures, reads, differentiates and updates each of
these once per level instead of once per step. At paper depth (K=32, width 512) that
is 51 trainable variables instead of 1,353, and as many fewer nodes times about five (handle,
read, gradient sum, optimizer slots) in the step's graph, which is what tracing and
graph optimisation take time over. Inside a level's pass (:meth:`StackedSteps.unstacked`)
each stacked variable is read once and unstacked into its ``K`` rows; the gradient of
an unstack is the stack of the rows' gradients, so the updates are the same numbers.

How the views are made: :func:`collect_steps` is a variable creator that, while a
step is being built (:meth:`StepCollector.step`), records each variable a layer
creates (name, initial value, trainable) and hands back a view instead;
:meth:`StepCollector.stack` then creates the stacked variables (through the
enclosing creators, so under a ``tf.distribute`` strategy they are its variables)
and binds every view to its row.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["StepSlice", "StackedSteps", "StepCollector", "collect_steps", "stacked_name", "step_name"]

_STEP_SCOPE = re.compile(r"(^|/)step\d+/")
_STEPS_SCOPE = re.compile(r"(^|/)steps/")


def stacked_name(name: str) -> str:
    """``level0/step3/coupling/conv1/kernel`` -> ``level0/steps/coupling/conv1/kernel``."""
    return _STEP_SCOPE.sub(r"\1steps/", name, count=1)


def step_name(name: str, k: int) -> str:
    """``level0/steps/coupling/conv1/kernel``, 3 -> ``level0/step3/coupling/conv1/kernel``: row ``k``'s own name."""
    return _STEPS_SCOPE.sub(rf"\g<1>step{k}/", name, count=1)


class StackedSteps:
    """The stacked variables of one level's ``K`` steps (``variables[j][k]`` is step ``k``'s ``j``-th variable).

    Args:
      variables: one ``[K, ...]`` variable per variable a step creates, in creation order.
      num_steps: ``K``.
    """

    def __init__(self, variables: Sequence[tf.Variable], num_steps: int):
        self.variables = list(variables)
        self.num_steps = int(num_steps)
        self._rows: list[list[tf.Tensor]] | None = None

    def row(self, j: int, k: int) -> tf.Tensor:
        """Step ``k``'s value of variable ``j``: a row of the unstacked read inside :meth:`unstacked`, else a slice."""
        if self._rows is not None:
            return self._rows[j][k]
        return self.variables[j][k]

    def assign_row(self, j: int, k: int, value) -> None:
        """Sets row ``k`` of variable ``j``: in place, or by a whole assign where a (distributed) variable has none."""
        variable = self.variables[j]
        value = tf.convert_to_tensor(value, variable.dtype)[tf.newaxis]
        try:
            variable.scatter_nd_update([[k]], value)
        except NotImplementedError:  # raised before any change (e.g. by MirroredVariable)
            variable.assign(tf.tensor_scatter_nd_update(variable, [[k]], value))

    @contextlib.contextmanager
    def unstacked(self) -> Iterator[None]:
        """Within: every view reads a row of one read of its variable (``tf.unstack``), in the current graph.

        A graph traced inside then holds one read and one unstack per stacked
        variable, and under a ``GradientTape`` each variable gets the stack of its
        rows' gradients.
        """
        if self._rows is not None:  # already inside (a nested pass of the same level)
            yield
            return
        self._rows = [tf.unstack(tf.convert_to_tensor(v), num=self.num_steps) for v in self.variables]
        try:
            yield
        finally:
            self._rows = None


class StepSlice:
    """Step ``k``'s row of a stacked variable, standing where a layer would hold its own ``tf.Variable``.

    Reads as a tensor (``tf.convert_to_tensor``, operators, ``numpy()``), assigns its
    row (``assign``), and reports the step's own name, shape and dtype. Before
    :meth:`StepCollector.stack` binds it, it reads as its initial value.
    """

    def __init__(self, name: str, initial_value: tf.Tensor, trainable: bool):
        self._name = name
        self._initial = initial_value
        self._dtype, self._shape = initial_value.dtype, initial_value.shape
        self.trainable = bool(trainable)
        self._owner: StackedSteps | None = None
        self._index = (0, 0)

    def bind(self, owner: StackedSteps, j: int, k: int) -> None:
        self._owner, self._index = owner, (j, k)
        self._initial = None

    def value(self) -> tf.Tensor:
        if self._owner is None:
            return self._initial
        return self._owner.row(*self._index)

    def read_value(self) -> tf.Tensor:
        return tf.identity(self.value())

    def numpy(self) -> np.ndarray:
        return self.value().numpy()

    def assign(self, value, read_value: bool = True):
        if self._owner is None:
            raise RuntimeError(f"{self._name}: assigned before its level's variables were stacked.")
        self._owner.assign_row(*self._index, value)
        return self.value() if read_value else None

    @property
    def name(self) -> str:
        return self._name + ":0"

    @property
    def dtype(self) -> tf.DType:
        return self._dtype

    @property
    def shape(self) -> tf.TensorShape:
        return self._shape

    @property
    def row(self) -> int:
        """``k``: the step this is the row of."""
        return self._index[1]

    @property
    def stacked(self) -> tf.Variable:
        """The stacked variable this is a row of."""
        return self._owner.variables[self._index[0]]

    def __tf_tensor__(self, dtype=None, name=None) -> tf.Tensor:
        return tf.convert_to_tensor(self.value(), dtype=dtype, name=name)

    def __repr__(self) -> str:
        return f"<StepSlice {self._name!r} row {self._index[1]} of {self.stacked.name if self._owner else '?'}>"


def _operator(name: str):
    def apply(self, *args):
        return getattr(tf.convert_to_tensor(self.value()), name)(*args)

    apply.__name__ = name
    return apply


for _name in tf.Tensor.OVERLOADABLE_OPERATORS - {"__eq__", "__ne__"}:  # identity equality keeps views hashable
    setattr(StepSlice, _name, _operator(_name))


class StepCollector:
    """What :func:`collect_steps` records: each step's views, in creation order."""

    def __init__(self):
        self.steps: list[list[StepSlice]] = []
        self._current: list[StepSlice] | None = None

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Variables created inside belong to the next step (and come back as views)."""
        self._current = []
        try:
            yield
        finally:
            self.steps.append(self._current)
            self._current = None

    def _record(self, kwargs: dict) -> StepSlice:
        initial = kwargs.get("initial_value")
        initial = initial() if callable(initial) else initial
        initial = tf.convert_to_tensor(initial, dtype=kwargs.get("dtype"))
        with tf.name_scope(kwargs.get("name") or "Variable") as scope:
            name = scope.rstrip("/")
        trainable = kwargs.get("trainable")
        view = StepSlice(name, initial, True if trainable is None else trainable)
        self._current.append(view)
        return view

    def stack(self) -> StackedSteps:
        """Creates one ``[K, ...]`` variable per variable of a step and binds every step's views to its rows.

        Raises:
          ValueError: when the steps did not create the same variables (names, shapes, dtypes).
        """
        first = self.steps[0]
        for k, views in enumerate(self.steps):
            same = len(views) == len(first) and all(
                stacked_name(a._name) == stacked_name(b._name) and a.shape == b.shape and a.dtype == b.dtype
                for a, b in zip(views, first)
            )
            if not same:
                raise ValueError(f"step {k} creates other variables than step 0: its variables cannot be stacked.")
        variables = []
        for j, view in enumerate(first):
            value = tf.stack([views[j]._initial for views in self.steps])
            scope, _, name = stacked_name(view._name).rpartition("/")
            with tf.name_scope(scope + "/") if scope else contextlib.nullcontext():  # absolute: the steps' scope
                variables.append(tf.Variable(value, trainable=view.trainable, name=name))
        owner = StackedSteps(variables, len(self.steps))
        for k, views in enumerate(self.steps):
            for j, view in enumerate(views):
                view.bind(owner, j, k)
        return owner


@contextlib.contextmanager
def collect_steps() -> Iterator[StepCollector]:
    """A variable creator scope in which variables created inside ``collector.step()`` become views.

    Variables created outside a ``step()`` (a level's split prior) are created as usual.
    """
    collector = StepCollector()

    def creator(next_creator, **kwargs):
        if collector._current is None:
            return next_creator(**kwargs)
        return collector._record(kwargs)

    with tf.variable_creator_scope(creator):
        yield collector
