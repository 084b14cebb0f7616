"""The checkpoint layout of OpenAI's original Glow: which original tensor is which glow_tf variable.

The original (openai/glow ``model.py`` / ``tfops.py``) names its variables by TF1
variable scopes. For level ``i``, flow step ``k`` (``C`` channels in the step,
``C2 = C - C // 2`` in the coupled half, ``W`` the width), with ``p = model/{i}/{k}``:

====================================  =================================================  ==========================
original tensor [shape]               glow_tf variable                                   transform
====================================  =================================================  ==========================
p/actnorm_center/b [1,1,1,C]          levels[i].steps[k][0].module.bias [C]              reshape
p/actnorm_scale/logs [1,1,1,C]        levels[i].steps[k][0].module.logs [C]              reshape (both keep the
                                                                                         stored logs; scale is
                                                                                         exp(3 * logs) in both)
p/invconv/W [C,C]                     levels[i].steps[k][1].w [C,C]                      none (z = x W in both)
p/shuffle/indices [C] int32           levels[i].steps[k][1].permutation [C]              none (z[j] = x[perm[j]])
p/shuffle/indices_inverse [C] int32   (checked: argsort(indices))                        derived
(reverse: no variable)                levels[i].steps[k][1].permutation = [C-1 .. 0]     fixed
p/f1/l_1/W [3,3,C//2+1,W]             ...steps[k][2].network.conv1.kernel                none (edge-bias layout)
p/f1/l_1/actnorm_center/b [1,1,1,W]   ...network.conv1.actnorm.bias [W]                  reshape
p/f1/l_1/actnorm_scale/logs           ...network.conv1.actnorm.logs [W]                  reshape
p/f1/l_2/W [1,1,W,W] (+ actnorm)      ...network.conv2.kernel (+ .actnorm)               none / reshape
p/f1/l_last/W [3,3,W+1,n]             ...network.conv_out.kernel                         affine: relabel last axis
p/f1/l_last/b [1,1,1,n]               ...network.conv_out.bias [n]                       reshape (+ relabel)
p/f1/l_last/logs [1,n]                ...network.conv_out.logs [n]                       reshape (+ relabel)
model/pool{i}/conv/{W,b,logs}         levels[i].split_prior.network.{kernel,bias,logs}   as l_last, relabelled
model/prior/p/{W,b,logs}              top_prior.network.{kernel,bias,logs}               as l_last, no relabel
model/prior/y_emb/{W,b,logs}          top_prior.embedding.{kernel,bias,logs}             W none; b, logs [1,n]->[n]
model/classifier/{W,b,logs}           classifier.{kernel,bias,logs}                      W none; b, logs [1,n]->[n]
(none)                                every actnorm's ``initialized`` flag = True         fixed
====================================  =================================================  ==========================

``n`` is ``2 * C2`` (affine) or ``C2`` (additive). **Relabelling**: the original reads
the affine coupling's shift and scale logit from interleaved output channels
(``h[..., 0::2]``, ``h[..., 1::2]``) and the split prior's mean and log-std likewise;
glow_tf reads contiguous halves. So on the output-channel axis of those layers'
``W``, ``b`` and ``logs``, glow_tf channel ``j < n/2`` is original channel ``2j`` and
glow_tf channel ``n/2 + j`` is original channel ``2j + 1`` (:func:`relabelling`). The
top prior is contiguous in both (no relabelling); the additive coupling's output is
not split (none either). The latents (eps) are not relabelled: only these layers'
outputs are.

The original's checkpoint also holds, for every trainable variable, its Polyak average
``<name>/ExponentialMovingAverage``, and the Adamax state as unnamed ``Variable``
(the step counter t) and ``Variable_1 .. Variable_{2N}`` (the second and first moment
of the N trainable variables in creation order, the order of :func:`layout`).

An LU-decomposed glow_tf 1x1 convolution has no counterpart (the original's LU code
is switched off): it is written as its matrix ``W = P L (U + diag(sign_s exp(log_s)))``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping

import numpy as np
import tensorflow as tf

from glow_tf import nn, stacking
from glow_tf.bijectors import AffineCoupling, ChannelPermutation, InvertibleConv1x1, LUInvertibleConv1x1
from glow_tf.model import Glow

__all__ = [
    "EMA_SUFFIX",
    "Converter",
    "adamax_state",
    "is_optimizer_state",
    "layout",
    "listing",
    "load_into",
    "original_tensors",
    "read_checkpoint",
    "relabelling",
    "write_checkpoint",
]

EMA_SUFFIX = "/ExponentialMovingAverage"
_ADAMAX_NAME = re.compile(r"Variable(_\d+)?")


def listing(items: Iterable, limit: int = 8) -> str:
    """``a, b, c`` (the first ``limit`` items, then how many in all), for one-line error messages."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def is_optimizer_state(name: str) -> bool:
    """True for the original's unnamed Adamax tensors ``Variable``, ``Variable_N``."""
    return _ADAMAX_NAME.fullmatch(name) is not None


