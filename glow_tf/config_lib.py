"""The training configuration: its schema, defaults, validation and JSON round trip.

Every experiment is an ``ml_collections.ConfigDict`` with the sections below
(``configs/*.py`` start from :func:`default_config` and change a few fields).
:func:`default_config` comments every field but those of ``data.*``, which
``glow_tf.data.default_config`` documents::

    seed                 int: model init, data order, dequantisation noise, samples
    data.*               glow_tf.data.default_config() (dataset, image_size, n_bits, ...)
    model.*              Glow hyper-parameters (L, K, width, coupling, ...)
    optim.*              Adamax, warm-up, gradient clipping, EMA
    train.*              batch, steps, data-dependent init, logging/checkpoint cadence
    eval.*               test bits/dim during training and in eval mode
    sample.*             sample grids (temperatures, number of images)

:func:`validate_config` checks a config against this schema (unknown keys, types,
ranges) so a mistake fails before any model is built or step is run.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from glow_tf import _validate, data
from glow_tf.bijectors import COMPUTE_DTYPES, COUPLING_KINDS, PERMUTATIONS
from glow_tf.flow import BACKPROP_MODES

__all__ = [
    "default_config",
    "validate_config",
    "global_batch_size",
    "backprop_mode",
    "config_to_json",
    "config_from_json",
    "save_config",
    "load_config_json",
    "resume_differences",
    "RUN_IDENTITY_FIELDS",
]

PAPER_TEMPERATURES = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def default_config() -> ml_collections.ConfigDict:
    """The full schema with the original Glow's defaults (CIFAR-10-like, one device).

    Returns:
      An unlocked ``ConfigDict``; every field a config may set exists here.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = data.default_config()

    config.model = ml_collections.ConfigDict()
    config.model.num_levels = 3  # L
    config.model.num_steps = 32  # K
    config.model.hidden_width = 512
    config.model.coupling = "affine"  # or "additive"
    config.model.permutation = "invconv"  # or "shuffle", "reverse"
    config.model.lu_decomposed = False  # the original trains the plain 1x1 conv
    config.model.learn_top = True  # the paper's commands pass --learntop
    config.model.class_conditional = False  # needs a dataset with labels
    config.model.weight_y = 0.0  # > 0 adds the classifier head (class-conditional only)
    # "bfloat16": mixed precision, the coupling networks compute in bfloat16 (fast on CPUs with AVX512-BF16
    # and on GPUs/TPUs); variables, flow maths, log-dets and priors stay float32. "float16": the same in
    # float16 (GPUs without bfloat16: V100, T4) with dynamic loss scaling in the training step.
    config.model.compute_dtype = "float32"
    # Each level's flow-step variables as one [K, ...] variable per variable of a step (glow_tf.stacking): the
    # same model and numbers, a training step that starts seconds sooner at paper depth. The checkpoint layout
    # depends on it; a config.json written before this field existed means False.
    config.model.stack_variables = True

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 1e-3
    config.optim.beta1 = 0.9
    # The original uses beta2 = 1 - 1/steps_per_epoch (epoch = 50k images); 0.999 is Keras' default.
    config.optim.beta2 = 0.999
    config.optim.epsilon = 1e-8
    # Linear warm-up as the original: lr * min(1, images_seen / warmup_images); 10 epochs of 50k images.
    config.optim.warmup_images = 500_000
    config.optim.grad_clip_norm = 0.0  # > 0 clips the global gradient norm (the original does not clip)
    config.optim.ema_decay = 0.0  # > 0 keeps Polyak (EMA) weights used for eval, samples and export

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # GLOBAL batch, split over replicas; 0 = per_replica_batch_size x replicas
    config.train.per_replica_batch_size = 0  # used only when batch_size == 0
    config.train.num_steps = 200_000
    config.train.n_init = 256  # images for the data-dependent actnorm init before step 0
    # Gradients through the flow steps (glow_tf.flow): "standard" keeps every activation; "checkpointing"
    # keeps each step's input and recomputes the step; "reversible" keeps only each level's output and
    # rebuilds every step's input with its inverse (memory independent of K, for more compute; both measured by
    # python benchmarks/scaling.py --grid=backprop).
    config.train.backprop = "standard"
    config.train.gradient_checkpointing = False  # older name: True means backprop = "checkpointing"
    config.train.jit_compile = False  # XLA for the loss-and-gradient computation (slower on CPUs; for GPUs)
    # Independent batch slices per replica step; 0 = auto: one per core on a CPU-only machine, where
    # train.py also runs TF ops single-threaded (glow_tf.parallelism), else 1.
    config.train.batch_shards = 0
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.eval_every = 5000  # 0 = only at the end
    config.train.sample_every = 5000  # 0 = only at the end
    config.train.max_nonfinite_steps = 20  # stop after this many skipped (non-finite) updates in a row

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 256
    config.eval.max_examples = 0  # during training: 0 = the whole test split; eval mode always uses all of it

    config.sample = ml_collections.ConfigDict()
    config.sample.temperatures = PAPER_TEMPERATURES
    config.sample.num_samples = 64
    config.sample.num_reconstructions = 16
    return config


