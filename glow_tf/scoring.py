"""Likelihood scoring: per-image bits/dim of any images, split by level, and out-of-distribution tests.

Every number comes from :meth:`glow_tf.inference.InferenceModel.per_level_bits_per_dim`
(one encode pass of ``Glow.log_prob_terms``, live or through the SavedModel's
``per_level_bits_per_dim_seeded`` signature), so a workdir and its export score identically.

Per-image decomposition (``D = H*W*C``; :func:`glow_tf.metrics.term_bits_per_dim`)::

    bits_per_dim = n_bits + sum_i level{i}_flow + sum_{i<L-1} level{i}_prior + top_prior
    level{i}_flow  = -(log-det of level i's flow steps) / (D ln 2)      (negative when they expand volume)
    level{i}_prior = -log p(z_i | z_{>i}) / (D ln 2)                   (the split prior of level i)
    top_prior      = -log p(z_top) / (D ln 2)                           (the prior of the last level)

``n_bits`` is the constant bin-width term ``D * n_bits * ln 2`` of the discrete
likelihood. The columns add up to ``bits_per_dim`` up to float rounding (about 1e-6).

Noise: image ``n`` of a source (its position in the source's fixed order) is
dequantised with the stateless seed ``fold_in(noise_seed(seed, k), n)`` in draw ``k``,
so its score does not depend on the batch size or on what else is scored. With
``num_draws = K`` every column is the mean over ``K`` draws of the bits/dim
(i.e. of the log-likelihood, in bits: the usual report; the columns still add up).
The importance-weighted ``log mean_k p_k`` would be a tighter bound, but its
per-level terms do not add up, so it is not offered.

Out-of-distribution scores (Nalisnick et al. 2019; 2019b):

* bits/dim: higher = more out-of-distribution. :func:`auroc` is the probability that
  an OOD image has higher bits/dim than an in-distribution one (ties count 1/2). An
  AUROC below 0.5 means the model gives the OOD set *higher* likelihood: the
  "do deep generative models know what they don't know" finding.
* typicality: for disjoint batches of ``M`` images, ``|mean bits/dim of the batch -
  mean bits/dim of a training sample|``; the AUROC is taken over batches.

Sources (:func:`parse_source`)::

    NAME[:SPLIT]        a config.data.name (mnist, cifar10, svhn, digits, ...); SPLIT test (default) | train
    npz:PATH[:SPLIT]    the arrays of a .npz file; SPLIT all (default) | train | test (the held-out split)
    folder:DIR[:SPLIT]  the png/jpg files under DIR; the same splits
    files:A.png,B.png   a list of image files
    run[:SPLIT]         the model's own training data (a workdir, or an export of one); test (default) | train

Dataset images reach the model through the training pipeline (``data.load_keyed_split``
with the model's image size and channels); when the stored images differ from the
model's shape, a note says what the pipeline does (pad, crop, resize, channel
conversion); images smaller than the model's are rejected (never upsampled).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from glow_tf import _validate, data
from glow_tf.inference import InferenceModel
from glow_tf.latent_tools import load_image

__all__ = [
    "Scores",
    "SourceData",
    "SourceSpec",
    "auroc",
    "compare",
    "histogram_png",
    "level_columns",
    "level_table",
    "open_source",
    "parse_source",
    "score_images",
    "score_source",
    "typicality_scores",
    "write_json",
]

SPLITS = ("train", "test")
FILE_SPLITS = ("all", "train", "test")


# ----------------------------------------------------------------------------- sources
@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: ``kind`` is a dataset name, ``npz``, ``folder``, ``files`` or ``run``."""

    text: str
    kind: str
    split: str = "test"
    path: str = ""
    files: tuple[str, ...] = ()