def relabelling(channels: int) -> np.ndarray:
    """Index array ``r`` with ``glow_tf[..., j] = original[..., r[j]]``: even channels first, then odd."""
    return np.concatenate([np.arange(0, channels, 2), np.arange(1, channels, 2)])


# ----------------------------------------------------------------------------- converters
class Converter(abc.ABC):
    """Maps some original tensors to some glow_tf variables, both ways.

    Attributes:
      trainable: the names of the original tensors that the original trains (these have
        EMA copies and Adamax state), in the original's creation order.
      variables: the glow_tf variables it sets.
    """

    trainable: tuple[str, ...] = ()
    variables: tuple[tf.Variable, ...] = ()

    @abc.abstractmethod
    def original_specs(self) -> dict[str, tuple[tuple[int, ...], tf.DType]]:
        """``{name: (shape, dtype)}`` of the original tensors, as the glow_tf model's shapes require."""

    @abc.abstractmethod
    def read(self, tensors: Mapping[str, np.ndarray]) -> list[tuple[tf.Variable, np.ndarray]]:
        """The values of :attr:`variables` given the original tensors (validated shapes)."""

    @abc.abstractmethod
    def write(self) -> dict[str, np.ndarray]:
        """The original tensors from the variables' current values."""


class Tensor(Converter):
    """One original tensor <-> one glow_tf variable: a reshape, and optionally the output relabelling."""

    def __init__(self, name: str, variable: tf.Variable, original_shape, relabel: bool = False):
        self.name = name
        self.variable = variable
        self.trainable = (name,) if variable.trainable else ()
        self.variables = (variable,)
        self.shape = tuple(int(d) for d in original_shape)
        self.relabel = relabelling(self.shape[-1]) if relabel else None

    def original_specs(self):
        return {self.name: (self.shape, self.variable.dtype)}

    def read(self, tensors):
        value = np.asarray(tensors[self.name])
        if self.relabel is not None:
            value = value[..., self.relabel]
        return [(self.variable, value.reshape(self.variable.shape))]

    def write(self):
        value = self.variable.numpy().reshape(self.shape)
        if self.relabel is not None:
            value = value[..., np.argsort(self.relabel)]
        return {self.name: value}


class Shuffle(Converter):
    """``{prefix}/indices`` (and its checked inverse ``indices_inverse``) <-> a shuffle permutation."""

    def __init__(self, prefix: str, variable: tf.Variable):
        self.names = (f"{prefix}/indices", f"{prefix}/indices_inverse")
        self.variables = (variable,)
        self.variable = variable

    def original_specs(self):
        shape = (int(self.variable.shape[0]),)
        return {name: (shape, tf.int32) for name in self.names}

    def read(self, tensors):
        indices, inverse = (np.asarray(tensors[n]) for n in self.names)
        if sorted(indices.tolist()) != list(range(len(indices))):
            raise ValueError(f"{self.names[0]} = {indices.tolist()} is not a permutation of 0..{len(indices) - 1}.")
        if not np.array_equal(inverse, np.argsort(indices)):
            raise ValueError(f"{self.names[1]} = {inverse.tolist()} is not the inverse of {self.names[0]}.")
        return [(self.variable, indices)]

    def write(self):
        indices = self.variable.numpy().astype(np.int32)
        return {self.names[0]: indices, self.names[1]: np.argsort(indices).astype(np.int32)}


