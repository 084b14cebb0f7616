"""Data configuration: the fields of ``config.data``, their validation and static facts.

Everything here is cheap and offline: no TFDS download, no image decoding. The
``DataSpec`` built by :func:`resolve` is the validated, hashable form of a
``config.data`` section that the rest of the package works from.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections

from glow_tf import _validate, quantization

__all__ = [
    "CELEBA_ATTRIBUTES",
    "DATASETS",
    "IMAGENET_BUILDERS",
    "LSUN_CATEGORIES",
    "DataSpec",
    "DatasetUnavailableError",
    "check_image_size",
    "default_config",
    "resolve",
]

DATASETS: tuple[str, ...] = (
    "digits",
    "npz",
    "folder",
    "mnist",
    "cifar10",
    "cifar100",
    "svhn",
    "fashion_mnist",
    "celeba",
    "celebahq",
    "imagenet32",
    "imagenet64",
    "lsun",
)

# The 40 CelebA attributes in the order of list_attr_celeba.txt (and of TFDS celeb_a).
CELEBA_ATTRIBUTES: tuple[str, ...] = tuple(
    (
        "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
        "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
        "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
        "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
        "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
    ).split()
)

# LSUN scene categories (the ones with a validation split in TFDS ``lsun/<category>``).
LSUN_CATEGORIES: tuple[str, ...] = (
    "bedroom",
    "bridge",
    "church_outdoor",
    "classroom",
    "conference_room",
    "dining_room",
    "kitchen",
    "living_room",
    "restaurant",
    "tower",
)

# TFDS builders for imagenet32 / imagenet64: van den Oord et al.'s downsampled ImageNet
# (the Glow paper's data, unlabelled) or Chrabaszcz et al.'s resized ImageNet (1000 labels).
IMAGENET_BUILDERS: tuple[str, ...] = ("downsampled_imagenet", "imagenet_resized")


class DatasetUnavailableError(ValueError):
    """A dataset cannot be loaded here (TFDS download failed, manual files missing, ...)."""


def default_config() -> ml_collections.ConfigDict:
    """The ``data`` section of an experiment config, with offline defaults.

    Fields:
      name: one of :data:`DATASETS`.
      image_size: side of the square output images (H = W).
      channels: 1 (grayscale) or 3 (RGB); other sources are converted
        (RGB -> gray by ITU-R 601 luma, gray -> RGB by tiling).
      n_bits: bits per pixel kept by the model, 1..8.
      data_dir: TFDS ``data_dir`` (None: TFDS's default, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      path: the image folder (``folder``) or ``.npz`` file (``npz``); '' otherwise.
      test_fraction: held-out fraction for ``folder`` / ``npz``.
      random_shift: training augmentation, max shift as a fraction of image size (0: off).
      random_flip: training augmentation, random horizontal flips.
      lsun_category: one of :data:`LSUN_CATEGORIES` for ``lsun``.
      imagenet_builder: one of :data:`IMAGENET_BUILDERS` for ``imagenet32`` / ``imagenet64``.
      cache: hold small decoded training sets in memory (see ``CACHE_MAX_BYTES``).

    Returns:
      A ``ConfigDict`` that configs assign to ``config.data`` and then override.
    """
    cfg = ml_collections.ConfigDict()
    cfg.name = "digits"
    cfg.image_size = 8
    cfg.channels = 1
    cfg.n_bits = 8
    cfg.data_dir = ml_collections.FieldReference(None, field_type=str)
    cfg.path = ""
    cfg.test_fraction = 0.1
    cfg.random_shift = 0.0
    cfg.random_flip = False
    cfg.lsun_category = "bedroom"
    cfg.imagenet_builder = "downsampled_imagenet"
    cfg.cache = True
    return cfg


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A validated ``config.data`` (hashable, so loaders can memoise on it)."""

    name: str
    image_size: int
    channels: int
    n_bits: int
    data_dir: str | None
    path: str
    test_fraction: float
    random_shift: float
    random_flip: bool
    lsun_category: str
    imagenet_builder: str
    cache: bool


_DEFAULTS = default_config()


def _field(cfg, key: str):
    """``cfg.key`` (attribute access, so ConfigDicts and plain objects work), else the default."""
    return getattr(cfg, key, _DEFAULTS[key])


def check_image_size(image_size: int, num_levels: int) -> None:
    """Checks that the multi-scale model can squeeze ``image_size`` ``num_levels`` times.

    Args:
      image_size: height = width of the images.
      num_levels: L, the number of scales; each squeeze halves H and W.

    Raises:
      ValueError: naming both values unless ``image_size % 2**num_levels == 0``.
    """
    _validate.positive_int(image_size, "image_size")
    _validate.positive_int(num_levels, "num_levels")
    if image_size % 2**num_levels:
        raise ValueError(
            f"image_size={image_size} is not divisible by 2**num_levels = {2**num_levels} "
            f"(num_levels={num_levels}): each level squeezes H and W by 2. Use an image_size that is a "
            f"multiple of {2**num_levels} or fewer levels."
        )


def resolve(cfg) -> DataSpec:
    """Validates a ``config.data`` section and returns its :class:`DataSpec`.

    Args:
      cfg: a ``ConfigDict`` (or any object with attribute access) with the fields of
        :func:`default_config`; missing fields take their defaults.

    Returns:
      The validated, hashable spec.

    Raises:
      ValueError: naming the bad field, its value and what is valid.
    """
    name = _validate.choice(_field(cfg, "name"), DATASETS, "dataset name")
    channels = _field(cfg, "channels")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    test_fraction = float(_field(cfg, "test_fraction"))
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}.")
    random_shift = float(_field(cfg, "random_shift"))
    if not 0.0 <= random_shift <= 0.5:
        raise ValueError(f"random_shift must be in [0, 0.5] (a fraction of the image size), got {random_shift!r}.")
    path = _field(cfg, "path") or ""
    if name in ("folder", "npz") and not path:
        what = "a directory of png/jpg images" if name == "folder" else "a .npz file"
        raise ValueError(f"data.path must name {what} for name={name!r}; got an empty path.")
    data_dir = _field(cfg, "data_dir") or None
    return DataSpec(
        name=name,
        image_size=_validate.positive_int(_field(cfg, "image_size"), "image_size"),
        channels=int(channels),
        n_bits=quantization.validate_n_bits(_field(cfg, "n_bits")),
        data_dir=os.path.expanduser(data_dir) if data_dir else None,
        path=os.path.expanduser(path),
        test_fraction=test_fraction,
        random_shift=random_shift,
        random_flip=bool(_field(cfg, "random_flip")),
        lsun_category=_validate.choice(_field(cfg, "lsun_category"), LSUN_CATEGORIES, "lsun_category")
        if name == "lsun"
        else str(_field(cfg, "lsun_category")),
        imagenet_builder=_validate.choice(_field(cfg, "imagenet_builder"), IMAGENET_BUILDERS, "imagenet_builder")
        if name.startswith("imagenet")
        else str(_field(cfg, "imagenet_builder")),
        cache=bool(_field(cfg, "cache")),
    )


def check_split(split: str) -> str:
    """Returns ``split`` or raises ``ValueError`` unless it is 'train' or 'test'."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return split
