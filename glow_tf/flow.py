"""The flow steps of one level: traced once, run with every step's weights, differentiated three ways.

All ``K`` steps ``[actnorm, permutation, coupling]`` of a level have the same shapes,
so one step's maths, written as a function of the step's weights
(``GlowBijector.prepare`` / ``encode_with`` / ``decode_with``), serves them all:
:class:`FlowSteps` traces it once per level as a ``tf.function`` (not inlined into the
caller) and calls it ``K`` times with each step's weights. The graph of a training
step then holds one copy of a step's ops per level, not ``K`` per batch slice, which
is what makes tracing, graph optimisation and the first step fast at paper depths.

The batch arrives as a list of slices (``Glow.batch_shards``). Each slice runs its own
chain of step calls, so the slices never wait for each other between steps (a call's
outputs exist only once the whole call is done); each call computes the step's
batch-independent tensors (folded kernels, ``W``, log-dets) itself, which costs
little next to the convolutions.

With ``Glow(stack_variables=True)`` (:mod:`glow_tf.stacking`) the level's step variables
are ``[K, ...]`` variables: a pass reads each once and unstacks it into the steps'
weights, so a training step's graph captures, reads and updates a handful of variables
per level instead of every step's.

Names (:mod:`glow_tf._scopes`): the calls of step ``k`` run in the scope ``step{k}`` of
the caller's (``Glow`` enters ``level{i}``); the traced step function's own ops, which
serve every step, read ``level{i}/step/<layer>/...``.

Gradients (``backprop``):

* ``'standard'``: TensorFlow differentiates the step functions; every step's
  activations stay alive until the backward pass (memory grows with K).
* ``'checkpointing'``: each step keeps only its input; the backward pass recomputes
  the step (``d = vjp(step, x_k)``), about 1/3 more compute.
* ``'reversible'``: nothing of the level is kept but its output. The backward pass
  walks the steps from last to first and rebuilds each step's input from its output
  with the step's exact inverse, then takes the step's vector-Jacobian product. The
  coupling's network is evaluated once for both (its input ``z1 = x1`` passes
  through the coupling unchanged)::

      h = NN(z1);  x2 = uncouple(z2, h);  (z2, ld) = couple(x2, h)   # differentiated
      dx1 = dz1 + d/dz1 [z2 . dz2 + ld . dld],  dx2 = d/dx2 [...],  dW = d/dW [...]

  so memory does not grow with K (or L), for about the compute of checkpointing.
  Rebuilt inputs carry float rounding (~1e-6 relative per step), so gradients agree
  with standard backprop to float32 tolerance, not bit for bit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import tensorflow as tf

from glow_tf import nn, stacking
from glow_tf._scopes import name_scope
from glow_tf.bijectors import GlowBijector
from glow_tf.bijectors.base import float_indices, place_gradients, zeros_for_none

__all__ = ["BACKPROP_MODES", "FlowSteps"]

BACKPROP_MODES = ("standard", "checkpointing", "reversible")


class _Traced:
    """``fn`` as one ``tf.function`` that a caller's graph calls instead of inlining (one copy for K calls).

    ``call(inline, ...)`` runs ``fn`` itself instead when ``inline`` (the caller's graph
    then holds a copy per call: what XLA needs, as it recompiles a nested function's
    gradient on every call) or when executing eagerly (a one-off eager call would pay
    for tracing and optimising the function more than it saves). The traced
    function builds its ops in the name scope ``scope`` (a function graph starts
    outside every scope of its callers).
    """

    def __init__(self, fn, scope: str):
        self.fn = fn

        @functools.wraps(fn)
        def in_scope(*args):
            with tf.name_scope(scope + "/"):
                return fn(*args)

        self.traced = tf.function(
            in_scope, autograph=False, reduce_retracing=True, experimental_attributes={"_noinline": True}
        )

    def call(self, inline: bool, *args):
        return self.fn(*args) if inline or tf.executing_eagerly() else self.traced(*args)


class FlowSteps:
    """The ``K`` flow steps of one level, each a list ``[actnorm, permutation, coupling]`` of bijectors.

    Args:
      steps: the steps in encode order; all of the same configuration (step 0's
        layers supply the functions that run every step).
      name: the level's name (``level0``); the traced step functions build their
        ops in ``<name>/step``.
      stacked: the level's stacked step variables when the layers hold views of
        them (:mod:`glow_tf.stacking`); each pass then reads every stacked
        variable once and unstacks it.
    """

    def __init__(
        self, steps: Sequence[Sequence[GlowBijector]], name: str = "flow", stacked: stacking.StackedSteps | None = None
    ):
        self.steps = [list(step) for step in steps]
        self.stacked_variables = stacked
        self.template = self.steps[0]
        self._sizes = [len(layer.weights()) for layer in self.template]
        self._stacked: list[tuple] | None = None  # step weights from stacked tensors (stacked_weights)
        scope = f"{name}/step"
        self._encode_fn = _Traced(self._encode_step, scope)
        self._decode_fn = _Traced(self._decode_step, scope)
        self._vjp_fn = _Traced(self._step_vjp, scope)
        self._reverse_vjp_fn = _Traced(self._reverse_step_vjp, scope)

    # ---------------------------------------------------------- one step's maths
    def step_weights(self, k: int) -> tuple[tf.Tensor, ...]:
        """Step ``k``'s weights, its layers' ``weights()`` one after the other (see :meth:`stacked_weights`)."""
        if self._stacked is not None:
            return self._stacked[k]
        with name_scope(f"step{k}"):
            return tuple(w for layer in self.steps[k] for w in layer.weights())

    def stack_weights(self) -> list[tf.Tensor]:
        """Every step's weights stacked: entry ``j`` is ``[K, ...]``, the ``j``-th weight of steps ``0..K-1``."""
        return [tf.stack(column) for column in zip(*self._all_step_weights())]

    @contextlib.contextmanager
    def stacked_weights(self, stacked: Sequence[tf.Tensor]) -> Iterator[None]:
        """Runs the steps with weights sliced from ``stacked`` (:meth:`stack_weights`' layout), not their variables.

        A graph traced inside then holds one read and one unstack per weight of a
        step instead of one read per weight of every step: what makes an export of
        ``K * (weights per step)`` variables small. The values, and so the results, are the same.
        """
        columns = [tf.unstack(tf.convert_to_tensor(s), num=len(self.steps)) for s in stacked]
        previous, self._stacked = self._stacked, [tuple(c[k] for c in columns) for k in range(len(self.steps))]
        try:
            yield
        finally:
            self._stacked = previous

    def _all_step_weights(self) -> list[tuple]:
        """``[step_weights(k) for k]``, with stacked variables read once each (:meth:`StackedSteps.unstacked`)."""
        read_rows = self.stacked_variables is not None and self._stacked is None
        with self.stacked_variables.unstacked() if read_rows else contextlib.nullcontext():
            return [self.step_weights(k) for k in range(len(self.steps))]

    def _per_layer(self, weights: Sequence[tf.Tensor]) -> list[tuple]:
        out, start = [], 0
        for size in self._sizes:
            out.append(tuple(weights[start : start + size]))
            start += size
        return out

    def _encode_step(self, xs: list, weights: tuple) -> tuple[list, list]:
        """One step on every slice: ``(zs, [B] log-dets)``."""
        lds = [tf.zeros(tf.shape(x)[:1], x.dtype) for x in xs]
        for layer, w in zip(self.template, self._per_layer(weights)):
            prepared = layer.prepare(w, xs[0].shape[-3:])
            outs = [layer.encode_with(prepared, x) for x in xs]
            xs = [z for z, _ in outs]
            lds = [total + ld for total, (_, ld) in zip(lds, outs)]
        return xs, lds

    def _decode_step(self, zs: list, weights: tuple) -> list:
        for layer, w in reversed(list(zip(self.template, self._per_layer(weights)))):
            prepared = layer.prepare(w, zs[0].shape[-3:], decode=True)
            zs = [layer.decode_with(prepared, z) for z in zs]
        return zs

    def _step_vjp(self, xs: list, weights: tuple, dzs: list, dlds: list) -> tuple[list, tuple]:
        """Recomputes a step from its input and returns ``(dxs, dweights)``."""
        floats = float_indices(weights)
        sources = [weights[i] for i in floats]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            tape.watch(sources)
            zs, lds = self._encode_step(xs, weights)
        dxs, dfloat = tape.gradient((zs, lds), (xs, sources), output_gradients=(dzs, dlds))
        return zeros_for_none(dxs, xs), place_gradients(dfloat, floats, len(weights), sources)

    def _reverse_step_vjp(self, zs: list, weights: tuple, dzs: list, dlds: list) -> tuple[list, list, tuple]:
        """Rebuilds a step's input from its output and returns ``(xs, dxs, dweights)``."""
        grads = []
        for layer, w in reversed(list(zip(self.template, self._per_layer(weights)))):
            zs, dzs, dw = layer.rebuild_and_vjp(w, zs, dzs, dlds)
            grads.append(dw)
        return zs, dzs, tuple(g for dw in reversed(grads) for g in dw)

    # ------------------------------------------------------------ all K steps
    def encode(self, xs: list, backprop: str = "standard", inline: bool = False) -> tuple[list, list]:
        """Every step on every slice: ``(zs, [B] log-dets summed over the steps)``.

        ``inline`` traces every step into the caller's graph instead of calling the
        level's one traced step (for XLA). Inside ``nn.data_dependent_init()`` each
        layer runs eagerly on its own variables and initialises its actnorms (the
        whole batch is one slice).
        """
        if nn.in_data_dependent_init():
            return self._initialize(xs)
        weights = self._all_step_weights()
        outs = [self._encode_slice([x], weights, backprop, inline) for x in xs]
        return [z for (z,), _ in outs], [ld for _, (ld,) in outs]

    def _encode_slice(self, xs: list, weights: list[tuple], backprop: str, inline: bool) -> tuple[list, list]:
        if backprop == "reversible":
            return self._reversible(xs, weights, inline)
        totals = [tf.zeros(tf.shape(x)[:1], x.dtype) for x in xs]
        for k, w in enumerate(weights):
            with name_scope(f"step{k}"):
                if backprop == "checkpointing":
                    xs, lds = self._checkpointed(xs, w, inline)
                else:
                    xs, lds = self._encode_fn.call(inline, xs, w)
                totals = [t + ld for t, ld in zip(totals, lds)]
        return xs, totals

    def decode(self, zs: list, inline: bool = False) -> list:
        """The exact inverse of :meth:`encode` on every slice."""
        weights = self._all_step_weights()  # read once, used by every slice
        out = []
        for z in zs:
            for k in reversed(range(len(self.steps))):
                with name_scope(f"step{k}"):
                    (z,) = self._decode_fn.call(inline, [z], weights[k])
            out.append(z)
        return out

    def _initialize(self, xs: list) -> tuple[list, list]:
        totals = [tf.zeros(tf.shape(x)[:1], x.dtype) for x in xs]
        for k, step in enumerate(self.steps):
            with name_scope(f"step{k}"):
                for layer in step:
                    outs = [layer.inverse_and_log_det(x) for x in xs]
                    xs = [z for z, _ in outs]
                    totals = [t + ld for t, (_, ld) in zip(totals, outs)]
        return xs, totals

    def _checkpointed(self, xs: list, weights: tuple, inline: bool) -> tuple[list, list]:
        """One step that keeps only its input for the backward pass."""
        n = len(xs)

        @tf.custom_gradient
        def step(*flat):
            inputs = list(flat[:n])
            zs, lds = self._encode_fn.call(inline, inputs, tuple(flat[n:]))
            outputs = [*zs, *lds]

            def grad(*upstream):
                upstream = zeros_for_none(upstream, outputs)
                dxs, dweights = self._vjp_fn.call(inline, inputs, tuple(flat[n:]), upstream[:n], upstream[n:])
                return [*dxs, *dweights]

            return outputs, grad

        out = step(*xs, *weights)
        return list(out[:n]), list(out[n:])

    def _reversible(self, xs: list, weights: list[tuple], inline: bool) -> tuple[list, list]:
        """All steps as one operation whose backward pass rebuilds every step's input."""
        n, size = len(xs), len(weights[0])

        @tf.custom_gradient
        def level(*flat):
            steps = [tuple(flat[n + k * size : n + (k + 1) * size]) for k in range(len(weights))]
            zs = list(flat[:n])
            totals = [tf.zeros(tf.shape(x)[:1], x.dtype) for x in zs]
            for k, w in enumerate(steps):
                with name_scope(f"step{k}"):
                    zs, lds = self._encode_fn.call(inline, zs, w)
                    totals = [t + ld for t, ld in zip(totals, lds)]
            outputs = [*zs, *totals]

            def grad(*upstream):
                upstream = zeros_for_none(upstream, outputs)
                ys, dys, dlds = zs, upstream[:n], upstream[n:]
                dweights = []
                for k in reversed(range(len(steps))):
                    with name_scope(f"step{k}"):
                        ys, dys, dw = self._reverse_vjp_fn.call(inline, ys, steps[k], dys, dlds)
                    dweights.append(dw)
                return [*dys, *(g for dw in reversed(dweights) for g in dw)]

            return outputs, grad

        out = level(*xs, *(t for w in weights for t in w))
        return list(out[:n]), list(out[n:])