def parse_source(text: str) -> SourceSpec:
    """Parses a source spec (see the module docstring).

    Raises:
      ValueError: naming the spec and the valid forms.
    """
    kind, _, rest = str(text).partition(":")
    valid = (
        f"valid: NAME[:train|test] (NAME one of {', '.join(n for n in data.DATASETS if n not in ('npz', 'folder'))}), "
        "npz:PATH[:all|train|test], folder:DIR[:all|train|test], files:A.png,B.png, run[:train|test]"
    )
    if kind in ("npz", "folder"):
        path, split = rest, "all"
        head, _, tail = rest.rpartition(":")
        if head and tail in FILE_SPLITS:
            path, split = head, tail
        if not path:
            raise ValueError(f"Source {text!r} names no {'file' if kind == 'npz' else 'folder'}; {valid}.")
        return SourceSpec(text, kind, split, path=os.path.expanduser(path))
    if kind == "files":
        files = tuple(f for f in rest.split(",") if f)
        if not files:
            raise ValueError(f"Source {text!r} names no files; {valid}.")
        return SourceSpec(text, kind, "all", files=files)
    if kind == "run" or (kind in data.DATASETS and kind not in ("npz", "folder")):
        split = rest or "test"
        if split not in SPLITS:
            raise ValueError(f"Source {text!r}: unknown split {split!r} (train or test); {valid}.")
        return SourceSpec(text, kind, split)
    raise ValueError(f"Unknown source {text!r}; {valid}.")


@dataclasses.dataclass(frozen=True)
class SourceData:
    """An opened source: ``batches(batch_size)`` yields ``(keys, images uint8 [b, H, W, C], labels int32 [b])``.

    ``num_examples`` is the number of images (an upper bound where undecodable files are
    dropped); ``notes`` say how the images were converted to the model's shape.
    """

    name: str
    num_examples: int
    batches: Callable[[int], Iterator[tuple[list[str], np.ndarray, np.ndarray]]]
    notes: tuple[str, ...] = ()
    has_labels: bool = True


def _model_size(model: InferenceModel) -> int:
    height, width, _ = model.image_shape
    if height != width:
        raise ValueError(f"Dataset sources need a square model; this one takes {height}x{width} images (use files:).")
    return height


def _data_config(spec: SourceSpec, model: InferenceModel, data_dir: str | None):
    """The ``config.data`` section that loads ``spec`` at the model's size, channels and bits."""
    cfg = data.default_config()
    run = model.data_config
    if spec.kind == "run":
        if run is None:
            raise ValueError(
                f"Source {spec.text!r} is the model's own training data, but {model.source} records no training "
                "config: pass a training workdir (or an export of one), or name the data (e.g. npz:PATH:test)."
            )
        cfg.update(dict(run))
    else:
        cfg.name = spec.kind
        cfg.path = spec.path
        cfg.data_dir = data_dir
        if run is not None:
            cfg.test_fraction = run.test_fraction
    cfg.image_size, cfg.channels, cfg.n_bits = _model_size(model), model.image_shape[2], model.n_bits
    cfg.random_shift, cfg.random_flip = 0.0, False
    if spec.split == "all":
        cfg.test_fraction = 0.0  # every example lands in the training split
    return cfg


def _shape_note(name: str, source_shape, model_shape) -> str | None:
    """What the dataset pipeline does to reach the model's shape (None: nothing)."""
    h, w, c = model_shape
    if source_shape is None:
        return f"{name}: images of varying size are centre-cropped and area-resized to {h}x{w}x{c}."
    if tuple(source_shape) == tuple(model_shape):
        return None
    sh, sw, sc = source_shape
    what = []
    if (sh, sw) != (h, w):
        what.append(f"{sh}x{sw} -> {h}x{w} (padded, cropped and/or resized as the training pipeline does)")
    if sc != c:
        kinds = {1: "grayscale", 3: "RGB", 4: "RGBA"}
        rule = " (ITU-R 601 luma)" if c == 1 else " (tiled)"
        what.append(f"{kinds.get(sc, sc)} -> {kinds.get(c, c)}{rule}")
    return f"{name}: the stored images are {sh}x{sw}x{sc}, the model takes {h}x{w}x{c}: converted {'; '.join(what)}."