class Fixed(Converter):
    """A glow_tf variable with no original tensor and one valid value (reverse permutation, init flag)."""

    def __init__(self, variable: tf.Variable, value, what: str):
        self.variables = (variable,)
        self.variable = variable
        self.value = np.asarray(value)
        self.what = what

    def original_specs(self):
        return {}

    def read(self, tensors):
        return [(self.variable, self.value)]

    def write(self):
        if not np.array_equal(self.variable.numpy(), self.value):
            raise ValueError(f"Cannot write this model in the original's layout: {self.what}.")
        return {}


class LUWeight(Converter):
    """An LU-decomposed 1x1 convolution, written as its matrix ``W`` (the original has no LU variables)."""

    def __init__(self, name: str, layer: LUInvertibleConv1x1):
        self.name = name
        self.layer = layer
        self.trainable = (name,)
        self.variables = (layer.permutation, layer.sign_s, layer.lower, layer.upper, layer.log_s)

    def original_specs(self):
        return {self.name: ((self.layer.channels, self.layer.channels), tf.float32)}

    def read(self, tensors):
        raise ValueError(
            f"{self.name}: an LU-decomposed 1x1 convolution has no counterpart in the original's checkpoints; "
            "build the model with lu_decomposed=False."
        )

    def write(self):
        p, sign, lower, upper, log_s = (v.numpy().astype(np.float64) for v in self.variables)
        eye = np.eye(len(sign))
        w = p @ (np.tril(lower, -1) + eye) @ (np.triu(upper, 1) + np.diag(sign * np.exp(log_s)))
        return {self.name: w.astype(np.float32)}


def _actnorm(prefix: str, module: nn.ActNormModule) -> list[Converter]:
    c = module.channels
    return [
        Tensor(f"{prefix}/actnorm_center/b", module.bias, [1, 1, 1, c]),
        Tensor(f"{prefix}/actnorm_scale/logs", module.logs, [1, 1, 1, c]),
        Fixed(module.initialized, True, "an actnorm is not initialised (run the data-dependent init first)"),
    ]


def _conv(prefix: str, conv: nn.Conv2D) -> list[Converter]:
    return [Tensor(f"{prefix}/W", conv.kernel, conv.kernel.shape), *_actnorm(prefix, conv.actnorm)]


def _zeros(prefix: str, layer: nn.Conv2DZeros | nn.LinearZeros, relabel: bool = False) -> list[Converter]:
    """``conv2d_zeros`` (b ``[1,1,1,n]``) or ``linear_zeros`` (b ``[1,n]``); logs ``[1,n]`` in both."""
    n = int(layer.bias.shape[0])
    bias_shape = [1, 1, 1, n] if isinstance(layer, nn.Conv2DZeros) else [1, n]
    return [
        Tensor(f"{prefix}/W", layer.kernel, layer.kernel.shape, relabel),
        Tensor(f"{prefix}/b", layer.bias, bias_shape, relabel),
        Tensor(f"{prefix}/logs", layer.logs, [1, n], relabel),
    ]


def _permutation(prefix: str, layer) -> list[Converter]:
    if isinstance(layer, InvertibleConv1x1):
        return [Tensor(f"{prefix}/invconv/W", layer.w, layer.w.shape)]
    if isinstance(layer, LUInvertibleConv1x1):
        return [LUWeight(f"{prefix}/invconv/W", layer)]
    if isinstance(layer, ChannelPermutation) and layer.kind == "shuffle":
        return [Shuffle(f"{prefix}/shuffle", layer.permutation)]
    if isinstance(layer, ChannelPermutation) and layer.kind == "reverse":
        reverse = np.arange(int(layer.permutation.shape[0]), dtype=np.int32)[::-1]
        return [Fixed(layer.permutation, reverse, f"{layer.name} is not the reversal of the channels")]
    raise ValueError(f"No original counterpart for the permutation layer {layer.name!r} ({type(layer).__name__}).")


def _step(prefix: str, actnorm, permutation, coupling) -> list[Converter]:
    """One flow step in the original's creation order: actnorm, permutation, then the coupling network f1."""
    net = coupling.network
    return [
        *_actnorm(prefix, actnorm.module),
        *_permutation(prefix, permutation),
        *_conv(f"{prefix}/f1/l_1", net.conv1),
        *_conv(f"{prefix}/f1/l_2", net.conv2),
        *_zeros(f"{prefix}/f1/l_last", net.conv_out, relabel=isinstance(coupling, AffineCoupling)),
    ]


