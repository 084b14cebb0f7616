"""Training Glow: the distributed step, the loop, evaluation and restoring a run.

Public entry points (:func:`build_model` and :func:`restore_for_inference` live in
:mod:`glow_tf.inference` and are re-exported here):

* :func:`build_model` -- a ``Glow`` from a resolved config.
* :class:`Trainer` -- strategy, optimizer, checkpoints and summaries of one run;
  ``Trainer.train_step`` is the compiled step (one ``tf.function`` over a distributed
  batch) and ``Trainer.train()`` the loop around it.
* :func:`evaluate_checkpoint` -- test bits/dim over the whole test split (eval mode).
* :func:`restore_for_inference` -- ``(model, config)`` from a workdir, EMA weights
  swapped in when the run kept them (used by export and sampling tools).

Randomness is stateless: the dequantisation noise of step ``s`` on replica ``r`` is a
function of ``(seed, s, r)`` and batch ``k`` of the data pipeline a function of
``(seed, k)``. The checkpointed step therefore restores the RNG and the data position
along with model, optimizer and EMA, and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time

import ml_collections
import tensorflow as tf
from absl import logging

from glow_tf import checkpointing, config_lib, data, distribute, optim, summaries, workdirs
from glow_tf.evaluation import Evaluator
from glow_tf.inference import build_model, restore_for_inference
from glow_tf.model import Glow

__all__ = [
    "build_model",
    "build_run_state",
    "RunState",
    "Trainer",
    "TrainResult",
    "NonFiniteLossError",
    "evaluate_checkpoint",
    "restore_for_inference",
]

_INIT_SEED_OFFSET = 1  # data-dependent init batch and its noise use seed + 1 (not a training batch)


class NonFiniteLossError(RuntimeError):
    """Raised when ``train.max_nonfinite_steps`` updates in a row had a non-finite loss or gradient."""


@dataclasses.dataclass
class TrainResult:
    """What :meth:`Trainer.train` did: the final step, and the signal that stopped it early (if any)."""

    step: int
    interrupted_by: int | None = None
    last_eval_bits_per_dim: float | None = None
    overflow_steps: int = 0  # float16 steps skipped for a gradient overflow (the loss scale backed off)


@dataclasses.dataclass
class RunState:
    """Everything a training checkpoint holds besides the model's own variables.

    ``checkpoint`` is the ``tf.train.Checkpoint`` of a run: ``model``, ``optimizer``
    (Adamax slots created up front), ``step``, ``best`` (lowest eval bits/dim),
    ``ema`` when ``optim.ema_decay > 0`` and ``loss_scale`` for float16 networks.
    """

    model: Glow
    variables: list
    optimizer: object
    ema: optim.ExponentialMovingAverage | None
    step: tf.Variable
    best_bits_per_dim: tf.Variable
    checkpoint: tf.train.Checkpoint
    loss_scale: optim.DynamicLossScale | None = None


def build_run_state(
    config: ml_collections.ConfigDict,
    model: Glow,
    global_batch: int,
    strategy: tf.distribute.Strategy | None = None,
) -> RunState:
    """The optimizer, EMA, step and best-value variables of a run around ``model``, and their checkpoint.

    The Trainer and tools that write a new run (``glow_tf.convert``) share it, so
    every run's checkpoint has the same structure.
    """
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        variables = model.trainable_variables
        optimizer = optim.make_optimizer(config.optim, global_batch)
        optim.create_slots(optimizer, variables)
        ema = optim.ExponentialMovingAverage(variables, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        best = tf.Variable(float("inf"), trainable=False, name="best_bits_per_dim")
        loss_scale = optim.DynamicLossScale() if model.compute_dtype == tf.float16 else None
    parts = dict(model=model, optimizer=optimizer, step=step, best=best)
    if ema is not None:
        parts["ema"] = ema
    if loss_scale is not None:
        parts["loss_scale"] = loss_scale
    checkpoint = tf.train.Checkpoint(**parts)
    return RunState(model, list(variables), optimizer, ema, step, best, checkpoint, loss_scale)


def _format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Trainer:
    """One training run in ``workdir``: builds everything, restores the latest checkpoint if any.

    ``Trainer(config, workdir).train()`` runs (or resumes) the whole loop. To time the
    bare step: ``trainer.initialize(); batches = iter(trainer.make_dataset())`` and call
    ``trainer.train_step(next(batches))`` (one trace for every batch).

    A workdir that holds a run is resumed only by a config that agrees with its
    ``config.json`` on the model, the data and the seed (see :mod:`glow_tf.workdirs`);
    fields that may change on resume are logged as "changed on resume". Nothing
    is written to the workdir until the config, the workdir and the checkpoint
    have all been checked and the data opened.

    Args:
      config: a training config (validated here, before anything is built).
      workdir: the run's folder (checkpoints, event files, samples, config.json).
      strategy: a ``tf.distribute`` strategy; default :func:`glow_tf.distribute.make_strategy`.
      start_over: move a run already in ``workdir`` aside (``<workdir>.old-<time>``,
        never deleted) and start a new one there.

    Raises:
      ValueError: for an invalid config (unknown key, batch not divisible by the
        replicas, image size not divisible by ``2**num_levels``, ...).
      workdirs.IncompatibleRunError: the workdir holds a run of another model, data or seed.
      checkpointing.CheckpointError: its checkpoints do not fit the model, or none is readable.
      NotADirectoryError: ``workdir`` is an existing file.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        strategy: tf.distribute.Strategy | None = None,
        start_over: bool = False,
    ):
        config_lib.validate_config(config)
        workdirs.check_workdir(workdir)
        self.strategy = strategy or distribute.make_strategy()
        self.global_batch = config_lib.global_batch_size(config, self.strategy.num_replicas_in_sync)
        self.config = config
        self.workdir = workdir
        self.is_chief = distribute.is_chief(self.strategy)
        self.moved_aside = None
        if start_over:
            if self.is_chief and os.path.isdir(workdir) and os.listdir(workdir):
                self.moved_aside = workdirs.move_aside(workdir)
        else:
            changes = workdirs.check_resume(config, workdir)
            if changes:
                logging.info("Changed on resume: %s", "; ".join(changes))
        self.info = data.dataset_info(config.data)
        self.num_workers = distribute.num_workers(self.strategy)
        self.conditional = bool(config.model.class_conditional)
        with self.strategy.scope():
            self.model = build_model(config, self.info)
            if not config.train.batch_shards:  # auto: never more slices than a replica has images
                per_replica = self.global_batch // self.strategy.num_replicas_in_sync
                self.model.batch_shards = min(self.model.batch_shards, per_replica)
        state = build_run_state(config, self.model, self.global_batch, self.strategy)
        self.variables = state.variables
        # Each flow step's updates, norm and averages as one traced call (a far smaller graph at paper depth).
        self._update_groups = optim.update_groups(self.variables, self.model.step_variables(), self.strategy)
        self.optimizer, self.ema, self.step = state.optimizer, state.ema, state.step
        self.best_bits_per_dim, self.checkpoint = state.best_bits_per_dim, state.checkpoint
        self.loss_scale = state.loss_scale
        self.schedule = self.optimizer.learning_rate
        self.checkpoints = checkpointing.CheckpointSet(
            workdir,
            self.checkpoint,
            list(self.model.variables) + (self.ema.averages if self.ema is not None else []),
            max_to_keep=config.train.keep_checkpoints,
            is_chief=self.is_chief,
            worker_index=distribute.worker_index(self.strategy),
        )
        self.restored_from = None
        if not start_over:
            what = f"the model this config describes (the run's config.json: {os.path.join(workdir, 'config.json')})"
            self.restored_from = self.checkpoints.restore_latest(what)
            if self.restored_from is None and workdirs.holds_run(workdir):
                raise checkpointing.CheckpointError(
                    f"{workdir} holds best/ checkpoints but no checkpoints/ckpt-N to resume from; nothing was "
                    "changed. Train in a new --workdir, or pass --start_over to move this run aside."
                )
        self.evaluator = Evaluator(self.model, config, self.strategy, ema=self.ema)
        spec = self.make_dataset(0).element_spec
        self.writers = summaries.RunWriters(workdir, enabled=self.is_chief)  # the first files written
        # One trace for every batch (fixed signature); autograph off: the step has no tensor-dependent
        # Python control flow (a skipped update is computed, not branched: optim.apply_adamax), and tracing is
        # much faster without it.
        jit = bool(config.train.jit_compile)
        self.model.step_functions = not jit  # XLA compiles the whole step; nested functions would recompile
        self._local_step = (
            tf.function(self._local_loss_and_grads, jit_compile=True, autograph=False)
            if jit
            else self._local_loss_and_grads
        )
        self.train_step = tf.function(self._train_step, input_signature=[spec], autograph=False)
        self.compute_gradients = tf.function(self._compute_gradients, autograph=False)
        self._any_worker_stop = tf.function(self._reduce_stop_flag, autograph=False)
        self.eval_history: list[dict] = []  # {"step", "bits_per_dim", "seconds" since train() began} per eval
        self._train_started = time.perf_counter()

    # ------------------------------------------------------------------ data
    def make_dataset(self, start_step: int | None = None) -> tf.distribute.DistributedDataset:
        """The distributed training batches ``(uint8 images, int32 labels)`` from ``start_step`` (default: now)."""
        start = int(self.step.numpy()) if start_step is None else int(start_step)

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            # One pipeline feeds num_replicas_in_sync / num_input_pipelines replicas, one batch each per step.
            per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
            return data.make_train_dataset(
                self.config.data,
                ctx.get_per_replica_batch_size(self.global_batch),
                self.config.seed,
                start_step=start * per_pipeline,
                input_context=ctx,
            )

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def initialize(self) -> bool:
        """Data-dependent init on ``train.n_init`` images before step 0 (skipped when restored).

        Every worker loads the same images and noise, and the init runs in
        cross-replica context, so every replica gets identical variables.

        Returns:
          True if the init ran.
        """
        if self.model.initialized:
            return False
        seed = self.config.seed + _INIT_SEED_OFFSET
        images, labels = next(iter(data.make_train_dataset(self.config.data, self.config.train.n_init, seed)))
        x = data.model_inputs(images, self.config.data.n_bits, seed, 0)
        with self.strategy.scope():
            done = self.model.initialize(x, labels if self.conditional else None)
            if self.ema is not None:
                self.ema.reset()
        logging.info("Data-dependent init on %d images.", int(images.shape[0]))
        return done

    # ------------------------------------------------------------------ step
    def _local_loss_and_grads(self, x: tf.Tensor, labels: tf.Tensor | None):
        """This replica's share of the averaged loss and bits/dim, and its gradients (before the all-reduce).

        With float16 networks the loss is scaled for differentiation and the
        gradients unscaled (:class:`optim.DynamicLossScale`). Compiled with XLA under
        ``train.jit_compile``.
        """
        with tf.GradientTape() as tape:
            out = self.model.objective(x, labels)
            loss = tf.nn.compute_average_loss(out["loss"], global_batch_size=self.global_batch)
            target = self.loss_scale.scaled(loss) if self.loss_scale is not None else loss
        grads = tape.gradient(target, self.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        if self.loss_scale is not None:
            grads = self.loss_scale.unscaled(grads)
        bpd = tf.nn.compute_average_loss(out["bits_per_dim"], global_batch_size=self.global_batch)
        return loss, bpd, grads

    def _loss_and_grads(self, x: tf.Tensor, labels: tf.Tensor | None):
        """Replica context: globally averaged loss, bits/dim and gradients (all-reduced, so identical everywhere)."""
        loss, bpd, grads = self._local_step(x, labels)
        if self.strategy.num_replicas_in_sync == 1:  # nothing to reduce (and a thousand fewer ops at paper depth)
            return loss, bpd, grads
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, (loss, bpd, grads))

    def _compute_gradients(self, x, labels=None):
        """Distributed float inputs -> (loss, bits/dim, grads), reduced over replicas (for tests and tools)."""
        loss, bpd, grads = self.strategy.run(self._loss_and_grads, args=(x, labels))
        first = lambda v: self.strategy.experimental_local_results(v)[0]
        return first(loss), first(bpd), [first(g) for g in grads]

    def _train_step(self, batch):
        """One update on a distributed batch; skipped (weights, optimizer and EMA untouched) if not finite."""
        images, labels = batch
        step = self.step.read_value()
        n_bits, seed, clip = self.config.data.n_bits, self.config.seed, self.config.optim.grad_clip_norm

        def replica_fn(images, labels):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            x = data.model_inputs(images, n_bits, seed, step, replica)
            loss, bpd, grads = self._loss_and_grads(x, labels if self.conditional else None)
            grads, norm, finite = optim.guard_gradients(loss, grads, clip, groups=self._update_groups)
            # With loss scaling, a finite loss with non-finite gradients is an overflow: skipped, not a failure.
            overflow = tf.logical_and(tf.math.is_finite(loss), tf.logical_not(finite))
            if self.loss_scale is None:
                overflow = tf.constant(False)
            return grads, dict(loss=loss, bits_per_dim=bpd, grad_norm=norm, finite=finite, overflow=overflow)

        grads, metrics = self.strategy.run(replica_fn, args=(images, labels))
        metrics = {k: self.strategy.experimental_local_results(v)[0] for k, v in metrics.items()}
        metrics["learning_rate"] = self.schedule(self.optimizer.iterations)

        optim.apply_adamax(
            self.optimizer, grads, self.variables, metrics["finite"], self.strategy, groups=self._update_groups
        )
        if self.ema is not None:
            self.ema.update(metrics["finite"], groups=self._update_groups)
        if self.loss_scale is not None:
            self.loss_scale.update(metrics["finite"])
            metrics["loss_scale"] = self.loss_scale.scale.read_value()
        self.step.assign_add(1)
        return metrics

    def _reduce_stop_flag(self, flag):
        value = self.strategy.run(lambda: tf.cast(flag, tf.int32))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) > 0

    # ------------------------------------------------------------ utilities
    def save(self) -> str | None:
        """Saves the latest checkpoint at the current step (all workers must call it); returns its path."""
        return self.checkpoints.save(int(self.step.numpy()))

    def evaluate(self, max_examples: int | None = None) -> float:
        """Test bits/dim (EMA weights when kept) over ``max_examples`` (default ``eval.max_examples``; 0 = all)."""
        limit = self.config.eval.max_examples if max_examples is None else max_examples
        return self.evaluator.bits_per_dim(limit)[0]

    def write_samples(self, step: int) -> list[str]:
        """Sample grids at every temperature and a reconstruction grid: TensorBoard + PNG (chief only)."""
        if not self.is_chief:
            return []
        return self.writers.grids(self.evaluator.grids(), step)

    def _evaluate_and_keep_best(self, step: int) -> float:
        bpd = self.evaluate()
        seconds = time.perf_counter() - self._train_started
        self.eval_history.append({"step": step, "bits_per_dim": bpd, "seconds": seconds})
        self.writers.scalars({"bits_per_dim": bpd}, step, split="eval")
        if bpd < float(self.best_bits_per_dim.numpy()):
            self.best_bits_per_dim.assign(bpd)
            self.checkpoints.save_best(step, bpd)
        logging.info("eval  step %d  test bits/dim %.4f  (best %.4f)", step, bpd, float(self.best_bits_per_dim.numpy()))
        return bpd

    def _stop_requested(self, watcher: checkpointing.PreemptionWatcher) -> bool:
        if self.num_workers > 1:  # every worker must stop at the same step
            return bool(self._any_worker_stop(tf.constant(watcher.requested)))
        return watcher.requested

    # ------------------------------------------------------------------ loop
    def train(self, num_steps: int | None = None) -> TrainResult:
        """Trains until step ``num_steps`` (default ``train.num_steps``), resuming where the run stopped.

        Logs a progress line every ``log_every`` steps, checkpoints every
        ``checkpoint_every`` steps, at the end and on SIGTERM/SIGINT, evaluates
        (keeping the best checkpoint) and writes sample grids on their cadences.

        Raises:
          NonFiniteLossError: after ``max_nonfinite_steps`` skipped updates in a row.
        """
        t = self.config.train
        target = t.num_steps if num_steps is None else int(num_steps)
        self._train_started = time.perf_counter()
        if self.is_chief:  # before the first checkpoint: a checkpoint never exists without its config
            config_lib.save_config(self.config, self.workdir)
        if self.initialize():
            self.save()
        step = int(self.step.numpy())
        if step >= target:
            logging.info("The run in %s is already at step %d >= %d: nothing to train.", self.workdir, step, target)
            return TrainResult(step)
        if self.is_chief:
            self.writers.text("config", "```\n" + config_lib.config_to_json(self.config) + "\n```", step)
        logging.info(
            "Training %s from step %d to %d, global batch %d (%s; %d batch shard(s) per replica, %s networks).",
            self.info.name,
            step,
            target,
            self.global_batch,
            distribute.describe(self.strategy),
            self.model.batch_shards,
            self.model.compute_dtype.name,
        )
        iterator = iter(self.make_dataset(step))
        result = TrainResult(step)
        nonfinite_in_row, overflows, sums, count, evaluated, sampled = 0, 0, {}, 0, -1, -1
        window_seconds, window_step = 0.0, step  # time spent in training steps only (not eval, samples, saves)
        with checkpointing.PreemptionWatcher() as watcher:
            first = True
            while step < target:
                start = time.perf_counter()
                values = {k: float(v) for k, v in self.train_step(next(iterator)).items()}
                if first:  # tracing + the first step: reported once, kept out of images/s and the ETA
                    logging.info("First step (graph tracing included) took %.1f s.", time.perf_counter() - start)
                    first, window_step = False, step + 1
                else:
                    window_seconds += time.perf_counter() - start
                step += 1
                overflow = values.pop("overflow")
                if values.pop("finite"):
                    nonfinite_in_row = 0
                    for k, v in values.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                elif overflow:  # float16 gradients overflowed: the loss scale backs off, nothing failed
                    overflows += 1
                    logging.info(
                        "step %d: float16 gradient overflow; update skipped, loss scale now %g.",
                        step,
                        values["loss_scale"],
                    )
                else:
                    nonfinite_in_row += 1
                    logging.warning(
                        "step %d: non-finite loss %s or gradient norm %s; update skipped (%d in a row).",
                        step,
                        values["loss"],
                        values["grad_norm"],
                        nonfinite_in_row,
                    )
                    if nonfinite_in_row >= t.max_nonfinite_steps:
                        raise NonFiniteLossError(
                            f"{nonfinite_in_row} non-finite updates in a row up to step {step}; stopping. The last "
                            f"good checkpoint is {self.checkpoints.latest.latest_checkpoint}. Lower "
                            "config.optim.learning_rate, raise config.optim.warmup_images or set "
                            "config.optim.grad_clip_norm."
                        )
                if step % t.log_every == 0 or step == target:
                    self._log_progress(step, target, step - window_step, sums, count, window_seconds)
                    sums, count, window_seconds, window_step = {}, 0, 0.0, step
                if t.eval_every and step % t.eval_every == 0:
                    result.last_eval_bits_per_dim, evaluated = self._evaluate_and_keep_best(step), step
                if t.sample_every and step % t.sample_every == 0:
                    self.write_samples(step)
                    sampled = step
                if step % t.checkpoint_every == 0:  # after eval, so the checkpoint holds the best value so far
                    self.save()
                if self._stop_requested(watcher):
                    result.interrupted_by = watcher.signum or -1
                    break
        if result.interrupted_by is None:
            if evaluated != step:
                result.last_eval_bits_per_dim = self._evaluate_and_keep_best(step)
            if sampled != step:
                self.write_samples(step)
        self.save()
        if result.interrupted_by is not None:
            logging.warning("Stopped by a signal at step %d; checkpoint saved. Run again to resume.", step)
        result.step, result.overflow_steps = step, overflows
        return result

    def _log_progress(self, step: int, target: int, steps: int, sums: dict, count: int, elapsed: float) -> None:
        """One console line and the train scalars; ``elapsed`` is the window's time in training steps."""
        means = {k: v / count for k, v in sums.items()} if count else {}
        line = f"step {step}/{target}"
        if means:
            line += f"  bits/dim {means['bits_per_dim']:.4f}"
            if self.conditional:
                line += f"  loss {means['loss']:.4f}"
            line += f"  lr {means['learning_rate']:.2e}  grad_norm {means['grad_norm']:.3g}"
        else:
            line += "  (every update in this window was skipped)"
        scalars = dict(means)
        if steps > 0 and elapsed > 0:
            rate = steps * self.global_batch / elapsed
            eta = (target - step) * elapsed / steps
            line += f"  {rate:.1f} images/s  ETA {_format_seconds(eta)}"
            scalars["images_per_sec"] = rate
        logging.info("%s", line)
        self.writers.scalars(scalars, step)