def _dataset_source(spec: SourceSpec, model: InferenceModel, data_dir: str | None) -> SourceData:
    cfg = _data_config(spec, model, data_dir)
    info = data.dataset_info(cfg)
    split = "train" if spec.split == "all" else spec.split
    keyed, count = data.load_keyed_split(cfg, split)
    root = os.path.abspath(cfg.path) if cfg.name == "folder" else None

    def batches(batch_size: int):
        for keys, images, labels in keyed.batch(batch_size).as_numpy_iterator():
            names = [k.decode("utf-8") for k in keys]
            if root is not None:
                names = [os.path.relpath(n, root) for n in names]
            yield names, images, labels.astype(np.int32)

    note = _shape_note(spec.text, info.source_shape, model.image_shape)
    return SourceData(spec.text, count, batches, (note,) if note else (), has_labels=info.num_classes > 0)


def _files_source(spec: SourceSpec, model: InferenceModel, resize: bool) -> SourceData:
    def batches(batch_size: int):
        for start in range(0, len(spec.files), batch_size):
            names = list(spec.files[start : start + batch_size])
            images = np.stack([load_image(f, model.image_shape, resize) for f in names])
            yield names, images, np.zeros(len(names), np.int32)

    for f in spec.files:  # a missing file is an error before any scoring
        if not os.path.isfile(f):
            raise FileNotFoundError(f"No image file {f!r}.")
    return SourceData(spec.text, len(spec.files), batches, has_labels=False)


def open_source(
    spec: SourceSpec | str, model: InferenceModel, data_dir: str | None = None, resize: bool = False
) -> SourceData:
    """Opens a source for ``model``: its images at the model's shape, with keys and labels.

    Args:
      spec: a :class:`SourceSpec` or its text.
      model: the model (its image shape, channels and bits; its training config for ``run``).
      data_dir: TFDS ``data_dir`` for dataset names.
      resize: for ``files``, centre-crop and resize images of another size (else an error).

    Raises:
      ValueError: an unknown or malformed spec, images that do not fit (smaller than the
        model's, or another size without ``resize``), an empty folder, a dataset TFDS cannot
        provide here (``DatasetUnavailableError``).
      FileNotFoundError: a missing file.
    """
    spec = parse_source(spec) if isinstance(spec, str) else spec
    if spec.kind == "files":
        return _files_source(spec, model, resize)
    return _dataset_source(spec, model, data_dir)


# ----------------------------------------------------------------------------- scores
def level_columns(num_levels: int) -> list[str]:
    """The decomposition columns: ``n_bits``, then ``level{i}_flow`` and ``level{i}_prior`` (last: ``top_prior``)."""
    names = ["n_bits"]
    for i in range(num_levels):
        names.append(f"level{i}_flow")
        names.append("top_prior" if i == num_levels - 1 else f"level{i}_prior")
    return names


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per-image bits/dim of one source and its per-level split (see the module docstring).

    Attributes:
      source: the source's name.
      keys: per image, its file (relative to a folder) or its index in the source.
      labels: ``[N]`` int32 labels of the source (0 where it has none).
      bits_per_dim: ``[N]``.
      flow_bits: ``[N, L]`` bits/dim of each level's flow log-det.
      prior_bits: ``[N, L]`` bits/dim of each level's prior (split priors, top last).
      n_bits: the constant bin-width term.
      num_draws, seed: the dequantisation noise.
      seconds: scoring wall time.
    """

    source: str
    keys: tuple[str, ...]
    labels: np.ndarray
    bits_per_dim: np.ndarray
    flow_bits: np.ndarray
    prior_bits: np.ndarray
    n_bits: int
    num_draws: int = 1
    seed: int = 0
    seconds: float = 0.0

    @property
    def num_images(self) -> int:
        return len(self.keys)

    def columns(self) -> dict[str, np.ndarray]:
        """``{name: [N]}`` in :func:`level_columns` order; they add up to ``bits_per_dim``."""
        out = {"n_bits": np.full(self.num_images, float(self.n_bits))}
        for i, name in enumerate(level_columns(self.flow_bits.shape[1])[1:]):
            level, part = divmod(i, 2)
            out[name] = (self.flow_bits if part == 0 else self.prior_bits)[:, level]
        return out

    def means(self) -> dict[str, float]:
        """Mean ``bits_per_dim`` and mean of every decomposition column."""
        return {"bits_per_dim": float(np.mean(self.bits_per_dim))} | {
            name: float(np.mean(values)) for name, values in self.columns().items()
        }

    def write_csv(self, path: str) -> str:
        """Writes ``file_or_index,label,bits_per_dim,n_bits,level0_flow,...,top_prior``, one row per image."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        columns = self.columns()
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["file_or_index", "label", "bits_per_dim", *columns])
            for n, key in enumerate(self.keys):
                values = [self.bits_per_dim[n], *(c[n] for c in columns.values())]
                writer.writerow([key, int(self.labels[n]), *(f"{v:.6f}" for v in values)])
        return path


