"""Optimisation pieces: Adamax with the original's linear warm-up, EMA weights, the update guard.

* :class:`LinearWarmup` -- ``lr * min(1, images_seen / warmup_images)`` as openai/glow
  (``images_seen`` counts the current update's batch, so update 0 already moves).
* :func:`make_optimizer` -- ``tf_keras.optimizers.legacy.Adamax`` (one fused
  ``ApplyAdaMax`` kernel per variable: the fastest to trace and run here).
* :class:`ExponentialMovingAverage` -- Polyak averaging of the weights, checkpointed,
  swappable into the model for evaluation, samples and export.
* :func:`guard_gradients` -- global norm, optional clipping, and a finite flag that
  makes the training step skip an update with a non-finite loss or gradient.
* :func:`update_groups` -- the variables of each flow step as one group, whose updates,
  norm terms and averages run as one call of a traced function (the same numbers,
  a training-step graph with a fraction of the per-variable nodes).
* :class:`DynamicLossScale` -- loss scaling for float16 networks (``compute_dtype='float16'``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow as tf
import tf_keras

from glow_tf import _validate

__all__ = [
    "apply_adamax",
    "LinearWarmup",
    "make_optimizer",
    "create_slots",
    "shared_variable_names",
    "ExponentialMovingAverage",
    "guard_gradients",
    "global_norm",
    "update_groups",
    "DynamicLossScale",
]


class LinearWarmup(tf_keras.optimizers.schedules.LearningRateSchedule):
    """``lr(t) = peak * min(1, (t + 1) * batch / warmup_images)`` for update index ``t`` (0-based).

    Args:
      peak: the learning rate after warm-up.
      global_batch: images per update.
      warmup_images: images over which the rate grows linearly; 0 disables warm-up.
    """

    def __init__(self, peak: float, global_batch: int, warmup_images: int):
        self.peak = float(peak)
        self.global_batch = int(global_batch)
        self.warmup_images = int(warmup_images)

    def __call__(self, step):
        if self.warmup_images <= 0:
            return tf.constant(self.peak, tf.float32)
        seen = (tf.cast(step, tf.float32) + 1.0) * self.global_batch
        return self.peak * tf.minimum(1.0, seen / float(self.warmup_images))

    def get_config(self) -> dict:
        return {"peak": self.peak, "global_batch": self.global_batch, "warmup_images": self.warmup_images}


def make_optimizer(optim: ml_collections.ConfigDict, global_batch: int) -> tf_keras.optimizers.legacy.Adamax:
    """Adamax as the original (lr 1e-3, beta1 0.9) with :class:`LinearWarmup`.

    Create it inside the distribution strategy's scope.

    Args:
      optim: the ``config.optim`` section.
      global_batch: images per update (for the warm-up in images).
    """
    schedule = LinearWarmup(optim.learning_rate, global_batch, optim.warmup_images)
    return tf_keras.optimizers.legacy.Adamax(
        learning_rate=schedule, beta_1=optim.beta1, beta_2=optim.beta2, epsilon=optim.epsilon
    )


def create_slots(optimizer: tf_keras.optimizers.legacy.Optimizer, variables: Sequence[tf.Variable]) -> None:
    """Creates the optimizer's slot variables now (inside the strategy scope), not on the first update.

    Slots that exist before the training step is traced keep variable creation
    out of the traced step (the Keras step updates under a ``tf.cond``, which cannot
    create them), and a checkpoint restore fills them directly instead of deferring.

    Each slot is named after its kind alone (``m``, ``v``), not ``<variable>/m``:
    checkpoints key slots by their variable's object path, never by name, and
    TensorFlow builds a new kernel for every distinct variable name it creates
    (:func:`shared_variable_names`).
    """
    with shared_variable_names():
        optimizer._create_all_weights(list(variables))  # the legacy OptimizerV2 hook its apply_gradients uses


@contextlib.contextmanager
def shared_variable_names() -> Iterator[None]:
    """Variables created inside are named by the last part of their name only (``a/b/m`` -> ``m``).

    For bookkeeping variables (optimizer slots, moving averages) that thousands of
    model variables each have one of: eager TensorFlow instantiates a new
    ``VarHandleOp`` kernel for every distinct name (about 0.9 ms per variable here,
    0.14 ms when the name repeats), which made them most of a paper-size Trainer's
    construction time. Checkpoints do not see the names (they key by object path).
    """

    def creator(next_creator, **kwargs):
        name = kwargs.get("name")
        if name:
            kwargs["name"] = name.rsplit("/", 1)[-1]
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def update_groups(
    variables: Sequence[tf.Variable], groups: Sequence[Sequence[tf.Variable]], strategy: tf.distribute.Strategy
) -> list[list[int]]:
    """The ``groups`` argument of :func:`apply_adamax`, :func:`guard_gradients` and EMA updates.

    Args:
      variables: the updated variables, in the order of the gradients.
      groups: lists of some of them (``Glow.step_variables()``), each updated by one call.
      strategy: the strategy of the run; under a TPU strategy there are no groups
        (updates there stay one op per variable, as TPU programs expect).

    Returns:
      Each non-empty group as indices into ``variables``.
    """
    if isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.experimental.TPUStrategy)):
        return []
    index = {v.ref(): i for i, v in enumerate(variables)}
    return [[index[v.ref()] for v in group] for group in groups if group]


def _ungrouped(count: int, groups: Sequence[Sequence[int]]) -> list[int]:
    """The indices in ``range(count)`` that no group holds, in order."""
    grouped = {i for group in groups for i in group}
    return [i for i in range(count) if i not in grouped]


def _grouped_updates(strategy, targets: Sequence, values: Sequence, groups, update_one, update_group) -> None:
    """``strategy.extended.update`` of each target with its value, each group's in one ``update_group`` call.

    ``update_one(target, value)``; ``update_group(first, other_targets, values)`` (the
    group's first target places the call, as ``update`` places one target's).
    """
    for group in groups:
        members = [targets[i] for i in group]
        args = (members[1:], [values[i] for i in group])
        strategy.extended.update(members[0], update_group, args=args, group=False)
    for i in _ungrouped(len(targets), groups):
        strategy.extended.update(targets[i], update_one, args=(values[i],), group=False)


def _adamax_update(handles: tuple, grad: tf.Tensor, hyper: dict, apply: tf.Tensor):
    """``ApplyAdaMax`` on a ``(var, m, v)`` resource handle triple, with the gradient zeroed unless ``apply``."""
    var, m, v = handles
    grad = tf.where(apply, grad, tf.zeros([], grad.dtype))  # a non-finite gradient must not reach the slots
    return tf.raw_ops.ResourceApplyAdaMax(var=var, m=m, v=v, grad=grad, **hyper)


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def _adamax_updates(handles: tuple, grads: tuple, hyper: dict, apply: tf.Tensor) -> None:
    """:func:`_adamax_update` of each triple; traced once per signature and called, not inlined, per group."""
    for triple, grad in zip(handles, grads):
        _adamax_update(triple, grad, hyper, apply)


def apply_adamax(
    optimizer: tf_keras.optimizers.legacy.Adamax,
    grads: Sequence,
    variables: Sequence[tf.Variable],
    apply: tf.Tensor,
    strategy: tf.distribute.Strategy | None = None,
    groups: Sequence[Sequence[int]] = (),
) -> None:
    """One Adamax update of every variable when ``apply``, and none at all otherwise, without a ``tf.cond``.

    The same update as ``optimizer.apply_gradients`` (its ``ApplyAdaMax`` kernel, slots
    ``m``/``v``, learning-rate schedule of ``iterations`` and bias correction
    ``1 - beta1^t``); a skipped update runs the kernel with ``beta1 = beta2 = 1``, a
    zero gradient and a zero learning rate, which leaves the variable and both slots
    unchanged, and ``iterations`` does not advance. Without a branch, the training
    step's graph holds one update per variable instead of a conditional function
    capturing every variable, gradient and slot (seconds of tracing and graph
    optimisation at paper depth).

    Args:
      optimizer: the ``make_optimizer`` Adamax (its slots created, see ``create_slots``).
      grads: gradients, one per variable (per-replica values under a strategy).
      variables: the variables.
      apply: boolean scalar: update, or leave everything as it is.
      strategy: the strategy the variables live in (default: the current one).
      groups: lists of indices into ``variables`` updated by one call of a traced
        function each (``Glow.step_variables``: one group per flow step, so one
        trace serves the K steps of a level); the others are updated one by one.
        The same kernels either way, so the same numbers, with a graph of far
        fewer nodes (faster tracing and first call at paper depth). Make them
        with :func:`update_groups` (none under a TPU strategy).

    Call in cross-replica context.
    """
    strategy = strategy or tf.distribute.get_strategy()
    dtype = variables[0].dtype.base_dtype
    step = tf.cast(optimizer.iterations + 1, dtype)
    beta1, beta2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
    learning_rate = optimizer.learning_rate
    if callable(learning_rate):
        learning_rate = learning_rate(optimizer.iterations)
    one = tf.ones([], dtype)
    hyper = dict(
        beta1_power=tf.pow(beta1, step),
        lr=tf.where(apply, tf.cast(learning_rate, dtype), tf.zeros([], dtype)),
        beta1=tf.where(apply, beta1, one),
        beta2=tf.where(apply, beta2, one),
        epsilon=tf.cast(optimizer.epsilon, dtype),
    )

    def handles(var) -> tuple:  # on one device: the local copy of the variable and of its slots
        return var.handle, optimizer.get_slot(var, "m").handle, optimizer.get_slot(var, "v").handle

    def update(var, grad):
        return _adamax_update(handles(var), grad, hyper, apply)

    def update_group(var, others, grads):
        return _adamax_updates(tuple(handles(v) for v in (var, *others)), tuple(grads), hyper, apply)

    _grouped_updates(strategy, variables, grads, groups, update, update_group)
    optimizer.iterations.assign_add(tf.cast(apply, optimizer.iterations.dtype))


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def _half_squared_norms(grads: tuple) -> tf.Tensor:
    """``[sum(g^2) / 2 for g in grads]`` as one vector (``l2_loss``, as ``tf.linalg.global_norm``)."""
    return tf.stack([tf.nn.l2_loss(g) for g in grads])


def global_norm(grads: Sequence[tf.Tensor], groups: Sequence[Sequence[int]] = ()) -> tf.Tensor:
    """``tf.linalg.global_norm(grads)`` bit for bit, ``sqrt(2 * sum_i l2_loss(g_i))``, with grouped ``l2_loss``es.

    Each group's (lists of indices, as :func:`apply_adamax`'s) half squared norms come
    from one call of a traced function; the vector of all of them is put back in the
    order of ``grads`` before the sum, so the result is the same number.
    """
    if not groups:
        return tf.linalg.global_norm(list(grads))
    singles = _ungrouped(len(grads), groups)
    parts = [_half_squared_norms(tuple(grads[i] for i in group)) for group in groups]
    if singles:
        parts.append(tf.stack([tf.nn.l2_loss(grads[i]) for i in singles]))
    order = [i for group in groups for i in group] + singles
    halves = tf.gather(tf.concat(parts, axis=0), np.argsort(order))
    return tf.sqrt(tf.reduce_sum(halves) * tf.constant(2.0, halves.dtype))


def guard_gradients(
    loss: tf.Tensor, grads: Sequence[tf.Tensor], clip_norm: float = 0.0, groups: Sequence[Sequence[int]] = ()
) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """Global gradient norm, optional clipping and the "apply this update" flag.

    Args:
      loss: the (already all-reduced) scalar loss.
      grads: the (already all-reduced) gradients; every replica must hold the
        same values so that every replica takes the same decision.
      clip_norm: > 0 rescales the gradients to at most this global norm.
      groups: index groups for :func:`global_norm` (the same norm, fewer graph nodes).

    Returns:
      ``(grads, norm, finite)``: the possibly clipped gradients, the global norm
      before clipping, and a boolean scalar, True when the loss and every gradient
      entry are finite.
    """
    norm = global_norm(grads, groups)
    finite = tf.logical_and(tf.math.is_finite(loss), tf.math.is_finite(norm))
    if clip_norm > 0:
        grads, _ = tf.clip_by_global_norm(list(grads), clip_norm, use_norm=norm)
    return list(grads), norm, finite


def _moving_average(average: tf.Variable, variable: tf.Variable, decay: tf.Tensor):
    """``average <- decay * average + (1 - decay) * variable``."""
    return average.assign(decay * average + (1.0 - decay) * variable, read_value=False)


@tf.function(autograph=False, experimental_attributes={"_noinline": True})
def _moving_averages(averages: tuple, variables: tuple, decay: tf.Tensor) -> None:
    """:func:`_moving_average` of each pair; traced once per signature, called (not inlined) per group."""
    for average, variable in zip(averages, variables):
        _moving_average(average, variable, decay)


class ExponentialMovingAverage(tf.Module):
    """Polyak averages ``s <- d * s + (1 - d) * v`` of a list of variables.

    The decay ramps up as TF's ``ExponentialMovingAverage(num_updates=...)``:
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs are
    not dominated by the initial weights. Create it inside the strategy's scope
    after the variables exist; call :meth:`reset` after the data-dependent init.

    Args:
      variables: the variables to average (e.g. ``model.trainable_variables``).
      decay: the final decay, in (0, 1).
    """

    def __init__(self, variables: Sequence[tf.Variable], decay: float, name: str = "ema"):
        super().__init__(name=name)
        self.decay = _validate.number(decay, "EMA decay", 0.0, 1.0, low_open=True, high_open=True)
        self._refs = tuple(v.ref() for v in variables)  # references: not a checkpoint dependency of the EMA
        self._strategy = tf.distribute.get_strategy()  # the strategy whose scope created the variables
        # One shared name (see shared_variable_names); checkpoints key them by position in this list.
        self.averages = [
            tf.Variable(v.read_value(), trainable=False, name="ema_average") for v in self.averaged_variables()
        ]
        self.num_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="num_updates")

    def averaged_variables(self) -> list[tf.Variable]:
        """The variables averaged, in the order of :attr:`averages`."""
        return [ref.deref() for ref in self._refs]

    def reset(self) -> None:
        """Copies the current variables into the averages (eager, cross-replica context)."""
        with self._strategy.scope():
            for avg, var in zip(self.averages, self.averaged_variables()):
                avg.assign(var.read_value())
            self.num_updates.assign(0)

    def update(self, apply: tf.Tensor | bool = True, groups: Sequence[Sequence[int]] = ()) -> None:
        """One averaging step (none when ``apply`` is False); call in cross-replica context.

        ``apply`` may be a boolean tensor: a skipped step averages with decay 1 (no
        change) instead of branching, so the training step needs no ``tf.cond``.
        ``groups`` (indices into the averaged variables, as :func:`apply_adamax`'s)
        average each group in one call of a traced function: the same numbers.
        """
        apply = tf.convert_to_tensor(apply)
        n = tf.cast(self.num_updates, tf.float32)
        decay = tf.where(apply, tf.minimum(self.decay, (1.0 + n) / (10.0 + n)), 1.0)

        def average(avg, var):  # per device: the local copies of both
            return _moving_average(avg, var, decay)

        def average_group(avg, others, variables):
            return _moving_averages((avg, *others), tuple(variables), decay)

        with self._strategy.scope():
            _grouped_updates(self._strategy, self.averages, self.averaged_variables(), groups, average, average_group)
            self.num_updates.assign_add(tf.cast(apply, tf.int64))

    def swap(self) -> None:
        """Exchanges the values of the variables and their averages (twice restores both)."""
        with self._strategy.scope():
            for avg, var in zip(self.averages, self.averaged_variables()):
                saved = tf.identity(var.read_value())
                var.assign(avg.read_value())
                avg.assign(saved)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """Within this context the variables hold the averages; the training values come back after."""
        self.swap()
        try:
            yield
        finally:
            self.swap()


class DynamicLossScale(tf.Module):
    """Dynamic loss scaling for float16 gradients, as in mixed-precision training.

    The step differentiates ``loss * scale`` and divides the gradients by ``scale``,
    so small float16 gradients do not flush to zero. A step whose gradients are not
    finite (an overflow) is skipped and halves the scale (not below ``minimum``);
    after ``growth_interval`` finite steps in a row the scale doubles. ``scale`` and
    the run of good steps are variables, checkpointed with the run, so a resumed run
    continues with the same scale. Create it inside the strategy's scope.

    Args:
      initial: the first scale (2**15, as Keras).
      growth_interval: finite steps in a row before the scale doubles.
      factor: the growth / back-off factor.
      minimum: the scale never falls below this.
    """

    def __init__(
        self,
        initial: float = 2.0**15,
        growth_interval: int = 2000,
        factor: float = 2.0,
        minimum: float = 1.0,
        name: str = "loss_scale",
    ):
        super().__init__(name=name)
        self.growth_interval = int(growth_interval)
        self.factor = float(factor)
        self.minimum = float(minimum)
        self.scale = tf.Variable(float(initial), trainable=False, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="good_steps")

    def scaled(self, loss: tf.Tensor) -> tf.Tensor:
        """``loss * scale`` (what to differentiate)."""
        return loss * tf.cast(self.scale, loss.dtype)

    def unscaled(self, grads: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The true gradients from those of :meth:`scaled`."""
        return [g / tf.cast(self.scale, g.dtype) for g in grads]

    def update(self, finite: tf.Tensor) -> None:
        """After a step: grow after ``growth_interval`` finite steps, back off after an overflow.

        Call in cross-replica context with the (identical) finite flag of every replica.
        """
        good = tf.where(finite, self.good_steps + 1, tf.zeros([], tf.int64))
        grow = tf.logical_and(finite, good >= self.growth_interval)
        scale = tf.where(
            finite,
            tf.where(grow, self.scale * self.factor, self.scale),
            tf.maximum(self.scale / self.factor, self.minimum),
        )
        self.scale.assign(scale)
        self.good_steps.assign(tf.where(grow, tf.zeros([], tf.int64), good))
