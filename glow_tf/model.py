"""``Glow``: the multi-scale flow of Kingma & Dhariwal (2018) as a TFP bijector and distribution."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from glow_tf import _validate, metrics, nn, parallelism, stacking
from glow_tf._scopes import name_scope
from glow_tf.bijectors import (
    COMPUTE_DTYPES,
    COUPLING_KINDS,
    PERMUTATIONS,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ChannelPermutation,
    FactorOut,
    InvertibleConv1x1,
    LUInvertibleConv1x1,
    SplitPrior,
    Squeeze,
    TopPrior,
)
from glow_tf.bijectors.base import per_example
from glow_tf.bijectors.squeeze import squeeze2d, squeezed_shape, unsqueeze2d
from glow_tf.flow import BACKPROP_MODES, FlowSteps
from glow_tf.quantization import validate_n_bits

tfb = tfp.bijectors
tfd = tfp.distributions

__all__ = ["Glow", "COMPUTE_DTYPES", "PERMUTATIONS", "standard_normal_log_prob"]


def standard_normal_log_prob(eps: tf.Tensor) -> tf.Tensor:
    """``sum log N(eps; 0, 1)`` over every axis but the first."""
    axes = list(range(1, eps.shape.rank))
    return tf.reduce_sum(-0.5 * (tf.square(eps) + math.log(2.0 * math.pi)), axis=axes)


# The model's methods have no Python control flow on tensor values: a user's tf.function
# traces them as they are, without autograph rewriting every layer's code (seconds per trace).
_not_autographed = tf.autograph.experimental.do_not_convert


class _Level(tf.Module):
    """One scale: ``layers`` in encode order (squeeze, then K flow steps), its split prior, stacked step variables."""

    def __init__(
        self,
        layers: list[tfb.Bijector],
        split_prior: SplitPrior | None,
        kept_channels: int,
        name: str,
        stacked: stacking.StackedSteps | None = None,
    ):
        super().__init__(name=name)
        self.layers = layers
        self.split_prior = split_prior
        self.kept_channels = kept_channels
        # With Glow(stack_variables=True) the steps' variables live here and the layers hold views of their rows.
        self.stacked_step_variables = list(stacked.variables) if stacked is not None else []
        # A plain object: the variables stay tracked here and in `layers`.
        self.flow = FlowSteps(self.steps, name, stacked)

    @property
    def squeeze(self) -> Squeeze:
        return self.layers[0]

    @property
    def steps(self) -> list[list[tfb.Bijector]]:
        """The flow steps ``[actnorm, permutation, coupling]`` after the squeeze."""
        return [self.layers[k : k + 3] for k in range(1, len(self.layers), 3)]


class _Encoded(NamedTuple):
    """What one encode pass computes (every tensor has the batch first; one entry per batch slice in the walk).

    ``latents``: the standardised eps of every level (top last); ``log_det``: the
    total ``[B]`` inverse log-det, priors included; ``z_top``: the top latent before
    its prior; ``level_terms``: ``[B, L, 2]`` log-density contributions per level,
    ``[..., 0]`` the flow steps' log-det and ``[..., 1]`` the log-density of the
    level's prior (its split prior, or the top prior for the last level), so that
    ``log_prob = sum(level_terms)``.
    """

    latents: list
    log_det: tf.Tensor
    z_top: tf.Tensor
    level_terms: tf.Tensor


def _compute_dtype(value, dtype: tf.DType) -> tf.DType:
    """The coupling networks' dtype: ``dtype`` when None, else one of :data:`COMPUTE_DTYPES`."""
    if value is None:
        return tf.as_dtype(dtype)
    name = value.name if isinstance(value, tf.DType) else str(value)
    return tf.as_dtype(_validate.choice(name, COMPUTE_DTYPES, "compute_dtype"))