def _check_keys(
    config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = "", allow_missing: bool = False
) -> None:
    unknown = sorted(set(config.keys()) - set(schema.keys()))
    if unknown:
        where = prefix.rstrip(".") or "the config"
        raise ValueError(
            f"Unknown config key(s) {[prefix + k for k in unknown]} in {where}; valid keys are {sorted(schema.keys())}."
        )
    missing = sorted(set(schema.keys()) - set(config.keys()))
    if missing and not allow_missing:
        raise ValueError(f"Config is missing key(s) {[prefix + k for k in missing]}; start from default_config().")
    for key in schema.keys():
        if isinstance(schema[key], ml_collections.ConfigDict) and key in config:
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ValueError(f"Config field {prefix + key} must be a section (ConfigDict), got {config[key]!r}.")
            _check_keys(config[key], schema[key], prefix + key + ".", allow_missing)


def _int(value, name: str, minimum: int) -> int:
    return _validate.integer(value, f"config.{name}", minimum=minimum)


def _float(
    value, name: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> float:
    return _validate.number(value, f"config.{name}", low, high, low_open=low_open, high_open=high_open)


def validate_config(config: ml_collections.ConfigDict, num_replicas: int | None = None) -> None:
    """Checks a training config before anything is built.

    Args:
      config: a config derived from :func:`default_config`.
      num_replicas: replicas in sync; when given the global batch must divide evenly.

    Raises:
      ValueError: naming the first unknown/missing key or out-of-range value and
        what would be valid (unknown dataset, image size not divisible by
        ``2**num_levels``, batch not divisible by the replica count, ...).
    """
    _check_keys(config, default_config())
    _validate.seed(config.seed, "config.seed")
    _validate.choice(config.data.name, data.DATASETS, "dataset config.data.name")
    m = config.model
    _int(m.num_levels, "model.num_levels", 1)
    _int(m.num_steps, "model.num_steps", 1)
    _int(m.hidden_width, "model.hidden_width", 1)
    _validate.choice(m.coupling, COUPLING_KINDS, "config.model.coupling")
    _validate.choice(m.permutation, PERMUTATIONS, "config.model.permutation")
    _float(m.weight_y, "model.weight_y", 0.0)
    _validate.choice(m.compute_dtype, COMPUTE_DTYPES, "config.model.compute_dtype")
    if m.weight_y > 0 and not m.class_conditional:
        raise ValueError("config.model.weight_y > 0 needs config.model.class_conditional=True.")
    try:
        data.check_image_size(config.data.image_size, m.num_levels)
    except ValueError as err:
        raise ValueError(f"config.data.image_size / config.model.num_levels: {err}") from None

    o = config.optim
    _float(o.learning_rate, "optim.learning_rate", 0.0, low_open=True)
    _float(o.beta1, "optim.beta1", 0.0, 1.0, high_open=True)
    _float(o.beta2, "optim.beta2", 0.0, 1.0, high_open=True)
    _float(o.epsilon, "optim.epsilon", 0.0, low_open=True)
    _int(o.warmup_images, "optim.warmup_images", 0)
    _float(o.grad_clip_norm, "optim.grad_clip_norm", 0.0)
    _float(o.ema_decay, "optim.ema_decay (0 disables EMA)", 0.0, 1.0, high_open=True)

    t = config.train
    _int(t.batch_size, "train.batch_size", 0)
    _int(t.per_replica_batch_size, "train.per_replica_batch_size", 0)
    if t.batch_size == 0 and t.per_replica_batch_size == 0:
        raise ValueError("Set config.train.batch_size (global) or config.train.per_replica_batch_size to >= 1.")
    _int(t.num_steps, "train.num_steps", 0)
    _int(t.n_init, "train.n_init", 1)
    _int(t.batch_shards, "train.batch_shards", 0)
    _validate.choice(t.backprop, BACKPROP_MODES, "config.train.backprop")
    if t.gradient_checkpointing and t.backprop not in ("standard", "checkpointing"):
        raise ValueError(
            f"config.train.gradient_checkpointing=True (the older name of backprop='checkpointing') contradicts "
            f"config.train.backprop={t.backprop!r}; set only config.train.backprop."
        )
    for name in ("log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite_steps"):
        _int(t[name], f"train.{name}", 1)
    for name in ("eval_every", "sample_every"):
        _int(t[name], f"train.{name}", 0)
    _int(config.eval.batch_size, "eval.batch_size", 1)
    _int(config.eval.max_examples, "eval.max_examples", 0)
    temps = config.sample.temperatures
    if not isinstance(temps, (list, tuple)) or not temps:
        raise ValueError(f"config.sample.temperatures must be a non-empty list of numbers >= 0, got {temps!r}.")
    for value in temps:
        _float(value, "sample.temperatures[i]", 0.0)
    _int(config.sample.num_samples, "sample.num_samples", 1)
    _int(config.sample.num_reconstructions, "sample.num_reconstructions", 0)
    if num_replicas is not None:
        global_batch_size(config, num_replicas)


def backprop_mode(train: ml_collections.ConfigDict) -> str:
    """The backprop mode a ``config.train`` section asks for (``gradient_checkpointing=True`` means 'checkpointing')."""
    return "checkpointing" if train.gradient_checkpointing else train.backprop


def global_batch_size(config: ml_collections.ConfigDict, num_replicas: int) -> int:
    """The global batch: ``train.batch_size``, or ``per_replica_batch_size * num_replicas`` when it is 0.

    Raises:
      ValueError: when the global batch is not divisible by ``num_replicas``.
    """
    batch = config.train.batch_size or config.train.per_replica_batch_size * num_replicas
    if batch % num_replicas:
        raise ValueError(
            f"config.train.batch_size={batch} is not divisible by the {num_replicas} replicas in sync; "
            f"use a multiple of {num_replicas} (e.g. {max(num_replicas, batch - batch % num_replicas)}) or set "
            "config.train.batch_size=0 and config.train.per_replica_batch_size."
        )
    return batch


# Fields that define what a run is: the model, the data it learns from and the seed of both. Resuming a
# run requires them to match its config.json; every other field may change on resume.
RUN_IDENTITY_FIELDS = ("seed", "model.*", "data.name", "data.image_size", "data.channels", "data.n_bits")
# Further data fields that select the training images, for the datasets they apply to.
_DATA_SELECTION_FIELDS = {
    "data.path": ("folder", "npz"),
    "data.test_fraction": ("folder", "npz"),
    "data.lsun_category": ("lsun",),
    "data.imagenet_builder": ("imagenet32", "imagenet64"),
}


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _is_identity_field(field: str, dataset: str) -> bool:
    if field in _DATA_SELECTION_FIELDS:
        return dataset in _DATA_SELECTION_FIELDS[field]
    return any(field == f or (f.endswith(".*") and field.startswith(f[:-1])) for f in RUN_IDENTITY_FIELDS)


def resume_differences(
    saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
) -> tuple[list[tuple[str, object, object]], list[tuple[str, object, object]]]:
    """How ``new`` differs from the ``saved`` config of a run it would resume.

    A field of :data:`RUN_IDENTITY_FIELDS` (or one that selects the training images
    of the dataset, e.g. ``data.path`` for ``folder``) that differs makes the
    configs incompatible. So does switching EMA on or off (``optim.ema_decay``
    zero vs. non-zero): the checkpoint either lacks the averages or holds ones
    that would be dropped. Any other difference is a legitimate change on resume.

    Returns:
      ``(incompatible, changed)``: lists of ``(field, saved value, new value)``.
    """
    old, now = _flat(saved), _flat(new)
    incompatible, changed = [], []
    for field in sorted(set(old) | set(now)):
        a, b = old.get(field), now.get(field)
        if a == b:
            continue
        if field == "optim.ema_decay":
            breaks_resume = ((a or 0) > 0) != ((b or 0) > 0)
        else:
            breaks_resume = _is_identity_field(field, saved.data.name)
        if breaks_resume:
            incompatible.append((field, a, b))
        else:
            changed.append((field, a, b))
    return incompatible, changed


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as indented, key-sorted JSON."""
    return json.dumps(json.loads(config.to_json()), indent=2, sort_keys=True)


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Inverse of :func:`config_to_json` (lists come back where tuples were); the result is schema-checked.

    Keys added to the schema after the JSON was written take their defaults, so
    runs saved by an older version still load; ``model.stack_variables``, whose
    default changes the checkpoint layout, takes False (the layout they were saved in).

    Raises:
      ValueError: when the JSON does not hold a valid config.
    """
    loaded = ml_collections.ConfigDict(json.loads(text))
    config = default_config()
    _check_keys(loaded, config, allow_missing=True)
    if "model" in loaded and "stack_variables" not in loaded.model:
        config.model.stack_variables = False  # the layout of every run saved before the field existed
    config.update(loaded)
    return config


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes ``workdir/config.json`` (atomically) and returns its path."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config_to_json(config) + "\n")
    os.replace(tmp, path)
    return path


def load_config_json(workdir: str) -> ml_collections.ConfigDict:
    """Reads ``workdir/config.json``.

    Raises:
      FileNotFoundError: when the workdir or its config.json does not exist.
      ValueError: when config.json is not a valid config (the message names the file).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        what = "workdir" if not os.path.isdir(workdir) else "config.json"
        raise FileNotFoundError(f"No {what} at {path!r}: pass the --workdir of a training run.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return config_from_json(text)
    except ValueError as err:  # json.JSONDecodeError included
        raise ValueError(f"{path} is not a valid glow_tf config: {err}") from None
