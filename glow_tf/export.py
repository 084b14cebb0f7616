"""SavedModel export of a trained Glow: sampling, encoding, decoding and likelihood signatures.

The export is self-contained: its signatures use core TensorFlow ops only, so
``tf.saved_model.load`` (or ``saved_model_cli``, TF Serving) runs them without
glow_tf or TensorFlow Probability installed. Every batch dimension is unknown.
``latent_i`` is the standardised eps of level ``i`` (``latent_{L-1}`` is the top);
images are uint8 ``[N, H, W, C]``; with a class-conditional model every signature
takes one more input, ``labels`` (int32 ``[N]``, class ids).

Signatures (``loaded.signatures[name](**inputs)`` returns a dict of the outputs)::

    sample(num_samples int32 [], temperature float32 [])     -> images uint8
    encode(images uint8)              # + dequantisation noise, as the original's encoder
                                      -> latent_0 .. latent_{L-1} float32
    encode_deterministic(images uint8)   # bin midpoints, no noise: for reconstruction and editing
                                      -> latent_0 .. latent_{L-1} float32
    decode(latent_0 .. latent_{L-1} float32)                 -> images uint8
    log_prob(images uint8)            # dequantised            -> log_prob float32 [N] (nats)
    bits_per_dim(images uint8)        # dequantised            -> bits_per_dim float32 [N]
    per_level_bits_per_dim(images uint8)                     # dequantised
                                      -> bits_per_dim [N], flow_bits_per_dim [N, L], prior_bits_per_dim [N, L]
    per_level_bits_per_dim_seeded(images uint8, seed int64 [2], index int64 [N])
                                      # image n's noise is seeded by fold_in(seed, index[n]) alone
                                      -> the same three outputs

The per-level outputs decompose bits/dim exactly (up to float rounding), in
the convention of :func:`glow_tf.metrics.term_bits_per_dim`, with ``D = H*W*C``::

    bits_per_dim = n_bits + sum_i flow_bits_per_dim[:, i] + sum_i prior_bits_per_dim[:, i]
    flow_bits_per_dim[:, i]  = -(log-det of level i's flow steps) / (D ln 2)
    prior_bits_per_dim[:, i] = -(log-density of level i's split prior, or of the top prior
                                 for i = L - 1) / (D ln 2)

The loaded object also has these functions (positional arguments in the order
above, ``labels`` last), seeded variants for reproducible numbers
(``sample_seeded(num_samples, temperature, seed)``, ``log_prob_seeded(images, seed)``,
``bits_per_dim_seeded(images, seed)``, ``seed`` int64 ``[2]``), ``encode_float(x)`` and
``log_prob_terms_float(x)`` (``log_prob`` [N], ``flow_log_det`` [N, L], ``prior_log_prob``
[N, L] in nats, as ``Glow.log_prob_terms``) for float images already in the model space, and the int32 variables
``image_shape``, ``latent_shapes``, ``n_bits`` and ``num_classes``.
The weights are saved as ``model_variables`` (those outside the flow steps: split and top
priors, classifier) and ``stacked_step_weights``: per level, one ``[K, ...]`` variable per
weight of a flow step (entry ``k`` is step ``k``'s): 12 per level (16 with the LU-decomposed
1x1 convolution) whatever K, instead of K times as many, which makes the export several times faster.
A negative temperature fails inside the graph with "temperature must be >= 0".

Command line::

    python -m glow_tf.export --workdir=DIR [--checkpoint=latest|best] [--export_dir=DIR/export/latest]
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402

import tensorflow as tf  # noqa: E402

from glow_tf import config_lib, data, metrics, quantization  # noqa: E402
from glow_tf.model import Glow  # noqa: E402

__all__ = [
    "BASE_SIGNATURES",
    "PER_LEVEL_SIGNATURES",
    "SIGNATURES",
    "METADATA_FILE",
    "build_export_module",
    "export_model",
    "export_from_workdir",
    "is_saved_model",
    "latent_names",
    "main",
]

BASE_SIGNATURES = ("sample", "encode", "encode_deterministic", "decode", "log_prob", "bits_per_dim")
PER_LEVEL_SIGNATURES = ("per_level_bits_per_dim", "per_level_bits_per_dim_seeded")  # added after the first exports
SIGNATURES = BASE_SIGNATURES + PER_LEVEL_SIGNATURES
METADATA_FILE = "glow_export.json"  # under export_dir/assets.extra: provenance (checkpoint, step, EMA, config)


def latent_names(num_levels: int) -> list[str]:
    """Input/output names of the per-level latents: ``latent_0 .. latent_{num_levels - 1}`` (last = top)."""
    return [f"latent_{i}" for i in range(num_levels)]


def is_saved_model(path: str) -> bool:
    """True when ``path`` is a SavedModel folder (holds ``saved_model.pb``)."""
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


@contextlib.contextmanager
def _plain_graph(model: Glow, stacked: Sequence[Sequence[tf.Variable]] | None = None) -> Iterator[None]:
    """Traces with standard backprop (there is no backward pass to save memory for) and without batch shards.

    Shards only pay off with one thread per op, a setting of the process that
    loads the SavedModel, not of ours. With ``stacked`` (one list per level, see
    :func:`_stack_step_weights`) the flow steps read their weights from those variables.
    """
    previous = model.backprop, model.batch_shards
    model.backprop, model.batch_shards = "standard", 1
    try:
        with contextlib.ExitStack() as stack:
            for level, weights in zip(model.levels, stacked or ()):
                stack.enter_context(level.flow.stacked_weights(weights))
            yield
    finally:
        model.backprop, model.batch_shards = previous


def _stack_step_weights(model: Glow) -> tuple[list[list[tf.Variable]], list[tf.Variable]]:
    """Copies of the flow steps' weights as ``[K, ...]`` variables, and the model's variables outside the steps.

    A SavedModel's functions each capture every variable they use, and TensorFlow
    builds a placeholder, a read and a call input per capture in each of them: with
    one variable per weight of a level's step instead of one per weight of every step
    (12 or 16 per level instead of K times as many), the export traces and writes
    several times faster.
    """
    stacked = [
        [
            tf.Variable(weight, trainable=False, name=f"level{i}_step_weight{j}")
            for j, weight in enumerate(level.flow.stack_weights())
        ]
        for i, level in enumerate(model.levels)
    ]
    in_steps = {id(v) for level in model.levels for step in level.steps for layer in step for v in layer.variables}
    in_steps |= {id(v) for level in model.levels for v in level.stacked_step_variables}  # Glow(stack_variables=True)
    return stacked, [v for v in model.variables if id(v) not in in_steps]


class _ExportModule(tf.Module):
    """The exported object: the model's (or the stacked) weights, metadata variables and the traced functions."""