class _Progress:
    """``scoring SRC: 1200/10000 images, 850 images/s`` on stderr (rewritten in place on a terminal)."""

    def __init__(self, name: str, total: int, stream=None, every: float = 10.0):
        self.name, self.total, self.stream = name, total, stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.5 if self.tty else every
        self.start = self.last = time.perf_counter()
        self.done = 0

    def _line(self) -> str:
        seconds = time.perf_counter() - self.start
        rate = self.done / seconds if seconds > 0 else 0.0
        return f"scoring {self.name}: {self.done}/{self.total} images, {rate:.0f} images/s"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(("\r" if self.tty else "") + self._line(), end="" if self.tty else "\n", file=self.stream, flush=True)

    def close(self) -> float:
        seconds = time.perf_counter() - self.start
        print(("\r" if self.tty else "") + self._line() + f" in {seconds:.1f} s", file=self.stream, flush=True)
        return seconds


def score_images(
    model: InferenceModel,
    images,
    labels=None,
    seed: int = 0,
    num_draws: int = 1,
    index=None,
) -> dict[str, np.ndarray]:
    """Per-level bits/dim of a uint8 batch, averaged over ``num_draws`` seeded noise draws.

    Args:
      model: the model.
      images: uint8 ``[N, H, W, C]``.
      labels: ``[N]`` class ids for a class-conditional model.
      seed: noise seed (>= 0).
      num_draws: K >= 1 draws; every output is the mean over the draws.
      index: ``[N]`` keys of the images' noise (default ``0..N-1``).

    Returns:
      ``bits_per_dim`` ``[N]``, ``flow_bits_per_dim`` and ``prior_bits_per_dim`` ``[N, L]`` (float64).
    """
    num_draws = _validate.positive_int(num_draws, "num_draws")
    draws = [model.per_level_bits_per_dim(images, labels, seed, index, draw=k) for k in range(num_draws)]
    return {name: np.mean([d[name].astype(np.float64) for d in draws], axis=0) for name in draws[0]}


def score_source(
    model: InferenceModel,
    source: SourceData,
    batch_size: int = 64,
    seed: int = 0,
    num_draws: int = 1,
    max_examples: int = 0,
    progress: bool = True,
) -> Scores:
    """Scores every image of an opened source (the first ``max_examples`` when > 0).

    Image ``n`` (its position in the source) gets the noise key ``n``, so the scores do
    not depend on ``batch_size``.

    Raises:
      ValueError: bad arguments, labels that do not fit a class-conditional model, or a
        source that yields no image.
    """
    batch_size = _validate.positive_int(batch_size, "batch_size")
    seed = _validate.seed(seed)
    max_examples = _validate.integer(max_examples, "max_examples", minimum=0)
    if model.num_classes and not source.has_labels:
        raise ValueError(f"The model is class-conditional, but {source.name} has no labels to condition on.")
    total = min(source.num_examples, max_examples) if max_examples else source.num_examples
    meter = _Progress(source.name, total) if progress else None
    start = time.perf_counter()
    keys, labels, parts = [], [], []
    for names, images, batch_labels in source.batches(batch_size):
        keep = total - len(keys)
        names, images, batch_labels = names[:keep], images[:keep], batch_labels[:keep]
        if not names:
            break
        index = np.arange(len(keys), len(keys) + len(names))
        cond = batch_labels if model.num_classes else None
        parts.append(score_images(model, images, cond, seed, num_draws, index))
        keys += names
        labels.append(batch_labels)
        if meter:
            meter.update(len(names))
        if len(keys) >= total:
            break
    seconds = meter.close() if meter else time.perf_counter() - start
    if not keys:
        raise ValueError(f"{source.name} yielded no image to score.")
    joined = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return Scores(
        source.name,
        tuple(keys),
        np.concatenate(labels),
        joined["bits_per_dim"],
        joined["flow_bits_per_dim"],
        joined["prior_bits_per_dim"],
        model.n_bits,
        num_draws,
        seed,
        seconds,
    )


