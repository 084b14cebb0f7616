"""Test bits/dim over a split, sample grids and reconstructions of a (distributed) model.

Evaluation dequantises with stateless noise keyed by ``(seed + 2, batch index,
replica)``, so the same checkpoint gives the same test bits/dim every time.
"""

from __future__ import annotations

import contextlib

import ml_collections
import numpy as np
import tensorflow as tf

from glow_tf import data, optim, summaries
from glow_tf.model import Glow
from glow_tf.quantization import postprocess, preprocess

__all__ = ["Evaluator"]

_EVAL_SEED_OFFSET = 2
_SAMPLE_SEED = 7  # fixed noise: grids of different steps and temperatures show the same latent draw


class Evaluator:
    """Evaluation, sampling and reconstruction for one model under one strategy.

    Args:
      model: the (initialised) Glow.
      config: the run's config (data, eval and sample sections are used).
      strategy: the strategy the model's variables were created under.
      ema: when given, its averaged weights are swapped in for everything here.
    """

    def __init__(
        self,
        model: Glow,
        config: ml_collections.ConfigDict,
        strategy: tf.distribute.Strategy,
        ema: optim.ExponentialMovingAverage | None = None,
    ):
        self.model = model
        self.config = config
        self.strategy = strategy
        self.ema = ema
        self.conditional = bool(model.num_classes)
        replicas = strategy.num_replicas_in_sync
        self.per_replica_batch = max(1, config.eval.batch_size // replicas)
        spec = self._dataset(0).element_spec
        # autograph=False: no Python control flow depends on tensors here, and tracing is much faster.
        self._eval_step = tf.function(
            self._eval_step_fn, input_signature=[spec, tf.TensorSpec([], tf.int64)], autograph=False
        )
        self._sample = tf.function(
            self._sample_fn,
            input_signature=[tf.TensorSpec([], tf.float32), tf.TensorSpec([2], tf.int64)],
            autograph=False,
        )
        self._reconstruct = tf.function(self._reconstruct_fn, autograph=False)

    def _weights(self):
        return self.ema.averaged() if self.ema is not None else contextlib.nullcontext()

    def _dataset(self, max_examples: int) -> tf.distribute.DistributedDataset:
        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            return data.make_eval_dataset(self.config.data, self.per_replica_batch, "test", ctx, max_examples)

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _eval_step_fn(self, batch, index):
        n_bits, seed = self.config.data.n_bits, self.config.seed + _EVAL_SEED_OFFSET

        def replica_fn(images, labels):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            x = data.model_inputs(images, n_bits, seed, index, replica)
            bpd = self.model.objective(x, labels if self.conditional else None)["bits_per_dim"]
            return tf.reduce_sum(tf.cast(bpd, tf.float64)), tf.cast(tf.size(bpd), tf.float64)

        total, count = self.strategy.run(replica_fn, args=batch)
        reduce = lambda v: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
        return reduce(total), reduce(count)

    def bits_per_dim(self, max_examples: int = 0) -> tuple[float, int]:
        """Mean test bits/dim over the first ``max_examples`` test images (0 = the whole split).

        Exactly ``min(max_examples, split size)`` images are scored, whatever the
        number of replicas.

        Returns:
          ``(bits_per_dim, number of images)``.
        """
        total, count = 0.0, 0.0
        with self._weights():
            for index, batch in enumerate(self._dataset(max_examples)):
                t, n = self._eval_step(batch, tf.constant(index, tf.int64))
                total, count = total + float(t), count + float(n)
        if count == 0:
            raise ValueError(f"The test split of dataset {self.config.data.name!r} is empty.")
        return total / count, int(count)

    def _labels(self, n: int):
        return tf.range(n, dtype=tf.int32) % self.model.num_classes if self.conditional else None

    def _sample_fn(self, temperature, seed):
        n = self.config.sample.num_samples
        images = self.model.sample(n, temperature, labels=self._labels(n), seed=seed)
        return postprocess(images, self.model.n_bits)

    def _reconstruct_fn(self, images, labels):
        x = data.deterministic_inputs(images, self.model.n_bits)
        labels = labels if self.conditional else None
        return postprocess(self.model.decode(self.model.encode(x, labels), labels), self.model.n_bits)

    def samples(self, temperature: float) -> np.ndarray:
        """``[num_samples, H, W, C]`` uint8 samples at one temperature (fixed noise)."""
        seed = tf.constant([self.config.seed, _SAMPLE_SEED], tf.int64)
        with self._weights():
            return self._sample(tf.constant(temperature, tf.float32), seed).numpy()

    def reconstructions(self) -> np.ndarray | None:
        """``[2n, H, W, C]``: the first ``n`` test images, then their encode-decode round trips (None if n = 0).

        The originals are shown at the model's ``n_bits`` (lower bits cleared), as the model sees them.
        """
        n = self.config.sample.num_reconstructions
        if n == 0:
            return None
        images, labels = next(iter(data.make_eval_dataset(self.config.data, n, "test")))
        with self._weights():
            back = self._reconstruct(images, labels).numpy()
        originals = postprocess(preprocess(images, self.model.n_bits), self.model.n_bits).numpy()
        return np.concatenate([originals, back], axis=0)

    def grids(self) -> dict[str, np.ndarray]:
        """``name -> [H, W, C]`` uint8 grids: ``samples/T<t>`` per temperature and ``reconstructions``."""
        temps = self.config.sample.temperatures
        grids = {
            name: summaries.image_grid(self.samples(t)) for name, t in zip(summaries.temperature_names(temps), temps)
        }
        pairs = self.reconstructions()
        if pairs is not None:
            grids["reconstructions"] = summaries.image_grid(pairs, rows=2)
        return grids