class Glow(tf.Module):
    """Glow as a ``tfp.bijectors.Bijector`` (latent -> image) and a ``TransformedDistribution``.

    Structure (encode direction, image -> latent), as in the original: one squeeze,
    then for each of ``num_levels`` levels ``num_steps`` flow steps
    (actnorm -> permutation -> coupling); after every level but the last a split
    prior factors out half of the channels (then the next level squeezes the rest).
    The top prior standardises what remains. Every prior is a bijector to
    standard-normal eps, so the whole model is ``x = bijector.forward(eps)`` with
    ``eps ~ N(0, I)`` of size ``D = H * W * C``::

        log p(x) = log N(bijector.inverse(x); 0, I) + bijector.inverse_log_det_jacobian(x)

    Images enter in the model space of :mod:`glow_tf.quantization` (``preprocess``
    then ``dequantize``); ``log_prob`` is the continuous density there, in nats, and
    ``bits_per_dim`` adds the bin-width term of the original objective.

    Args:
      image_shape: ``[H, W, C]``; ``H`` and ``W`` divisible by ``2**num_levels``.
      num_levels: L, the number of scales.
      num_steps: K, flow steps per level.
      hidden_width: channels of the coupling networks (512 in the paper).
      coupling: ``'affine'`` or ``'additive'``.
      permutation: ``'invconv'`` (learned 1x1 convolution), ``'shuffle'`` or ``'reverse'``.
      lu_decomposed: use the LU parametrisation of the 1x1 convolution.
      learn_top: learn the top prior's per-position mean and log-std.
      num_classes: > 0 makes the top prior class-conditional (labels as int ids).
      weight_y: > 0 (with classes) adds the original's classifier head on the top latent.
      n_bits: bits per pixel of the data (for bits/dim).
      seed: seed of every random initial value (rotations, shuffles, conv kernels).
      gradient_checkpointing: ``backprop='checkpointing'`` (kept for compatibility).
      batch_shards: split every batch into this many independent slices inside the
        graph (same results, per example). With one thread per op
        (:func:`glow_tf.parallelism.configure_cpu_threads`) each CPU core then runs
        one slice; settable later through the attribute of the same name.
      backprop: how gradients through the flow steps are computed (see
        :mod:`glow_tf.flow`): ``'standard'`` (default) keeps every step's
        activations; ``'checkpointing'`` keeps each step's input and recomputes the
        step (~1/3 more compute); ``'reversible'`` keeps only each level's output
        and rebuilds each step's input from its output with the step's inverse
        (memory independent of ``num_steps``, about the compute of checkpointing).
        Settable later through the attribute of the same name.
      dtype: float dtype of variables and computation.
      compute_dtype: dtype the coupling networks compute in (default ``dtype``);
        ``'bfloat16'`` is a mixed-precision mode: the networks' convolutions run in
        bfloat16 while the flow maths, log-determinants and priors stay in ``dtype``.
      stack_variables: keep each level's flow-step variables as one ``[K, ...]``
        variable per variable of a step (``level0/steps/coupling/conv1/kernel``,
        row ``k`` is step ``k``'s; :mod:`glow_tf.stacking`) instead of one per step.
        The same model and numbers; a training step then has ~1/26 of the
        variables at paper depth, so it traces and starts several seconds sooner.
        The layers still read and assign their own rows. Checkpoints of the two
        layouts differ (``config.model.stack_variables`` records it).
      name: module name.

    Attributes besides the arguments: ``step_functions`` (default True) runs each
    level's flow steps as one traced function called with every step's weights
    (:mod:`glow_tf.flow`); set it to False before tracing a function compiled with
    XLA, which would otherwise recompile the nested functions' gradients on every
    call (the Trainer does this under ``train.jit_compile``).

    Names (:mod:`glow_tf._scopes`): level ``i``'s layers are built in the name scope
    ``level{i}`` and its step ``k`` in ``level{i}/step{k}``, each layer named by its role
    (``actnorm``, ``invconv`` / ``shuffle`` / ``reverse``, ``coupling``, ``squeeze``,
    ``split_prior``; then ``top_prior`` and ``classifier``), so variables read
    ``level0/step3/coupling/conv1/kernel``, and the passes build their ops in the same scopes.

    Raises:
      ValueError: naming any argument outside its valid range.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_levels: int = 3,
        num_steps: int = 32,
        hidden_width: int = 512,
        coupling: str = "affine",
        permutation: str = "invconv",
        lu_decomposed: bool = False,
        learn_top: bool = False,
        num_classes: int = 0,
        weight_y: float = 0.0,
        n_bits: int = 8,
        seed: int | None = 0,
        gradient_checkpointing: bool = False,
        batch_shards: int = 1,
        backprop: str | None = None,
        dtype: tf.DType = tf.float32,
        compute_dtype: tf.DType | str | None = None,
        stack_variables: bool = False,
        name: str = "glow",
    ):
        super().__init__(name=name)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be [height, width, channels], got {list(image_shape)!r}.")
        self.image_shape = tuple(_validate.positive_int(d, "every entry of image_shape") for d in image_shape)
        self.num_levels = _validate.positive_int(num_levels, "num_levels")
        self.num_steps = _validate.positive_int(num_steps, "num_steps")
        self.hidden_width = _validate.positive_int(hidden_width, "hidden_width")
        self.n_bits = validate_n_bits(n_bits)
        _validate.choice(coupling, COUPLING_KINDS, "coupling")
        _validate.choice(permutation, PERMUTATIONS, "permutation")
        num_classes = _validate.integer(num_classes, "num_classes", minimum=0)
        weight_y = _validate.number(weight_y, "weight_y", 0.0)
        height, width, _ = self.image_shape
        scale = 2**self.num_levels
        if height % scale or width % scale:
            raise ValueError(
                f"image_shape {list(self.image_shape)}: height and width must be divisible by 2**num_levels = {scale} "
                f"(num_levels={self.num_levels}); use fewer levels or another image size."
            )
        self.coupling = coupling
        self.permutation = permutation
        self.lu_decomposed = bool(lu_decomposed)
        self.learn_top = bool(learn_top)
        self.num_classes = num_classes
        self.weight_y = float(weight_y)
        self.dtype = dtype
        self.compute_dtype = _compute_dtype(compute_dtype, dtype)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.stack_variables = bool(stack_variables)
        if backprop is not None:
            if gradient_checkpointing and backprop != "checkpointing":
                raise ValueError(f"gradient_checkpointing=True contradicts backprop={backprop!r}; pass one of them.")
            self.backprop = backprop
        self.batch_shards = batch_shards
        # One traced function per level for all its flow steps (glow_tf.flow); False traces every step into
        # the caller's graph, which XLA needs (it recompiles a nested function's gradient on every call).
        self.step_functions = True

        # Layers are built in the name scopes level{i} and level{i}/step{k} (glow_tf._scopes), so that their
        # variables read level0/step3/coupling/conv1/kernel.
        rng = np.random.default_rng(seed)
        levels, latent_shapes = [], []
        shape = list(self.image_shape)
        for i in range(self.num_levels):
            shape = squeezed_shape(shape)
            with stacking.collect_steps() if self.stack_variables else contextlib.nullcontext() as collector:
                with tf.name_scope(f"level{i}"):
                    layers = [Squeeze(name="squeeze")]
                    for k in range(self.num_steps):
                        with tf.name_scope(f"step{k}"), collector.step() if collector else contextlib.nullcontext():
                            layers += self._flow_step(shape[-1], rng)
                    split = SplitPrior(shape[-1], dtype=dtype, name="split_prior") if i < self.num_levels - 1 else None
                stacked = collector.stack() if collector else None
            kept = split.split_channels if split is not None else shape[-1]
            levels.append(_Level(layers, split, kept, name=f"level{i}", stacked=stacked))
            if split is not None:
                latent_shapes.append((shape[0], shape[1], shape[2] - kept))
                shape = [shape[0], shape[1], kept]
        self.levels = levels
        self.top_shape = tuple(shape)
        self.latent_shapes = (*latent_shapes, self.top_shape)  # shapes of encode()'s latents
        self.top_prior = TopPrior(shape, learn_top=learn_top, num_classes=num_classes, dtype=dtype, name="top_prior")
        self.classifier = (
            nn.LinearZeros(shape[-1], num_classes, dtype=dtype, name="classifier")
            if num_classes and weight_y > 0
            else None
        )
        self.bijector = self._build_chain()
        self.latent_size = metrics.num_dims(self.image_shape)
        base = tfd.Sample(tfd.Normal(tf.zeros([], dtype), tf.ones([], dtype)), [self.latent_size])
        self.distribution = tfd.TransformedDistribution(base, self.bijector, name="glow_distribution")

    # ------------------------------------------------------------------ build
    def _flow_step(self, channels: int, rng: np.random.Generator) -> list[tfb.Bijector]:
        """``[actnorm, permutation, coupling]``, named by their role (the step's scope tells the steps apart)."""
        dtype = self.dtype
        layers = [ActNorm(channels, dtype=dtype, name="actnorm")]
        if self.permutation == "invconv":
            conv = LUInvertibleConv1x1 if self.lu_decomposed else InvertibleConv1x1
            layers.append(conv(channels, seed=rng, dtype=dtype, name="invconv"))
        else:
            layers.append(ChannelPermutation(channels, self.permutation, seed=rng, dtype=dtype, name=self.permutation))
        coupling = AffineCoupling if self.coupling == "affine" else AdditiveCoupling
        layers.append(
            coupling(
                channels, self.hidden_width, seed=rng, dtype=dtype, compute_dtype=self.compute_dtype, name="coupling"
            )
        )
        return layers

    def _build_chain(self) -> tfb.Bijector:
        """``Chain`` of every level in encode order; each split hands the kept half to a ``FactorOut`` of the rest."""
        top_size = metrics.num_dims(self.top_shape)
        flatten = tfb.Reshape(event_shape_out=self.top_shape, event_shape_in=[top_size], name="flatten_top")
        last = self.levels[-1]
        inner = tfb.Chain([*last.layers, self.top_prior, flatten], name=f"level{self.num_levels - 1}")
        for i in reversed(range(self.num_levels - 1)):
            level = self.levels[i]
            pre_split = (*self.latent_shapes[i][:2], self.latent_shapes[i][2] + level.kept_channels)
            factor_out = FactorOut(inner, pre_split, level.kept_channels, name=f"level{i}_factor_out")
            inner = tfb.Chain([*level.layers, level.split_prior, factor_out], name="glow" if i == 0 else f"level{i}")
        return inner

    def bijector_kwargs(self, labels: tf.Tensor | None = None) -> dict:
        """Conditioning keyword arguments for ``bijector`` / ``distribution`` methods.

        ``model.distribution.log_prob(x, bijector_kwargs=model.bijector_kwargs(y))``.
        """
        if labels is None:
            return {}
        kwargs = {self.top_prior.name: {"labels": labels}}
        for i in reversed(range(self.num_levels - 1)):
            kwargs = {f"level{i}_factor_out": kwargs}
        return kwargs

    # ------------------------------------------------------------- properties
    @property
    def batch_shards(self) -> int:
        """Independent batch slices per call (1: none); see ``batch_shards`` in the class docstring."""
        return self._batch_shards

    @batch_shards.setter
    def batch_shards(self, value: int) -> None:
        self._batch_shards = _validate.positive_int(value, "batch_shards")

    @property
    def actnorms(self) -> list[nn.ActNormModule]:
        """Every actnorm, in the flow and inside the coupling networks."""
        return [m for m in self.submodules if isinstance(m, nn.ActNormModule)]

    def step_variables(self) -> list[list[tf.Variable]]:
        """Each flow step's trainable variables, in the same layer order for every step.

        All K steps of a level hold variables of the same shapes, so a per-step
        computation traced once serves them all (``optim.apply_adamax``'s ``groups``).
        Empty lists with ``stack_variables``: the layers then hold views, and each
        stacked variable is updated as one already.
        """
        steps = [step for level in self.levels for step in level.steps]
        return [[v for layer in step for v in layer.trainable_variables] for step in steps]

    @property
    def initialized(self) -> bool:
        """True once every actnorm has had its data-dependent init (read eagerly)."""
        return all(bool(m.initialized.numpy()) for m in self.actnorms)

    # ---------------------------------------------------------------- checks
    def _check_images(self, images: tf.Tensor, what: str) -> tf.Tensor:
        images = tf.convert_to_tensor(images)
        if not images.dtype.is_floating:
            raise ValueError(
                f"{what} expects float images in the model space (glow_tf.preprocess then dequantize), "
                f"got dtype {images.dtype.name}."
            )
        expected = [None, *self.image_shape]
        if images.shape.rank != 4 or not tf.TensorShape(expected).is_compatible_with(images.shape):
            raise ValueError(f"{what} expects images of shape {expected}, got {images.shape}.")
        return tf.cast(images, self.dtype)

    def _check_labels(self, labels, what: str):
        if self.num_classes and labels is None:
            raise ValueError(f"{what}: the model is class-conditional ({self.num_classes} classes); pass labels.")
        if not self.num_classes and labels is not None:
            raise ValueError(f"{what}: the model is not class-conditional (num_classes=0) but labels were passed.")
        return labels

    def _check_latents(self, latents: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        if len(latents) != len(self.latent_shapes):
            raise ValueError(
                f"decode expects {len(self.latent_shapes)} latents of shapes {self.latent_shapes}, got {len(latents)}."
            )
        checked = []
        for i, (eps, shape) in enumerate(zip(latents, self.latent_shapes)):
            eps = tf.convert_to_tensor(eps, self.dtype)
            if not tf.TensorShape([None, *shape]).is_compatible_with(eps.shape):
                raise ValueError(f"decode: latent {i} must have shape {[None, *shape]}, got {eps.shape.as_list()}.")
            checked.append(eps)
        return checked

    # ------------------------------------------------------------- fused walk
    @property
    def backprop(self) -> str:
        """How gradients of the fused passes are computed: one of :data:`glow_tf.flow.BACKPROP_MODES`."""
        return self._backprop

    @backprop.setter
    def backprop(self, value: str) -> None:
        self._backprop = _validate.choice(value, BACKPROP_MODES, "backprop mode")

    @property
    def gradient_checkpointing(self) -> bool:
        """``backprop == 'checkpointing'`` (the earlier name of that mode; setting False means 'standard')."""
        return self._backprop == "checkpointing"

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self._backprop = "checkpointing" if value else "standard"

    def _map_shards(self, walk, *args):
        """``walk`` over ``batch_shards`` slices of the batch (:func:`glow_tf.parallelism.map_shards`).

        The data-dependent init needs statistics over the whole batch, so it is never sharded.
        """
        shards = 1 if nn.in_data_dependent_init() else self.batch_shards
        return parallelism.map_shards(walk, args, shards)

    def _encode_with_log_det(self, x: tf.Tensor, labels=None) -> _Encoded:
        """:meth:`_encode_walk` over ``batch_shards`` slices of the batch."""
        return self._map_shards(self._encode_walk, x, labels)

    def _encode_walk(self, xs: list, labels: list) -> _Encoded:
        """One encode pass over a list of batch slices, evaluating each network once (see :class:`_Encoded`).

        Every layer's batch-independent tensors are computed once and shared by the slices.
        """
        totals = [tf.zeros(tf.shape(x)[:1], x.dtype) for x in xs]
        latents, flow_terms, prior_log_dets = [], [], []
        for level in self.levels:
            with name_scope(level.name):
                with name_scope(level.squeeze.name):
                    xs = [squeeze2d(x, level.squeeze.factor) for x in xs]  # volume preserving
                xs, level_log_dets = level.flow.encode(xs, self.backprop, inline=not self.step_functions)
                totals = [t + ld for t, ld in zip(totals, level_log_dets)]
                flow_terms.append(level_log_dets)
                if level.split_prior is not None:
                    xs, log_dets = self._encode_layer(level.split_prior, xs)
                    totals = [t + ld for t, ld in zip(totals, log_dets)]
                    prior_log_dets.append(log_dets)
                    latents.append([x[..., level.kept_channels :] for x in xs])
                    xs = [x[..., : level.kept_channels] for x in xs]
        eps, log_dets = self._encode_layer(self.top_prior, xs, labels)
        latents.append(eps)
        prior_log_dets.append(log_dets)
        n = len(xs)
        terms = []
        for s in range(n):
            prior = [ld[s] + standard_normal_log_prob(level_eps[s]) for ld, level_eps in zip(prior_log_dets, latents)]
            terms.append(tf.stack([tf.stack([f[s] for f in flow_terms], 1), tf.stack(prior, 1)], 2))
        return _Encoded(latents, [t + ld for t, ld in zip(totals, log_dets)], xs, terms)

    @staticmethod
    def _encode_layer(layer, xs: list, labels: list | None = None) -> tuple[list, list]:
        """A prior bijector on every slice, preparing its weights once: ``(zs, [B] log-dets)``."""
        kwargs = [{} if y is None else {"labels": y} for y in labels or [None] * len(xs)]
        if nn.in_data_dependent_init():
            outs = [layer.inverse_and_log_det(x, **kw) for x, kw in zip(xs, kwargs)]
        else:
            prepared = layer.prepare(layer.weights(), xs[0].shape[-3:])
            outs = [layer.encode_with(prepared, x, **kw) for x, kw in zip(xs, kwargs)]
        return [z for z, _ in outs], [per_example(ld, x) for (_, ld), x in zip(outs, xs)]

    def _decode_walk(self, latents: list, labels: list) -> list:
        """The exact inverse of :meth:`_encode_walk` on lists of batch slices (``latents`` per level, top last)."""
        prepared = self.top_prior.prepare(self.top_prior.weights(), self.top_shape, decode=True)
        zs = [self.top_prior.decode_with(prepared, eps, labels=y) for eps, y in zip(latents[-1], labels)]
        for i in reversed(range(self.num_levels)):
            level = self.levels[i]
            with name_scope(level.name):
                if level.split_prior is not None:
                    zs = [tf.concat([z, eps], axis=-1) for z, eps in zip(zs, latents[i])]
                    split = level.split_prior
                    prepared = split.prepare(split.weights(), zs[0].shape[-3:], decode=True)
                    zs = [split.decode_with(prepared, z) for z in zs]
                zs = level.flow.decode(zs, inline=not self.step_functions)
                with name_scope(level.squeeze.name):
                    zs = [unsqueeze2d(z, level.squeeze.factor) for z in zs]
        return zs

    # ------------------------------------------------------------- public API
    def initialize(self, images: tf.Tensor, labels: tf.Tensor | None = None, force: bool = False) -> bool:
        """Data-dependent init of every actnorm on one batch, in the encode direction.

        Each actnorm (flow and networks) gets per-channel mean 0 and std 1 at its
        output on this batch. A model that is already initialised (for example
        restored from a checkpoint) is left unchanged unless ``force``.

        Args:
          images: ``[B, H, W, C]`` float images in the model space.
          labels: class labels for a class-conditional model.
          force: re-initialise even if already initialised.

        Returns:
          True if the init ran.
        """
        images = self._check_images(images, "initialize")
        labels = self._check_labels(labels, "initialize")
        if self.initialized and not force:
            return False
        with nn.data_dependent_init():
            self._encode_with_log_det(images, labels)
        return True

    @_not_autographed
    def log_prob(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
        """``[B]`` log-density in nats of float images in the model space."""
        images = self._check_images(images, "log_prob")
        latents, log_det, _, _ = self._encode_with_log_det(images, self._check_labels(labels, "log_prob"))
        return log_det + tf.add_n([standard_normal_log_prob(eps) for eps in latents])

    @_not_autographed
    def log_prob_terms(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Where the log-density of each image comes from, level by level (one encode pass).

        Returns:
          ``log_prob`` ``[B]`` (nats, as :meth:`log_prob`), ``flow_log_det`` ``[B, L]``
          (the log-det of level ``i``'s flow steps; its squeeze is volume preserving)
          and ``prior_log_prob`` ``[B, L]`` (the log-density of level ``i``'s split
          prior ``log p(z2 | z1)``, or of the top prior for ``i = L - 1``), with
          ``log_prob = sum(flow_log_det) + sum(prior_log_prob)`` up to float rounding.
        """
        images = self._check_images(images, "log_prob_terms")
        encoded = self._encode_with_log_det(images, self._check_labels(labels, "log_prob_terms"))
        log_prob = encoded.log_det + tf.add_n([standard_normal_log_prob(eps) for eps in encoded.latents])
        terms = encoded.level_terms
        return {"log_prob": log_prob, "flow_log_det": terms[..., 0], "prior_log_prob": terms[..., 1]}

    @_not_autographed
    def bits_per_dim(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> tf.Tensor:
        """``[B]`` bits/dim of the quantised data (the original's objective)."""
        return metrics.bits_per_dim(self.log_prob(images, labels), self.image_shape, self.n_bits)

    @_not_autographed
    def objective(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """Per-example training terms from one fused pass.

        Returns:
          A dict of ``[B]`` tensors: ``log_prob`` (nats), ``bits_per_dim`` and
          ``loss`` (= bits_per_dim + weight_y * class_bits); with the classifier head
          also ``class_bits`` (cross-entropy / ln 2) and ``logits`` ``[B, classes]``.
        """
        images = self._check_images(images, "objective")
        labels = self._check_labels(labels, "objective")
        latents, log_det, z_top, _ = self._encode_with_log_det(images, labels)
        log_prob = log_det + tf.add_n([standard_normal_log_prob(eps) for eps in latents])
        bpd = metrics.bits_per_dim(log_prob, self.image_shape, self.n_bits)
        out = {"log_prob": log_prob, "bits_per_dim": bpd, "loss": bpd}
        if self.classifier is not None:
            logits = self.classifier(tf.reduce_mean(z_top, axis=[1, 2]))
            onehot = self.top_prior.one_hot(labels)
            class_bits = metrics.nats_to_bits(tf.nn.softmax_cross_entropy_with_logits(onehot, logits))
            out.update(logits=logits, class_bits=class_bits, loss=bpd + self.weight_y * class_bits)
        return out

    @_not_autographed
    def encode(self, images: tf.Tensor, labels: tf.Tensor | None = None) -> list[tf.Tensor]:
        """Standardised latents of every level: ``[eps_split_0, ..., eps_top]`` (shapes ``latent_shapes``)."""
        images = self._check_images(images, "encode")
        return self._encode_with_log_det(images, self._check_labels(labels, "encode"))[0]

    @_not_autographed
    def decode(self, latents: Sequence[tf.Tensor], labels: tf.Tensor | None = None) -> tf.Tensor:
        """The exact inverse of :meth:`encode`: float images in the model space."""
        latents = self._check_latents(latents)
        labels = self._check_labels(labels, "decode")
        return self._map_shards(self._decode_walk, latents, labels)

    @_not_autographed
    def sample(
        self,
        num_samples: int | tf.Tensor,
        temperature: float | tf.Tensor = 0.7,
        labels: tf.Tensor | None = None,
        seed: tf.Tensor | None = None,
    ) -> tf.Tensor:
        """Samples float images (model space) at a temperature, as the original.

        ``T`` scales only the noise: at the top and at every split
        ``z = mean + exp(logs) * T * eps``, ``eps ~ N(0, 1)``; ``T = 0`` is the
        deterministic chain of means. Use :func:`glow_tf.postprocess` for uint8.

        Args:
          num_samples: number of images.
          temperature: ``T >= 0``.
          labels: ``[num_samples]`` class ids for a class-conditional model.
          seed: optional shape-[2] seed for stateless (reproducible) noise.

        Raises:
          ValueError: for a negative temperature.
        """
        labels = self._check_labels(labels, "sample")
        if isinstance(temperature, (int, float)):
            if temperature < 0:
                raise ValueError(f"temperature must be >= 0, got {temperature!r}.")
            temperature = tf.constant(temperature, self.dtype)
        else:
            temperature = tf.cast(temperature, self.dtype)
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0")
        latents = []
        for i, shape in enumerate(self.latent_shapes):
            full = tf.concat([tf.reshape(num_samples, [1]), shape], 0)
            if seed is None:
                eps = tf.random.normal(full, dtype=self.dtype)
            else:
                eps = tf.random.stateless_normal(
                    full, tf.random.experimental.stateless_fold_in(seed, i), dtype=self.dtype
                )
            latents.append(temperature * eps)
        return self.decode(latents, labels)

    def flatten_latents(self, latents: Sequence[tf.Tensor]) -> tf.Tensor:
        """``[B, D]``: the per-level latents in ``bijector``'s flat latent layout."""
        return tf.concat([tf.reshape(eps, [tf.shape(eps)[0], -1]) for eps in latents], axis=-1)

    def unflatten_latents(self, flat: tf.Tensor) -> list[tf.Tensor]:
        """Inverse of :meth:`flatten_latents`."""
        sizes = [metrics.num_dims(s) for s in self.latent_shapes]
        parts = tf.split(flat, sizes, axis=-1)
        return [tf.reshape(p, [-1, *s]) for p, s in zip(parts, self.latent_shapes)]
