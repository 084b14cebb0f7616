"""Image grids, PNG files and the TensorBoard writers of a training run.

``image_grid`` and ``write_png`` are plain NumPy/TF helpers reused by the sampling
tools. :class:`RunWriters` owns ``workdir/train`` and ``workdir/eval`` event files
(no-op writers on non-chief workers) and ``workdir/samples/*.png``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from glow_tf import _validate

__all__ = ["image_grid", "write_png", "RunWriters", "temperature_names"]


def image_grid(images: np.ndarray, rows: int | None = None, padding: int = 1, pad_value: int = 0) -> np.ndarray:
    """Tiles ``N`` images into one image, row by row.

    Args:
      images: ``[N, H, W, C]`` uint8 (C = 1 or 3); ``N >= 1``.
      rows: number of rows; default ``floor(sqrt(N))`` (a near-square grid).
      padding: pixels between tiles and around the grid.
      pad_value: grey level of the padding.

    Returns:
      ``[rows * (H + p) + p, cols * (W + p) + p, C]`` uint8 with ``cols = ceil(N / rows)``;
      unused cells stay ``pad_value``.

    Raises:
      ValueError: for a non-4D input, zero images or ``rows`` outside ``1..N``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"image_grid expects [N, H, W, C] with N >= 1, got shape {images.shape}.")
    n, h, w, c = images.shape
    rows = _validate.integer(rows, f"rows (for {n} images)", 1, n) if rows is not None else max(1, math.isqrt(n))
    cols = math.ceil(n / rows)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def write_png(path: str, grid: np.ndarray) -> str:
    """Writes a ``[H, W, C]`` uint8 image (C = 1 or 3) as PNG, creating folders; returns ``path``."""
    grid = np.asarray(grid)
    if grid.ndim != 3 or grid.dtype != np.uint8 or grid.shape[-1] not in (1, 3, 4):
        raise ValueError(f"write_png expects a [H, W, C] uint8 image with C in (1, 3, 4), got {grid.shape}.")
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    tf.io.write_file(path, tf.io.encode_png(grid))
    return path


def _upscale(grid: np.ndarray, min_size: int = 128) -> np.ndarray:
    """Nearest-neighbour upscaling so tiny grids (8x8 digits) stay visible in TensorBoard and PNG viewers."""
    factor = max(1, min_size // max(grid.shape[0], grid.shape[1]))
    return np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)


class RunWriters:
    """TensorBoard event files under ``workdir/{train,eval}`` and PNG grids under ``workdir/samples``.

    Args:
      workdir: the run's folder.
      enabled: False on non-chief workers: everything becomes a no-op.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.samples_dir = os.path.join(workdir, "samples")
        if enabled:
            self.train = tf.summary.create_file_writer(os.path.join(workdir, "train"))
            self.eval = tf.summary.create_file_writer(os.path.join(workdir, "eval"))
        else:
            self.train = self.eval = tf.summary.create_noop_writer()

    def scalars(self, values: Mapping[str, float], step: int, split: str = "train") -> None:
        """Writes scalar summaries to ``train`` or ``eval``."""
        writer = self.eval if split == "eval" else self.train
        with writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, float(value), step=step)
        writer.flush()

    def text(self, name: str, markdown: str, step: int = 0) -> None:
        """A text summary in ``train`` (TensorBoard renders it as markdown)."""
        with self.train.as_default():
            tf.summary.text(name, markdown, step=step)
        self.train.flush()

    def grids(self, grids: Mapping[str, np.ndarray], step: int, png: bool = True) -> list[str]:
        """Writes ``name -> [H, W, C]`` uint8 grids as image summaries and (``png``) as PNG files.

        Returns:
          The PNG paths written: ``samples/step<step>_<name with / as _>.png``.
        """
        paths = []
        if not self.enabled:
            return paths
        with self.train.as_default():
            for name, grid in grids.items():
                tf.summary.image(name, _upscale(grid)[None], step=step)
                if png:
                    filename = f"step{step:08d}_{name.replace('/', '_')}.png"
                    paths.append(write_png(os.path.join(self.samples_dir, filename), _upscale(grid, 256)))
        self.train.flush()
        return paths

    def close(self) -> None:
        """Flushes and closes the event files."""
        for writer in {id(self.train): self.train, id(self.eval): self.eval}.values():
            writer.close()


def temperature_names(temperatures: Sequence[float]) -> list[str]:
    """Summary names ``samples/T0.70`` for a list of temperatures."""
    return [f"samples/T{float(t):.2f}" for t in temperatures]
