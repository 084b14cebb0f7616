"""glow_tf.summaries: image grids, PNG files, event files read back with TensorBoard's reader."""

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from glow_tf import summaries


def _images(n, h=3, w=2, c=1):
    return (np.arange(n * h * w * c).reshape(n, h, w, c) % 200 + 10).astype(np.uint8)


def test_grid_places_every_image_row_by_row():
    images = _images(6)
    grid = summaries.image_grid(images, rows=2, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 3 + 1, 1) and grid.dtype == np.uint8
    for i in range(6):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(grid[1 + 4 * r : 4 + 4 * r, 1 + 3 * c : 3 + 3 * c], images[i])
    assert grid[0].max() == 0 and grid[:, 0].max() == 0  # padding


def test_grid_default_is_near_square_and_leaves_unused_cells_blank():
    grid = summaries.image_grid(_images(5, 2, 2, 3), padding=0)
    assert grid.shape == (2 * 2, 3 * 2, 3)  # 2 rows of 3
    assert grid[2:, 4:].max() == 0


@pytest.mark.parametrize("bad, rows", [(np.zeros((0, 2, 2, 1), np.uint8), None), (np.zeros((2, 2, 1)), None)])
def test_grid_rejects_bad_input(bad, rows):
    with pytest.raises(ValueError, match="image_grid"):
        summaries.image_grid(bad, rows)


def test_grid_rejects_bad_rows():
    with pytest.raises(ValueError, match="rows"):
        summaries.image_grid(_images(3), rows=4)


def test_png_round_trip(tmp_path):
    grid = summaries.image_grid(_images(4, c=3))
    path = summaries.write_png(str(tmp_path / "a" / "grid.png"), grid)
    back = tf.io.decode_png(tf.io.read_file(path)).numpy()
    np.testing.assert_array_equal(back, grid)
    with pytest.raises(ValueError, match="uint8"):
        summaries.write_png(str(tmp_path / "b.png"), grid.astype(np.float32))


def _accumulator(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def test_run_writers_scalars_images_text_and_pngs(tmp_path):
    writers = summaries.RunWriters(str(tmp_path))
    writers.scalars({"bits_per_dim": 3.5, "learning_rate": 1e-3}, step=7)
    writers.scalars({"bits_per_dim": 3.25}, step=7, split="eval")
    writers.text("config", "```\n{}\n```")
    grid = summaries.image_grid(_images(4))
    paths = writers.grids({"samples/T0.70": grid}, step=7)
    writers.close()

    train = _accumulator(tmp_path / "train")
    plugin = lambda tag: train.SummaryMetadata(tag).plugin_data.plugin_name
    assert {plugin("bits_per_dim"), plugin("samples/T0.70"), plugin("config")} == {"scalars", "images", "text"}
    (event,) = train.Tensors("bits_per_dim")
    assert event.step == 7 and tf.make_ndarray(event.tensor_proto) == pytest.approx(3.5)
    (image,) = train.Tensors("samples/T0.70")
    decoded = tf.io.decode_png(tf.make_ndarray(image.tensor_proto)[2]).numpy()
    assert decoded.shape[0] >= grid.shape[0]  # upscaled for visibility, never smaller
    (eval_event,) = _accumulator(tmp_path / "eval").Tensors("bits_per_dim")
    assert tf.make_ndarray(eval_event.tensor_proto) == pytest.approx(3.25)
    assert paths == [str(tmp_path / "samples" / "step00000007_samples_T0.70.png")]


def test_disabled_writers_write_nothing(tmp_path):
    writers = summaries.RunWriters(str(tmp_path), enabled=False)
    writers.scalars({"a": 1.0}, step=1)
    assert writers.grids({"x": summaries.image_grid(_images(1))}, step=1) == []
    writers.close()
    assert list(tmp_path.iterdir()) == []