def _check_labels(labels: tf.Tensor, batch: tf.Tensor, num_classes: int) -> tf.Tensor:
    """In-graph checks: one label per image, each in ``0..num_classes - 1``."""
    tf.debugging.assert_equal(tf.size(labels), batch, message="labels must hold one class id per image")
    tf.debugging.assert_non_negative(labels, message="labels must be class ids >= 0")
    tf.debugging.assert_less(labels, num_classes, message=f"labels must be class ids < num_classes = {num_classes}")
    return labels


def _random_seed() -> tf.Tensor:
    """A fresh shape-[2] int64 seed per call, for the unseeded functions."""
    return tf.random.uniform([2], maxval=2**62, dtype=tf.int64)


def _make_functions(
    model: Glow, n_bits: int, stacked: Sequence[Sequence[tf.Variable]] | None = None
) -> dict[str, Callable]:
    """The ``tf.function``s of the export, keyed by name (signatures and seeded variants).

    Four cores carry the model's graph (sample, encode, decode, log-density terms), each
    traced once; every other function calls one of them directly (noise seed, uint8 maps).
    """
    conditional = model.num_classes > 0
    image_spec = tf.TensorSpec([None, *model.image_shape], tf.uint8, name="images")
    float_spec = tf.TensorSpec([None, *model.image_shape], model.dtype, name="x")
    label_specs = [tf.TensorSpec([None], tf.int32, name="labels")] if conditional else []
    seed_spec = tf.TensorSpec([2], tf.int64, name="seed")
    index_spec = tf.TensorSpec([None], tf.int64, name="index")
    scalar_specs = [tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([], tf.float32, name="temperature")]
    names = latent_names(model.num_levels)
    latent_specs = [tf.TensorSpec([None, *s], model.dtype, name=n) for n, s in zip(names, model.latent_shapes)]
    half_bin = 0.5 / quantization.num_bins(n_bits)

    def function(fn: Callable, *specs: tf.TensorSpec) -> Callable:
        specs = [*specs, *label_specs]

        @functools.wraps(fn)
        def checked(*args):
            # A signature call does not check shapes: a wrong one would fail deep inside the graph (or crash
            # a CPU kernel). EnsureShape fails first with "Shape of tensor images [...] is not compatible
            # with expected shape [?,H,W,C]".
            return fn(*(tf.ensure_shape(a, s.shape, name=f"check_{s.name}") for a, s in zip(args, specs)))

        return tf.function(checked, input_signature=specs, autograph=False)  # no tensor-dependent Python flow

    def labels_of(labels: tuple, batch: tf.Tensor) -> tf.Tensor | None:
        return _check_labels(labels[0], batch, model.num_classes) if conditional else None

    def dequantized(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        return quantization.dequantize(quantization.preprocess(images, n_bits, model.dtype), n_bits, seed=seed)

    # ------------------------------------------------------------ the cores
    def sample_seeded(num_samples, temperature, seed, *labels):
        tf.debugging.assert_non_negative(num_samples, message="num_samples must be >= 0")
        tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0")
        with _plain_graph(model, stacked):
            x = model.sample(num_samples, temperature, labels=labels_of(labels, num_samples), seed=seed)
        return {"images": quantization.postprocess(x, n_bits)}

    def encode_float(x, *labels):
        with _plain_graph(model, stacked):
            return dict(zip(names, model.encode(x, labels_of(labels, tf.shape(x)[0]))))

    def decode(*args):
        latents, labels = list(args[: len(names)]), args[len(names) :]
        with _plain_graph(model, stacked):
            x = model.decode(latents, labels_of(labels, tf.shape(latents[0])[0]))
        return {"images": quantization.postprocess(x, n_bits)}

    def log_prob_terms_float(x, *labels):
        with _plain_graph(model, stacked):
            return model.log_prob_terms(x, labels_of(labels, tf.shape(x)[0]))

    cores = {
        "sample_seeded": function(sample_seeded, *scalar_specs, seed_spec),
        "encode_float": function(encode_float, float_spec),
        "decode": function(decode, *latent_specs),
        "log_prob_terms_float": function(log_prob_terms_float, float_spec),
    }

    # ---------------------------------------------------------- the wrappers
    def sample(num_samples, temperature, *labels):
        return cores["sample_seeded"](num_samples, temperature, _random_seed(), *labels)

    def encode(images, *labels):
        return cores["encode_float"](dequantized(images, _random_seed()), *labels)

    def encode_deterministic(images, *labels):
        return cores["encode_float"](quantization.preprocess(images, n_bits, model.dtype) + half_bin, *labels)

    # Seeded bodies, each calling a core directly: the unseeded function runs the same body with a fresh
    # seed (a Python call, not a nested tf.function, so the graph has one level of captured variables less).
    def log_prob_seeded(images, seed, *labels):
        return {"log_prob": cores["log_prob_terms_float"](dequantized(images, seed), *labels)["log_prob"]}

    def log_prob(images, *labels):
        return log_prob_seeded(images, _random_seed(), *labels)

    def bits_per_dim_seeded(images, seed, *labels):
        log_p = log_prob_seeded(images, seed, *labels)["log_prob"]
        return {"bits_per_dim": metrics.bits_per_dim(log_p, model.image_shape, n_bits)}

    def bits_per_dim(images, *labels):
        return bits_per_dim_seeded(images, _random_seed(), *labels)

    def per_level_bits_per_dim_seeded(images, seed, index, *labels):
        tf.debugging.assert_equal(tf.size(index), tf.shape(images)[0], message="index must hold one key per image")
        x = data.keyed_model_inputs(images, n_bits, seed, index, model.dtype)
        terms = cores["log_prob_terms_float"](x, *labels)
        return {
            "bits_per_dim": metrics.bits_per_dim(terms["log_prob"], model.image_shape, n_bits),
            "flow_bits_per_dim": metrics.term_bits_per_dim(terms["flow_log_det"], model.image_shape),
            "prior_bits_per_dim": metrics.term_bits_per_dim(terms["prior_log_prob"], model.image_shape),
        }

    def per_level_bits_per_dim(images, *labels):
        index = tf.range(tf.shape(images, out_type=tf.int64)[0])
        return per_level_bits_per_dim_seeded(images, _random_seed(), index, *labels)

    return {
        **cores,
        "sample": function(sample, *scalar_specs),
        "encode": function(encode, image_spec),
        "encode_deterministic": function(encode_deterministic, image_spec),
        "log_prob_seeded": function(log_prob_seeded, image_spec, seed_spec),
        "log_prob": function(log_prob, image_spec),
        "bits_per_dim_seeded": function(bits_per_dim_seeded, image_spec, seed_spec),
        "bits_per_dim": function(bits_per_dim, image_spec),
        "per_level_bits_per_dim_seeded": function(per_level_bits_per_dim_seeded, image_spec, seed_spec, index_spec),
        "per_level_bits_per_dim": function(per_level_bits_per_dim, image_spec),
    }


def _metadata_variable(value, name: str) -> tf.Variable:
    return tf.Variable(tf.constant(value, tf.int32), trainable=False, name=name)


def build_export_module(model: Glow, n_bits: int | None = None, stack_step_weights: bool = False) -> tf.Module:
    """Wraps a trained model in the module that :func:`export_model` saves.

    The module's functions (named as in the module docstring) also run in process,
    eagerly callable with the same positional arguments as after loading.

    Args:
      model: an initialised (trained or restored) ``Glow``; its current weights are exported.
      n_bits: bit depth of the data; ``None`` uses ``model.n_bits``.
      stack_step_weights: hold copies of the flow steps' weights, one ``[K, ...]``
        variable per weight of a level's step (what :func:`export_model` saves:
        far fewer variables, the same results); False (in process) uses the model's
        variables, so the functions follow later changes of the weights.

    Returns:
      A ``tf.Module`` holding the model's variables (with ``stack_step_weights``: the
      stacked copies of the step weights and the variables outside the steps), the
      metadata variables and the functions.

    Raises:
      ValueError: for an uninitialised model or ``n_bits`` different from ``model.n_bits``.
    """
    if not model.initialized:
        raise ValueError("Cannot export an uninitialised model: run model.initialize(batch) or restore a checkpoint.")
    n_bits = model.n_bits if n_bits is None else quantization.validate_n_bits(n_bits)
    if n_bits != model.n_bits:
        raise ValueError(
            f"n_bits={n_bits} differs from the model's n_bits={model.n_bits} (its bits/dim would be wrong)."
        )
    module = _ExportModule(name="glow_export")
    stacked = None
    if stack_step_weights:
        stacked, module.model_variables = _stack_step_weights(model)
        module.stacked_step_weights = stacked
    else:
        module.model_variables = list(model.variables)  # tracked, so the saved functions find their captures
    module.image_shape = _metadata_variable(list(model.image_shape), "image_shape")
    module.latent_shapes = _metadata_variable([list(s) for s in model.latent_shapes], "latent_shapes")
    module.n_bits = _metadata_variable(n_bits, "n_bits")
    module.num_classes = _metadata_variable(model.num_classes, "num_classes")
    for name, function in _make_functions(model, n_bits, stacked).items():
        setattr(module, name, function)
    return module


def _check_target(export_dir: str, overwrite: bool) -> None:
    """Refuses to replace anything but an earlier export (and that only with ``overwrite``)."""
    if not tf.io.gfile.exists(export_dir) or not tf.io.gfile.listdir(export_dir):
        return
    if not is_saved_model(export_dir):
        raise FileExistsError(f"export_dir {export_dir!r} exists and is not a SavedModel; choose another folder.")
    if not overwrite:
        raise FileExistsError(f"export_dir {export_dir!r} already holds a SavedModel (pass overwrite=True to replace).")


def export_model(
    model: Glow,
    export_dir: str,
    n_bits: int | None = None,
    metadata: dict | None = None,
    overwrite: bool = True,
) -> str:
    """Saves ``model`` as a SavedModel with the signatures of :data:`SIGNATURES`.

    The SavedModel is written to a temporary sibling folder and then moved into
    place, so a failed export never leaves a half-written ``export_dir``.
    ``assets.extra/glow_export.json`` records the shapes, signatures and ``metadata``.

    Args:
      model: an initialised ``Glow`` (its current weights are exported: swap EMA
        weights in first, as ``glow_tf.inference.restore_for_inference`` does).
      export_dir: the SavedModel folder to write.
      n_bits: bit depth of the data; ``None`` uses ``model.n_bits``.
      metadata: JSON-serialisable provenance (checkpoint, step, config, ...).
      overwrite: replace an earlier SavedModel at ``export_dir``.

    Returns:
      ``export_dir``.

    Raises:
      ValueError: see :func:`build_export_module`.
      FileExistsError: ``export_dir`` holds something other than a SavedModel, or a
        SavedModel while ``overwrite`` is False.
    """
    module = build_export_module(model, n_bits, stack_step_weights=True)
    _check_target(export_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        signatures = {name: getattr(module, name) for name in SIGNATURES}
        tf.saved_model.save(module, staging, signatures=signatures)
        info = {
            "image_shape": list(model.image_shape),
            "latent_names": latent_names(model.num_levels),
            "latent_shapes": [list(s) for s in model.latent_shapes],
            "n_bits": int(module.n_bits.numpy()),
            "num_classes": model.num_classes,
            "signatures": list(SIGNATURES),
            **(metadata or {}),
        }
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, "assets.extra", METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        os.replace(staging, export_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return export_dir


def export_from_workdir(workdir: str, checkpoint: str = "latest", export_dir: str | None = None) -> str:
    """Exports a training run's ``latest`` or ``best`` checkpoint (EMA weights when the run kept them).

    Args:
      workdir: the run's folder (``config.json`` and checkpoints).
      checkpoint: ``'latest'`` or ``'best'``.
      export_dir: default ``workdir/export/<checkpoint>``.

    Returns:
      The SavedModel folder.

    Raises:
      FileNotFoundError: missing workdir, config.json or checkpoint.
      ValueError: unknown checkpoint kind.
    """
    from glow_tf import inference  # here, not at the top: inference imports this module for InferenceModel

    model, config, info = inference.restore_for_inference(workdir, checkpoint, with_info=True)
    export_dir = export_dir or os.path.join(workdir, "export", checkpoint)
    metadata = {
        "workdir": os.path.abspath(workdir),
        "checkpoint": checkpoint,
        "checkpoint_path": info["path"],
        "step": info["step"],
        "ema_weights": bool(config.optim.ema_decay > 0),
        "config": json.loads(config_lib.config_to_json(config)),
    }
    return export_model(model, export_dir, n_bits=config.data.n_bits, metadata=metadata)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m glow_tf.export",
        description="Export a training run as a SavedModel with sample/encode/decode/log_prob/bits_per_dim "
        "(and per-level bits/dim) signatures.",
    )
    parser.add_argument("--workdir", required=True, help="the training run's folder")
    parser.add_argument("--checkpoint", default="latest", choices=("latest", "best"), help="which checkpoint")
    parser.add_argument("--export_dir", default=None, help="SavedModel folder (default WORKDIR/export/CHECKPOINT)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 for a user error, reported on stderr)."""
    args = _parser().parse_args(argv)
    try:
        path = export_from_workdir(args.workdir, args.checkpoint, args.export_dir)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"glow_tf.export: error: {error}", file=sys.stderr)
        return 1
    print(f"Exported {args.checkpoint!r} checkpoint of {args.workdir} to {path}")
    print(f"Signatures: {', '.join(SIGNATURES)}. Inspect with: saved_model_cli show --dir {path} --all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