def layout(model: Glow) -> list[Converter]:
    """Every converter of ``model``, in the original's variable creation order (see the module table)."""
    converters = []
    for i, level in enumerate(model.levels):
        for k, (actnorm, permutation, coupling) in enumerate(level.steps):
            converters += _step(f"model/{i}/{k}", actnorm, permutation, coupling)
        if level.split_prior is not None:
            converters += _zeros(f"model/pool{i}/conv", level.split_prior.network, relabel=True)
    if model.top_prior.network is not None:
        converters += _zeros("model/prior/p", model.top_prior.network)
    if model.top_prior.embedding is not None:
        converters += _zeros("model/prior/y_emb", model.top_prior.embedding)
    if model.classifier is not None:
        converters += _zeros("model/classifier", model.classifier)
    _check_covers(converters, model)
    return converters


def _check_covers(converters: list[Converter], model: Glow) -> None:
    """Every variable of ``model`` is set by the converters, or a ``ValueError`` naming the leftovers."""
    stacked = _stacked_rows(model)
    mapped = {cell for c in converters for v in c.variables for cell in _cells(v)}
    left = {cell for v in model.variables for cell in _cells(v, stacked) if cell not in mapped}
    if not left:
        return
    paths = {}  # a readable attribute path per leftover (levels.0.layers.1..., not the TFP chain's copy)
    leaves = model._flatten(predicate=lambda v: isinstance(v, (tf.Variable, stacking.StepSlice)), with_path=True)
    for path, variable in leaves:
        if isinstance(variable, tf.Variable) and variable.ref() in stacked:
            continue  # named by the layer paths of its rows' views
        (cell,) = _cells(variable)
        rank = (path[0] in ("bijector", "distribution"), len(path))
        if cell in left and (cell not in paths or rank < paths[cell][0]):
            paths[cell] = (rank, f"{'.'.join(str(p) for p in path)} {variable.shape.as_list()}")
    raise ValueError(f"glow_tf variables with no original counterpart: {listing(p for _, p in paths.values())}.")


def _stacked_rows(model: Glow) -> dict:
    """``{variable.ref(): K}`` for the stacked step variables of a ``Glow(stack_variables=True)``."""
    return {v.ref(): int(v.shape[0]) for level in model.levels for v in level.stacked_step_variables}


def _cells(variable, stacked_rows: dict | None = None) -> list[tuple]:
    """What a converter's variable covers: ``(variable, None)``, or ``(stacked variable, row)`` per row it holds."""
    if isinstance(variable, stacking.StepSlice):
        return [(variable.stacked.ref(), variable.row)]
    rows = (stacked_rows or {}).get(variable.ref())
    return [(variable.ref(), None)] if rows is None else [(variable.ref(), k) for k in range(rows)]


# ----------------------------------------------------------------------------- reading
def read_checkpoint(prefix: str) -> tf.train.CheckpointReader:
    """``tf.train.load_checkpoint(prefix)``, with an unreadable checkpoint as a one-line ``ValueError``."""
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"Cannot read the TF1 checkpoint {prefix!r}: {first}") from None