def level_table(scores: Sequence[Scores]) -> str:
    """A text table of the mean bits/dim and its mean per-level split, one row per source."""
    names = ["bits_per_dim", *level_columns(scores[0].flow_bits.shape[1])]
    width = max(12, *(len(s.source) for s in scores))
    lines = [f"{'source':<{width}} {'images':>7} " + " ".join(f"{n:>12}" for n in names)]
    for s in scores:
        means = s.means()
        lines.append(f"{s.source:<{width}} {s.num_images:>7} " + " ".join(f"{means[n]:>12.4f}" for n in names))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- OOD statistics
def auroc(in_scores, ood_scores) -> float:
    """Area under the ROC curve of a score that should be higher for OOD inputs.

    Rank-based (Mann-Whitney U, average ranks for ties)::

        AUROC = (R_ood - n_ood (n_ood + 1) / 2) / (n_ood n_in) = P(s_ood > s_in) + P(s_ood = s_in) / 2

    where ``R_ood`` is the sum of the OOD scores' ranks in the pooled sample.

    Raises:
      ValueError: an empty or non-finite set of scores.
    """
    neg = np.asarray(in_scores, np.float64).reshape(-1)
    pos = np.asarray(ood_scores, np.float64).reshape(-1)
    if not neg.size or not pos.size:
        raise ValueError(f"auroc needs scores of both sets, got {neg.size} in-distribution and {pos.size} OOD.")
    pooled = np.concatenate([neg, pos])
    if not np.isfinite(pooled).all():
        raise ValueError("auroc: the scores must be finite.")
    _, inverse, counts = np.unique(pooled, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)
    average_rank = last - (counts - 1) / 2.0  # 1-based ranks, ties share their mean rank
    ranks = average_rank[inverse]
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def typicality_scores(bits_per_dim, train_mean: float, batch_size: int = 10, seed: int = 0) -> np.ndarray:
    """The typicality test statistic of disjoint batches of ``M = batch_size`` images.

    The images are shuffled (seeded) and cut into ``floor(N / M)`` batches; batch ``b``
    scores ``|mean(bits_per_dim[b]) - train_mean|`` (Nalisnick et al. 2019b, in bits/dim,
    which is the negative log-likelihood divided by ``D ln 2``).

    Raises:
      ValueError: ``batch_size`` < 1 or more than the number of images.
    """
    values = np.asarray(bits_per_dim, np.float64).reshape(-1)
    batch_size = _validate.positive_int(batch_size, "typicality batch_size")
    if batch_size > values.size:
        raise ValueError(f"typicality batch_size={batch_size} exceeds the {values.size} scored images.")
    order = np.random.default_rng(seed).permutation(values.size)
    count = values.size // batch_size
    batches = values[order[: count * batch_size]].reshape(count, batch_size)
    return np.abs(batches.mean(axis=1) - float(train_mean))


def _summary(scores: Scores) -> dict:
    values = scores.bits_per_dim
    return {
        "source": scores.source,
        "images": scores.num_images,
        "mean_bits_per_dim": float(values.mean()),
        "std_bits_per_dim": float(values.std()),
        "median_bits_per_dim": float(np.median(values)),
        "images_per_second": scores.num_images * scores.num_draws / scores.seconds if scores.seconds else None,
        "per_level_means": scores.means(),
    }