def evaluate_checkpoint(
    workdir: str, checkpoint: str = "latest", strategy: tf.distribute.Strategy | None = None
) -> dict:
    """Test bits/dim over the whole test split from a run's ``latest`` or ``best`` checkpoint.

    Writes the value to ``workdir/eval`` (tag ``test_bits_per_dim``, at the checkpoint's step).

    Returns:
      ``{"bits_per_dim", "num_examples", "step", "checkpoint"}``.

    Raises:
      FileNotFoundError: when the workdir or the checkpoint does not exist.
      ValueError: for a ``checkpoint`` other than ``'latest'`` or ``'best'``.
    """
    strategy = strategy or distribute.make_strategy()
    model, config, info = restore_for_inference(workdir, checkpoint, strategy=strategy, with_info=True)
    evaluator = Evaluator(model, config, strategy, ema=None)
    bpd, n = evaluator.bits_per_dim(0)
    result = {"bits_per_dim": bpd, "num_examples": n, "step": info["step"], "checkpoint": info["path"]}
    writers = summaries.RunWriters(workdir, enabled=distribute.is_chief(strategy))
    writers.scalars({"test_bits_per_dim": bpd}, info["step"], split="eval")
    writers.close()
    logging.info("Test bits/dim %.4f over %d images (%s).", bpd, n, info["path"])
    return result