def _plan(converters: list[Converter], reader: tf.train.CheckpointReader, ema: bool, prefix: str) -> dict[str, str]:
    """``{original name: checkpoint key}`` to read, after checking names, shapes and dtypes against the checkpoint.

    Raises:
      ValueError: naming missing tensors, shape or dtype mismatches, or checkpoint
        tensors that the model does not use (besides Adamax state and the unused copy
        of each trainable tensor, raw or EMA).
    """
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    plan, missing, wrong = {}, [], []
    for converter in converters:
        for name, (shape, dtype) in converter.original_specs().items():
            key = name + EMA_SUFFIX if ema and name in converter.trainable else name
            plan[name] = key
            if key not in shapes:
                missing.append(key)
            elif tuple(shapes[key]) != tuple(shape):
                wrong.append(f"{key} has shape {list(shapes[key])} in the checkpoint, the hps need {list(shape)}")
            elif dtypes[key] != dtype:
                wrong.append(f"{key} has dtype {dtypes[key].name} in the checkpoint, the model needs {dtype.name}")
    if missing:
        what = "EMA copies" if ema else "tensors"
        raise ValueError(f"Checkpoint {prefix!r} lacks {len(missing)} {what} that the hps need: {listing(missing)}.")
    if wrong:
        raise ValueError(f"Checkpoint {prefix!r} does not match the hps: {listing(wrong, 3)}.")
    trainable = {n for c in converters for n in c.trainable}
    known = set(plan.values()) | trainable | {n + EMA_SUFFIX for n in trainable}
    unused = sorted(k for k in shapes if k not in known and not is_optimizer_state(k))
    if unused:
        raise ValueError(
            f"Checkpoint {prefix!r} holds {len(unused)} tensor(s) that a model with these hps does not have: "
            f"{listing(unused)}; train.txt/test.txt and the checkpoint must come from the same run."
        )
    return plan


def load_into(model: Glow, prefix: str, ema: bool = False) -> int:
    """Sets every variable of ``model`` from the original's checkpoint at ``prefix``.

    Args:
      model: a glow_tf model with the run's structure (``lu_decomposed=False``).
      prefix: the checkpoint prefix (``.../model_best_loss.ckpt``).
      ema: take each trainable tensor's ``ExponentialMovingAverage`` copy.

    Returns:
      The number of Adamax state tensors in the checkpoint (not carried over).

    Raises:
      ValueError: an unreadable checkpoint, missing, extra or mis-shaped tensors,
        an invalid shuffle permutation, or a glow_tf variable the layout does not set.
    """
    reader = read_checkpoint(prefix)
    converters = layout(model)
    plan = _plan(converters, reader, ema, prefix)
    tensors = {name: reader.get_tensor(key) for name, key in plan.items()}
    assignments = [pair for c in converters for pair in c.read(tensors)]
    for variable, value in assignments:
        variable.assign(np.asarray(value).astype(variable.dtype.as_numpy_dtype))
    return sum(1 for k in reader.get_variable_to_shape_map() if is_optimizer_state(k))


# ----------------------------------------------------------------------------- writing
def adamax_state(trainable: list[tuple[str, tuple[int, ...]]], beta1: float) -> dict[str, np.ndarray]:
    """A fresh Adamax state under the original's unnamed names, as its ``optim.adamax`` creates it.

    ``Variable`` is the step counter t = 1; then for each trainable tensor in creation
    order its second moment and (when ``beta1 > 0``) its first moment, all zero, named
    ``Variable_1``, ``Variable_2``, ... in that order.
    """
    state = {"Variable": np.float32(1.0)}
    for _, shape in trainable:
        for _ in range(2 if beta1 > 0 else 1):
            state[f"Variable_{len(state)}"] = np.zeros(shape, np.float32)
    return state


def original_tensors(model: Glow, averaged: Glow | None = None, beta1: float = 0.9) -> dict[str, np.ndarray]:
    """Every tensor of an original-format checkpoint of ``model``: weights, EMA copies, a fresh Adamax state.

    Args:
      model: the weights to write.
      averaged: a model of the same structure holding the moving averages, written as
        ``<name>/ExponentialMovingAverage``; None writes copies of ``model``'s weights.
      beta1: the Adamax beta1 of the hps (0: no first-moment tensors).

    Raises:
      ValueError: when a variable cannot be expressed in the original's layout.
    """
    converters = layout(model)
    tensors = {k: v for c in converters for k, v in c.write().items()}
    averages = tensors if averaged is None else {k: v for c in layout(averaged) for k, v in c.write().items()}
    trainable = [n for c in converters for n in c.trainable]
    tensors.update({n + EMA_SUFFIX: averages[n] for n in trainable})
    tensors.update(adamax_state([(n, tensors[n].shape) for n in trainable], beta1))
    return tensors


def write_checkpoint(prefix: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes a TF1-style (V2 format) checkpoint whose keys are exactly ``tensors``' names.

    ``tf.train.load_checkpoint`` and a ``tf.compat.v1.train.Saver`` over variables of
    these names read it (no object graph is stored).
    """
    names = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(np.asarray(tensors[n])) for n in names],
    )