def compare(
    in_scores: Scores,
    ood_scores: Sequence[Scores],
    train_scores: Scores,
    typicality_batch: int = 10,
    seed: int = 0,
) -> dict:
    """The OOD numbers of an in-distribution set against one or more OOD sets.

    Args:
      in_scores: the in-distribution test images.
      ood_scores: the other sets.
      train_scores: a training sample: its mean bits/dim is the typicality test's reference.
      typicality_batch: M, images per batch of the typicality test.
      seed: shuffles the images before they are cut into batches.

    Returns:
      A JSON-ready dict: per source the mean / std / median bits/dim and per-level means,
      and per OOD set ``auroc_bits_per_dim`` (higher bits/dim = OOD), ``ood_more_likely``
      (AUROC < 0.5: the OOD set gets higher likelihood) and the typicality test's AUROC.
    """
    train_mean = float(np.mean(train_scores.bits_per_dim))
    in_typical = typicality_scores(in_scores.bits_per_dim, train_mean, typicality_batch, seed)
    results = []
    for ood in ood_scores:
        value = auroc(in_scores.bits_per_dim, ood.bits_per_dim)
        ood_typical = typicality_scores(ood.bits_per_dim, train_mean, typicality_batch, seed + 1)
        results.append(
            {
                **_summary(ood),
                "auroc_bits_per_dim": value,
                "ood_more_likely": value < 0.5,
                "typicality": {
                    "auroc": auroc(in_typical, ood_typical),
                    "batches_in": int(in_typical.size),
                    "batches_ood": int(ood_typical.size),
                },
            }
        )
    return {
        "convention": "score = bits/dim (higher = more OOD); AUROC = P(score_ood > score_in) + P(tie)/2; "
        "AUROC < 0.5: the OOD set has lower bits/dim (higher likelihood) than the in-distribution set",
        "typicality": {
            "batch_size": typicality_batch,
            "train_mean_bits_per_dim": train_mean,
            "train_source": train_scores.source,
            "train_images": train_scores.num_images,
            "score": "|mean bits/dim of a batch of M images - train_mean_bits_per_dim|",
        },
        "n_bits": in_scores.n_bits,
        "num_draws": in_scores.num_draws,
        "seed": in_scores.seed,
        "in_distribution": _summary(in_scores),
        "ood": results,
    }


def write_json(results: Mapping, path: str) -> str:
    """Writes ``results`` as indented JSON; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    return path


# ----------------------------------------------------------------------------- the figure
def histogram_png(path: str, scores: Mapping[str, np.ndarray], title: str = "", bins: int = 40) -> str:
    """Overlaid bits/dim histograms (one colour per set, each normalised to density 1) as a PNG.

    Each set gets ``bins`` bins over its own 0.5..99.5 percentile range (values beyond
    are counted in its end bins; the legend gives the mean over all values), so a narrow
    set keeps its shape next to a wide one. When the sets span more than a factor of 4
    (all positive), the x axis is logarithmic.

    Raises:
      ValueError: no sets, an empty set or ``bins`` < 1.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bins = _validate.positive_int(bins, "bins")
    arrays = {name: np.asarray(values, np.float64).reshape(-1) for name, values in scores.items()}
    if not arrays or any(v.size == 0 for v in arrays.values()):
        raise ValueError("histogram_png needs at least one non-empty set of scores.")
    ranges = {name: np.percentile(v, [0.5, 99.5]) for name, v in arrays.items()}
    low = min(r[0] for r in ranges.values())
    high = max(r[1] for r in ranges.values())
    log_x = low > 0 and high / low > 4
    figure = Figure(figsize=(7.5, 4.5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for i, (name, values) in enumerate(arrays.items()):
        colour = colours[i % len(colours)]
        a, b = ranges[name]
        if not b > a:
            a, b = a - 0.05 * abs(a) - 0.01, b + 0.05 * abs(b) + 0.01
        edges = np.geomspace(a, b, bins + 1) if log_x else np.linspace(a, b, bins + 1)
        label = f"{name} (n={values.size}, mean {values.mean():.3f})"
        clipped = np.clip(values, a, b)
        axes.hist(clipped, edges, density=True, histtype="stepfilled", alpha=0.3, color=colour)
        axes.hist(clipped, edges, density=True, histtype="step", linewidth=1.6, color=colour, label=label)
    if log_x:
        axes.set_xscale("log")
        axes.xaxis.set_major_formatter("{x:g}")
        axes.xaxis.set_minor_formatter("{x:g}")
        axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("bits/dim (lower = more likely under the model)" + (", log scale" if log_x else ""))
    axes.set_ylabel("density")
    axes.set_title(title or "bits/dim per image")
    axes.legend(fontsize=8, frameon=False)
    axes.grid(alpha=0.25)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return path
