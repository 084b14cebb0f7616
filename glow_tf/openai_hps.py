"""The original Glow's hyper-parameters (``hps``) <-> a glow_tf training config.

The original's ``train.py`` writes ``json.dumps(hps.__dict__)`` as the first line of
``train.txt`` and ``test.txt`` (its ``ResultLogger``): the 38 command-line flags plus
the fields its ``get_data``, ``get_its`` and ``model`` derive. The ones that shape the
model map one to one::

    hps                      glow_tf config
    image_size               data.image_size       (-1: the problem's default size)
    n_levels, depth, width   model.num_levels, model.num_steps, model.hidden_width
    flow_coupling            model.coupling        0 additive, 1 affine
    flow_permutation         model.permutation     0 reverse, 1 shuffle, 2 invconv (1x1 conv)
    learntop                 model.learn_top
    ycond, n_y               model.class_conditional; the dataset must have n_y classes
    weight_y                 model.weight_y        (0 without ycond: the original ignores it there)
    n_bits_x                 data.n_bits
    seed                     seed
    problem (+ category)     data.name: mnist, cifar10, imagenet-oord -> imagenet32/64
                             (downsampled_imagenet), imagenet -> imagenet32/64
                             (imagenet_resized, labelled), celeba -> celebahq,
                             lsun_realnvp and lsun -> lsun with data.lsun_category
    (always 3 channels)      data.channels = 3     (the original tiles MNIST to RGB)

Training-only fields become the fine-tuning defaults: ``lr``, ``beta1``, beta2 =
``1 - 1/(train_its * polyak_epochs)`` as the original's Adamax, the warm-up
(``n_train * epochs_warmup`` anchor-size images), the per-process batch
``local_batch_train`` (as ``train.per_replica_batch_size``), ``local_batch_init``,
``gradient_checkpointing``, and ``dal`` (MNIST/CIFAR-10 random shifts and flips).
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from glow_tf import config_lib, data

__all__ = [
    "ORIGINAL_DEFAULTS",
    "PROBLEMS",
    "check_classes",
    "config_from_hps",
    "hps_from_config",
    "read_hps",
]

HPS_FILES = ("train.txt", "test.txt")
PROBLEMS = ("mnist", "cifar10", "imagenet-oord", "imagenet", "celeba", "lsun_realnvp", "lsun")
COUPLINGS = {0: "additive", 1: "affine"}
PERMUTATIONS = {0: "reverse", 1: "shuffle", 2: "invconv"}

# openai/glow train.py's command-line defaults, in its order.
ORIGINAL_DEFAULTS = {
    "verbose": False,
    "restore_path": "",
    "inference": False,
    "logdir": "./logs",
    "problem": "cifar10",
    "category": "",
    "data_dir": "",
    "dal": 1,
    "fmap": 1,
    "pmap": 16,
    "n_train": 50000,
    "n_test": -1,
    "n_batch_train": 64,
    "n_batch_test": 50,
    "n_batch_init": 256,
    "optimizer": "adamax",
    "lr": 0.001,
    "beta1": 0.9,
    "polyak_epochs": 1,
    "weight_decay": 1.0,
    "epochs": 1000000,
    "epochs_warmup": 10,
    "epochs_full_valid": 50,
    "gradient_checkpointing": 1,
    "image_size": -1,
    "anchor_size": 32,
    "width": 512,
    "depth": 32,
    "weight_y": 0.0,
    "n_bits_x": 8,
    "n_levels": 3,
    "n_sample": 1,
    "epochs_full_sample": 50,
    "learntop": False,
    "ycond": False,
    "seed": 0,
    "flow_permutation": 2,
    "flow_coupling": 0,
}
# What the original's get_data derives from the problem.
_IMAGE_SIZE = {"mnist": 32, "cifar10": 32, "imagenet-oord": 64, "imagenet": 256, "celeba": 256, "lsun_realnvp": 64}
_IMAGE_SIZE["lsun"] = 256
_N_TEST = {"mnist": 10000, "cifar10": 10000, "imagenet-oord": 50000, "imagenet": 50000, "celeba": 3000}
_N_TEST.update(lsun_realnvp=300, lsun=300)
_N_Y = {"mnist": 10, "cifar10": 10, "imagenet-oord": 1000, "imagenet": 1000, "celeba": 1, "lsun_realnvp": 1, "lsun": 1}
_DATA_DIR = {
    "mnist": None,
    "cifar10": None,
    "imagenet-oord": "/mnt/host/imagenet-oord-tfr",
    "imagenet": "/mnt/host/imagenet-tfr",
    "celeba": "/mnt/host/celeba-reshard-tfr",
    "lsun_realnvp": "/mnt/host/lsun_realnvp",
    "lsun": "/mnt/host/lsun",
}
_LOCAL_BATCH_TEST = {64: 50, 32: 25, 16: 10, 8: 5, 4: 2, 2: 2, 1: 1}
_IMAGENET_BUILDER = {"imagenet-oord": "downsampled_imagenet", "imagenet": "imagenet_resized"}


# ----------------------------------------------------------------------------- reading hps
def read_hps(logdir: str) -> dict:
    """The hps dict from the first line of ``logdir/train.txt`` (or ``test.txt``).

    Raises:
      FileNotFoundError: ``logdir`` does not exist or holds neither file.
      ValueError: the first line is not a JSON object.
    """
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"The original run's logdir {logdir!r} does not exist.")
    for name in HPS_FILES:
        path = os.path.join(logdir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                line = f.readline()
            try:
                hps = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"The first line of {path!r} is not the hps JSON of the original's train.py ({err})."
                ) from None
            if not isinstance(hps, dict):
                raise ValueError(f"The first line of {path!r} is {type(hps).__name__}, not the hps JSON object.")
            return hps
    raise FileNotFoundError(
        f"No train.txt or test.txt in {logdir!r}: the original's train.py writes its hps as their first line."
    )


def _field(hps: dict, key: str):
    if key not in hps:
        raise ValueError(f"The hps lack the field {key!r}; is this the train.txt of openai/glow's train.py?")
    return hps[key]


def _int(hps: dict, key: str, minimum: int) -> int:
    value = _field(hps, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"hps {key}={value!r} is not supported: glow_tf needs an integer >= {minimum}.")
    return value


def _flag(hps: dict, key: str) -> bool:
    value = _field(hps, key)
    if value not in (True, False, 0, 1):
        raise ValueError(f"hps {key}={value!r} is not supported: valid values are true/false (or 0/1).")
    return bool(value)


def _code(hps: dict, key: str, codes: dict[int, str]) -> str:
    value = _field(hps, key)
    if isinstance(value, bool) or value not in codes:
        valid = ", ".join(f"{k} ({v})" for k, v in codes.items())
        raise ValueError(f"hps {key}={value!r} is not supported: valid values are {valid}.")
    return codes[value]


def _problem(hps: dict) -> str:
    problem = _field(hps, "problem")
    if problem not in PROBLEMS:
        raise ValueError(f"hps problem={problem!r} is not supported: valid problems are {', '.join(PROBLEMS)}.")
    return problem


def _image_size(hps: dict, problem: str) -> int:
    if hps.get("image_size", -1) == -1:
        return _IMAGE_SIZE[problem]  # the original's get_data does the same
    return _int(hps, "image_size", 1)


# ----------------------------------------------------------------------------- hps -> config
def _data_from_problem(cfg: ml_collections.ConfigDict, hps: dict, problem: str, image_size: int) -> None:
    """Sets ``cfg.name`` (and category / builder) to glow_tf's dataset for the original's ``problem``."""
    if problem in ("mnist", "cifar10"):
        cfg.name = problem
    elif problem in _IMAGENET_BUILDER:
        if image_size not in (32, 64):
            raise ValueError(
                f"hps problem={problem!r} with image_size={image_size} is not supported: glow_tf has ImageNet at "
                "32 and 64 only (imagenet32, imagenet64); pass --data_name and --data_path of local data instead."
            )
        cfg.name, cfg.imagenet_builder = f"imagenet{image_size}", _IMAGENET_BUILDER[problem]
    elif problem == "celeba":
        cfg.name = "celebahq"
    else:  # lsun_realnvp, lsun
        category = hps.get("category", "")
        if category not in data.LSUN_CATEGORIES:
            raise ValueError(
                f"hps category={category!r} (problem={problem!r}) is not supported: valid LSUN categories are "
                f"{', '.join(data.LSUN_CATEGORIES)}; or pass --data_name and --data_path of local data."
            )
        cfg.name, cfg.lsun_category = "lsun", category


def _training_fields(config: ml_collections.ConfigDict, hps: dict, problem: str, image_size: int) -> list[str]:
    """Fine-tuning defaults from the original's training hps; returns notes on what has no equivalent."""
    get = lambda key: hps.get(key, ORIGINAL_DEFAULTS.get(key))
    notes = []
    anchor, n_batch = get("anchor_size"), get("n_batch_train")
    local_batch = hps.get("local_batch_train") or max(1, n_batch * anchor * anchor // (image_size * image_size))
    config.optim.learning_rate = float(get("lr"))
    config.optim.beta1 = float(get("beta1"))
    steps = hps.get("train_its", 0) * get("polyak_epochs")
    if steps > 1:
        config.optim.beta2 = 1.0 - 1.0 / steps  # the original's Adamax (and Polyak) beta2
    config.optim.warmup_images = int(round(get("n_train") * get("epochs_warmup") * local_batch / n_batch))
    config.train.batch_size = 0
    config.train.per_replica_batch_size = int(local_batch)
    config.train.n_init = int(hps.get("local_batch_init") or get("n_batch_init"))
    config.train.backprop = "checkpointing" if get("gradient_checkpointing") else "standard"
    dal = get("dal")
    if problem in ("mnist", "cifar10") and dal:
        config.data.random_shift = 0.1
        config.data.random_flip = problem == "cifar10" and dal == 2
        if problem == "cifar10" and dal == 2:
            notes.append("hps dal=2 also rotates, zooms and shears; glow_tf fine-tunes with shifts and flips only.")
    if get("optimizer") != "adamax":
        notes.append(f"hps optimizer={get('optimizer')!r}: glow_tf fine-tunes with Adamax.")
    if get("weight_decay") != 1.0:
        notes.append(f"hps weight_decay={get('weight_decay')!r} has no glow_tf equivalent: fine-tuning has none.")
    if problem == "lsun_realnvp":
        notes.append(
            "The original's lsun_realnvp takes random 64x64 crops of 96x96 images; glow_tf's lsun central-crops "
            "and resizes, so its test bits/dim are not directly comparable."
        )
    return notes


def config_from_hps(
    hps: dict, data_name: str | None = None, data_path: str | None = None, data_dir: str | None = None
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """The glow_tf training config of an original run, and notes on what did not carry over.

    Args:
      hps: the original's hps (:func:`read_hps`).
      data_name: a glow_tf ``data.name`` replacing the problem's dataset (e.g. ``'npz'``).
      data_path: ``data.path`` for ``npz`` / ``folder`` (made absolute).
      data_dir: TFDS ``data.data_dir``.

    Raises:
      ValueError: naming the hps field, its value and what is valid, for anything
        glow_tf cannot represent.
    """
    problem = _problem(hps)
    image_size = _image_size(hps, problem)
    n_levels = _int(hps, "n_levels", 1)
    try:
        data.check_image_size(image_size, n_levels)
    except ValueError as err:
        raise ValueError(f"hps image_size={image_size}, n_levels={n_levels} are not supported: {err}") from None
    ycond = _flag(hps, "ycond")
    weight_y = _field(hps, "weight_y")
    if isinstance(weight_y, bool) or not isinstance(weight_y, (int, float)) or not weight_y >= 0:
        raise ValueError(f"hps weight_y={weight_y!r} is not supported: valid values are numbers >= 0.")
    notes = []
    if weight_y > 0 and not ycond:
        notes.append(
            f"hps weight_y={weight_y} without ycond has no effect in the original (no classifier): weight_y=0."
        )

    config = config_lib.default_config()
    config.seed = _int(hps, "seed", 0) if "seed" in hps else 0
    if data_name is None:
        if data_path is not None:
            raise ValueError("A data path needs a data name (data_name='npz' or 'folder').")
        _data_from_problem(config.data, hps, problem, image_size)
    else:
        if data_name not in data.DATASETS:
            raise ValueError(f"data_name={data_name!r} is not a glow_tf dataset; valid: {', '.join(data.DATASETS)}.")
        config.data.name = data_name
        config.data.path = os.path.abspath(os.path.expanduser(data_path)) if data_path else ""
    if data_dir:
        config.data.data_dir = os.path.abspath(os.path.expanduser(data_dir))
    config.data.image_size = image_size
    config.data.channels = 3
    n_bits = _field(hps, "n_bits_x")
    if isinstance(n_bits, bool) or n_bits not in range(1, 9):
        raise ValueError(f"hps n_bits_x={n_bits!r} is not supported: valid values are 1..8.")
    config.data.n_bits = n_bits
    m = config.model
    m.num_levels = n_levels
    m.num_steps = _int(hps, "depth", 1)
    m.hidden_width = _int(hps, "width", 1)
    m.coupling = _code(hps, "flow_coupling", COUPLINGS)
    m.permutation = _code(hps, "flow_permutation", PERMUTATIONS)
    m.lu_decomposed = False  # the original's LU code is switched off (`if True:` in invertible_1x1_conv)
    m.learn_top = _flag(hps, "learntop")
    m.class_conditional = ycond
    m.weight_y = float(weight_y) if ycond else 0.0
    notes += _training_fields(config, hps, problem, image_size)
    config_lib.validate_config(config)
    return config, notes


def check_classes(hps: dict, config: ml_collections.ConfigDict, info: data.DatasetInfo) -> None:
    """Raises ``ValueError`` unless a class-conditional run's dataset has the run's ``n_y`` classes."""
    if not config.model.class_conditional:
        return
    n_y = _int(hps, "n_y", 1)
    if info.num_classes != n_y:
        source = config.data.name + (f" ({config.data.path})" if config.data.path else "")
        raise ValueError(
            f"hps ycond=true with n_y={n_y} needs a labelled dataset with {n_y} classes; data.name={source} has "
            f"{info.num_classes}. Pass --data_name/--data_path of a dataset with {n_y} classes."
        )


# ----------------------------------------------------------------------------- config -> hps
def _problem_of(config: ml_collections.ConfigDict) -> str | None:
    """The original's problem for glow_tf's dataset, or None when it has none."""
    name, size = config.data.name, config.data.image_size
    if name in ("mnist", "cifar10"):
        return name
    if name in ("imagenet32", "imagenet64"):
        return {v: k for k, v in _IMAGENET_BUILDER.items()}[config.data.imagenet_builder]
    if name == "celebahq":
        return "celeba"
    if name == "lsun":
        return "lsun_realnvp" if size == 64 else "lsun"
    return None


def _derive(hps: dict) -> None:
    """Fills what the original's get_data / get_its derive (one process), where ``hps`` lacks it."""
    problem, size = hps["problem"], hps["image_size"]
    if hps["n_test"] == -1:
        hps["n_test"] = _N_TEST[problem]
    if hps["data_dir"] == "":
        hps["data_dir"] = _DATA_DIR[problem]
        if hps["category"] and hps["data_dir"]:
            hps["data_dir"] += "/" + hps["category"]
    hps.setdefault("rnd_crop", problem == "lsun_realnvp")
    anchor = hps["anchor_size"]
    hps.setdefault("local_batch_train", hps["n_batch_train"] * anchor * anchor // (size * size))
    hps.setdefault("local_batch_test", _LOCAL_BATCH_TEST.get(hps["local_batch_train"], 1))
    hps.setdefault("local_batch_init", hps["n_batch_init"] * anchor * anchor // (size * size))
    hps.setdefault("direct_iterator", problem not in ("mnist", "cifar10"))
    hps.setdefault("train_its", int(math.ceil(hps["n_train"] / hps["n_batch_train"])))
    hps.setdefault("test_its", int(math.ceil(hps["n_test"] / hps["n_batch_train"])))
    hps.setdefault("full_test_its", hps["n_test"] // hps["local_batch_test"])


def hps_from_config(
    config: ml_collections.ConfigDict,
    top_shape,
    num_classes: int,
    logdir: str,
    base: dict | None = None,
    problem: str | None = None,
    category: str | None = None,
) -> tuple[dict, list[str]]:
    """The original's hps for a glow_tf run, with every field its train.py has.

    Model fields come from ``config``; training-only fields from ``base`` (the hps a
    converted run came from), else the original's defaults with glow_tf's learning
    rate, beta1, seed, warm-up and gradient checkpointing.

    Args:
      config: the run's config.
      top_shape: the model's top latent shape (the original logs it).
      num_classes: the model's class count (0: unconditional).
      logdir: the logdir being written (recorded as ``logdir``).
      base: the hps of the original run this one was converted from, if any.
      problem: the original's problem; default: from ``config.data``, else ``base``.
      category: the LSUN category; default: ``config.data.lsun_category`` for lsun, else ``base``'s.

    Raises:
      ValueError: for a run the original cannot represent (not RGB, no problem for its
        data, a class count other than the problem's ``n_y``).
    """
    m, d = config.model, config.data
    if d.channels != 3:
        raise ValueError(f"The original models RGB images only (3 channels); this run has data.channels={d.channels}.")
    problem = problem or _problem_of(config) or (base or {}).get("problem")
    if problem not in PROBLEMS:
        raise ValueError(
            f"data.name={d.name!r} has no counterpart among the original's problems; pass problem= one of "
            f"{', '.join(PROBLEMS)} (the original's train.py reads its data, and n_y, from it)."
        )
    hps = {**ORIGINAL_DEFAULTS, **(base or {})}
    notes = []
    if base is None:
        hps.update(
            lr=float(config.optim.learning_rate),
            beta1=float(config.optim.beta1),
            anchor_size=min(32, d.image_size),
            gradient_checkpointing=int(config_lib.backprop_mode(config.train) != "standard"),
            epochs_warmup=max(1, int(round(config.optim.warmup_images / ORIGINAL_DEFAULTS["n_train"]))),
        )
    if category is None:
        category = d.lsun_category if d.name == "lsun" else hps["category"]
    if problem.startswith("lsun") and category not in data.LSUN_CATEGORIES:
        raise ValueError(
            f"problem={problem!r} needs an LSUN category, got {category!r}; pass category= one of "
            f"{', '.join(data.LSUN_CATEGORIES)}."
        )
    if num_classes and num_classes != _N_Y[problem]:
        raise ValueError(
            f"This class-conditional run has {num_classes} classes; the original's problem {problem!r} has "
            f"n_y={_N_Y[problem]}. Pass a problem with {num_classes} classes."
        )
    hps.update(
        restore_path="",
        inference=False,
        logdir=os.path.abspath(logdir),
        problem=problem,
        category=category,
        image_size=int(d.image_size),
        width=int(m.hidden_width),
        depth=int(m.num_steps),
        weight_y=float(m.weight_y) if m.class_conditional else float(hps["weight_y"]),
        n_bits_x=int(d.n_bits),
        n_levels=int(m.num_levels),
        learntop=bool(m.learn_top),
        ycond=bool(m.class_conditional),
        seed=int(config.seed),
        flow_permutation={v: k for k, v in PERMUTATIONS.items()}[m.permutation],
        flow_coupling={v: k for k, v in COUPLINGS.items()}[m.coupling],
        n_y=_N_Y[problem],
    )
    if base is not None and base.get("problem") != problem:
        for key in ("n_test", "data_dir", "rnd_crop", "direct_iterator", "test_its", "full_test_its"):
            hps.pop(key, None)
        hps.update(n_test=-1, data_dir="")
    _derive(hps)
    hps["n_bins"] = 2.0 ** hps["n_bits_x"]
    hps["top_shape"] = [int(s) for s in top_shape]
    if m.lu_decomposed:
        notes.append("The LU-decomposed 1x1 convolutions are written as their matrices W (the original has no LU).")
    return hps, notes
