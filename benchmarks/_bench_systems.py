"""One measurement function per benchmarked system (run inside a child process).

Every ``measure_*`` function takes a :class:`BenchConfig` and :class:`RunOptions` and
returns a flat dict of measurements (see :func:`_measure`). Each system only has to
say how to build itself, how to initialise, and provide three callables: a training
step ``train(x) -> loss``, ``sample() -> images`` and ``evaluate(x) -> log_prob``.
To time another training step (for example ``glow_tf.train_lib.Trainer.train_step``)
add a builder returning a :class:`SystemFns` and register it in :data:`SYSTEMS`.

TensorFlow is imported lazily (inside the functions) so the parent process, which
only orchestrates, never loads it.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import _harness

__all__ = [
    "BenchConfig",
    "RunOptions",
    "SystemFns",
    "System",
    "trainer_config",
    "CONFIGS",
    "SYSTEMS",
    "JIT_SYSTEMS",
    "measure",
    "matmul_gflops",
]


@dataclass(frozen=True)
class BenchConfig:
    """A model size and its default measurement lengths."""

    name: str
    image_shape: tuple[int, int, int] = (32, 32, 3)
    num_levels: int = 3
    num_steps: int = 8
    hidden_width: int = 128
    batch_size: int = 16
    timed_steps: int = 20
    warmup_steps: int = 3
    timed_calls: int = 10  # sampling / eval calls timed
    temperature: float = 0.7
    num_samples: int = 16
    learning_rate: float = 1e-3  # Adamax, no warm-up (both systems)


CONFIGS: dict[str, BenchConfig] = {
    "bench-32": BenchConfig("bench-32"),
    # Without warm-up, Adamax at 1e-3 diverges to NaN within ~4 steps at width 512 (both systems,
    # the zero-initialised last layers jump by ~fan_in * lr): time finite steps at a lower rate.
    "paper-width": BenchConfig(
        "paper-width",
        num_steps=32,
        hidden_width=512,
        timed_steps=4,
        warmup_steps=1,
        timed_calls=3,
        learning_rate=1e-4,
    ),
}


@dataclass(frozen=True)
class RunOptions:
    """Per-run settings shared by every system."""

    threads: int = 2
    steps: int | None = None  # overrides BenchConfig.timed_steps
    seed: int = 0


@dataclass
class SystemFns:
    """What a system provides to the generic timing loop."""

    train: Callable[[Any], Any]
    sample: Callable[[], Any]
    evaluate: Callable[[Any], Any]
    loss_to_bits_per_dim: Callable[[float], float]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers
def _import_tf(threads: int, one_thread_per_op: bool = False, tf_grappler: bool = False):
    """Imports TensorFlow quietly and sets its thread pools.

    By default both pools get ``threads`` (TensorFlow's usual set-up, pinned).
    ``one_thread_per_op`` applies glow_tf's CPU set-up instead
    (:func:`glow_tf.parallelism.configure_cpu_threads`: intra-op 1, inter-op ``threads``, and its
    lighter graph optimiser unless ``tf_grappler``).
    TensorFlow's environment is ``_harness``'s (quiet, no Keras 3), set when this module is imported.
    """
    import tensorflow as tf

    if one_thread_per_op:
        from glow_tf import parallelism

        parallelism.configure_cpu_threads(threads, graph_optimizer=not tf_grappler)
    else:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def _thread_info(tf, batch_shards: int) -> dict[str, Any]:
    return {
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "batch_shards": batch_shards,
    }


def _images(config: BenchConfig, seed: int):
    """Uniform "images" in [-0.5, 0.5): the same batch for every system."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 0.5, size=(config.batch_size, *config.image_shape)).astype(np.float32)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Runs ``fn`` and pulls its result to host memory; returns ``(seconds, numpy result)``."""
    start = time.perf_counter()
    out = fn()
    out = out.numpy() if hasattr(out, "numpy") else out
    return time.perf_counter() - start, out


def _median_rate(times: list[float], items: int) -> dict[str, float]:
    """Images/s from the median of per-call times, plus spread."""
    med = statistics.median(times)
    return {
        "images_per_s": items / med,
        "median_s": med,
        "min_s": min(times),
        "max_s": max(times),
        "calls": len(times),
    }


def _bits_per_dim_fn(config: BenchConfig, n_bits: int = 8) -> Callable[[float], float]:
    """Mean negative log-likelihood (nats, model space) -> bits/dim of 8-bit data."""
    dims = math.prod(config.image_shape)
    return lambda nll: nll / (dims * math.log(2.0)) + n_bits


# --------------------------------------------------------------------------- systems
def build_glow_tf(
    config: BenchConfig, options: RunOptions, jit: bool, images, compute_dtype: str = "float32"
) -> tuple[SystemFns, float]:
    """glow_tf.Glow with the fused ``objective`` loss and legacy Adamax in one tf.function.

    The batch is sharded as the runtime's threads suit (``parallelism.auto_batch_shards``).
    Returns the system's callables and the seconds spent in ``model.initialize``.
    """
    import tensorflow as tf
    import tf_keras

    from glow_tf import Glow, parallelism

    model = Glow(
        config.image_shape,
        num_levels=config.num_levels,
        num_steps=config.num_steps,
        hidden_width=config.hidden_width,
        coupling="affine",
        permutation="invconv",
        lu_decomposed=True,
        learn_top=True,
        seed=options.seed,
        compute_dtype=compute_dtype,
        batch_shards=parallelism.auto_batch_shards(),
    )
    init_start = time.perf_counter()
    model.initialize(tf.constant(images))
    init_s = time.perf_counter() - init_start
    optimizer = tf_keras.optimizers.legacy.Adamax(config.learning_rate)
    variables = model.trainable_variables
    spec = [tf.TensorSpec([None, *config.image_shape], tf.float32)]

    @tf.function(input_signature=spec, jit_compile=jit)
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.objective(x)["loss"])
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(jit_compile=jit)
    def sample():
        return model.sample(config.num_samples, config.temperature)

    @tf.function(input_signature=spec, jit_compile=jit)
    def evaluate(x):
        return model.log_prob(x)

    info = {
        "train_loss": f"mean(model.objective(x)['loss']) (bits/dim), legacy Adamax({config.learning_rate:g})",
        "input_signature": "[None, H, W, C]",
        "num_trainable_variables": len(variables),
        "num_parameters": int(sum(v.shape.num_elements() for v in variables)),
        "compute_dtype": compute_dtype,
        **_thread_info(tf, model.batch_shards),
    }
    return SystemFns(train, sample, evaluate, lambda bpd: bpd, info), init_s


def build_tfb_glow(config: BenchConfig, options: RunOptions, jit: bool, images) -> tuple[SystemFns, float]:
    """``tfp.bijectors.Glow`` at the same size, trained as a TransformedDistribution.

    Coupling networks are ``GlowDefaultNetwork(num_hidden=hidden_width)`` (affine),
    exits ``GlowDefaultExitNetwork`` (learned split prior, zero-initialised). It has no
    learned top prior (its top is a fixed N(0, 1)). Its ActNorm initialises lazily on
    the first batch it sees, so an eager ``log_prob`` on data runs first (reported as
    the init time). Its squeeze fails with an unknown batch size, so the input
    signature has a fixed batch.
    """
    import functools

    import tensorflow as tf
    import tensorflow_probability as tfp
    import tf_keras

    tfb, tfd = tfp.bijectors, tfp.distributions
    tf.random.set_seed(options.seed)
    glow = tfb.Glow(
        output_shape=config.image_shape,
        num_glow_blocks=config.num_levels,
        num_steps_per_block=config.num_steps,
        coupling_bijector_fn=functools.partial(tfb.GlowDefaultNetwork, num_hidden=config.hidden_width),
        exit_bijector_fn=tfb.GlowDefaultExitNetwork,
        seed=options.seed,
    )
    latent_size = int(glow.inverse_event_shape(config.image_shape)[0])
    dist = tfd.TransformedDistribution(tfd.Sample(tfd.Normal(0.0, 1.0), [latent_size]), glow)
    init_start = time.perf_counter()
    dist.log_prob(tf.constant(images)).numpy()  # lazy ActNorm init on data, not on noise
    init_s = time.perf_counter() - init_start
    optimizer = tf_keras.optimizers.legacy.Adamax(config.learning_rate)
    variables = glow.trainable_variables
    spec = [tf.TensorSpec([config.batch_size, *config.image_shape], tf.float32)]

    @tf.function(input_signature=spec, jit_compile=jit)
    def train(x):
        with tf.GradientTape() as tape:
            loss = -tf.reduce_mean(dist.log_prob(x))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function(jit_compile=jit)
    def sample():
        z = config.temperature * tf.random.normal([config.num_samples, latent_size])
        return glow.forward(z)

    @tf.function(input_signature=spec, jit_compile=jit)
    def evaluate(x):
        return dist.log_prob(x)

    info = {
        "train_loss": f"-mean(TransformedDistribution.log_prob(x)) (nats), legacy Adamax({config.learning_rate:g})",
        "input_signature": f"[{config.batch_size}, H, W, C] (fixed batch: tfb.Glow fails with None)",
        "num_trainable_variables": len(variables),
        "num_parameters": int(sum(v.shape.num_elements() for v in variables)),
        "differences": "no learned top prior; no actnorm inside coupling networks; he_normal init",
    }
    return SystemFns(train, sample, evaluate, _bits_per_dim_fn(config), info), init_s


def trainer_config(
    config: BenchConfig,
    options: RunOptions,
    compute_dtype: str = "float32",
    batch_shards: int = 0,
    stack_variables: bool = True,
):
    """The training config of :func:`build_glow_tf_trainer`: the benchmark's model size, batch and seed on digits.

    ``config_lib.default_config()`` with digits resized to the image shape, affine coupling,
    LU 1x1 convolutions, a learned top prior, no EMA; ``stack_variables=False`` keeps one
    variable per weight of every step (the layout before ``glow_tf.stacking``).
    """
    from glow_tf import config_lib

    height, width, channels = config.image_shape
    if height != width:
        raise NotImplementedError("glow_tf_trainer needs square images.")
    cfg = config_lib.default_config()
    cfg.seed = options.seed
    cfg.data.name, cfg.data.image_size, cfg.data.channels = "digits", height, channels
    cfg.model.num_levels, cfg.model.num_steps = config.num_levels, config.num_steps
    cfg.model.hidden_width, cfg.model.coupling = config.hidden_width, "affine"
    cfg.model.permutation, cfg.model.lu_decomposed, cfg.model.learn_top = "invconv", True, True
    cfg.train.batch_size = cfg.train.n_init = config.batch_size
    cfg.optim.ema_decay = 0.0
    cfg.model.compute_dtype, cfg.train.batch_shards = compute_dtype, batch_shards
    cfg.model.stack_variables = stack_variables
    return cfg


def build_glow_tf_trainer(
    config: BenchConfig,
    options: RunOptions,
    jit: bool,
    images,
    compute_dtype: str = "float32",
    batch_shards: int = 0,
    stack_variables: bool = True,
) -> tuple[SystemFns, float]:
    """glow_tf through the public ``glow_tf.train_lib.Trainer(...).train_step``.

    The config is ``config_lib.default_config()`` with the benchmark's model size,
    batch and seed; data are the offline scikit-learn digits resized to the image
    shape (one distributed batch drawn once, so the input pipeline is not timed).
    The step includes what the public step does: dequantisation noise, the
    finite-gradient guard, the warm-up schedule. ``Trainer`` construction (strategy,
    dataset, checkpoint manager, summary writers) counts as construction; its
    ``initialize()`` (data-dependent init) is reported as the init time.
    ``jit`` is not supported (the public step is not compiled with XLA).
    ``compute_dtype``, ``batch_shards`` and ``stack_variables`` set ``config.model.compute_dtype``,
    ``config.train.batch_shards`` (0: auto, as ``train.py``) and ``config.model.stack_variables``.
    """
    import tempfile

    import tensorflow as tf

    from glow_tf import train_lib

    if jit:
        raise NotImplementedError("glow_tf_trainer has no XLA variant.")
    cfg = trainer_config(config, options, compute_dtype, batch_shards, stack_variables)
    trainer = train_lib.Trainer(cfg, tempfile.mkdtemp(prefix="bench_trainer_"))
    init_start = time.perf_counter()
    trainer.initialize()
    init_s = time.perf_counter() - init_start
    batch = next(iter(trainer.make_dataset(0)))
    model = trainer.model
    spec = [tf.TensorSpec([None, *config.image_shape], tf.float32)]
    sample = tf.function(lambda: model.sample(config.num_samples, config.temperature))
    evaluate = tf.function(model.log_prob, input_signature=spec)
    info = {
        "train_loss": "Trainer.train_step (bits/dim; legacy Adamax with linear warm-up, finite guard)",
        "input_signature": "the Trainer's distributed dataset element_spec",
        "num_trainable_variables": len(trainer.variables),
        "num_parameters": int(sum(v.shape.num_elements() for v in trainer.variables)),
        "data": "sklearn digits resized to the image shape (one batch, reused)",
        "compute_dtype": compute_dtype,
        **_thread_info(tf, model.batch_shards),
    }
    train = lambda _x: trainer.train_step(batch)["loss"]  # the batch is fixed: no input pipeline in the timing
    return SystemFns(train, sample, evaluate, lambda bpd: bpd, info), init_s


def build_torch_glow(*args):
    """PyTorch Glow with the layer structure of y0ast/Glow-PyTorch (``_bench_torch``; imports torch lazily)."""
    from _bench_torch import build_torch_glow as build

    return build(*args)


Builder = Callable[[BenchConfig, RunOptions, bool, Any], tuple[SystemFns, float]]


@dataclass(frozen=True)
class System:
    """A benchmarked system: its builder, XLA or not, and glow_tf's CPU thread set-up or TensorFlow's."""

    build: Builder
    jit: bool = False
    one_thread_per_op: bool = False
    tf_grappler: bool = False


SYSTEMS: dict[str, System] = {
    # glow_tf as users run it: glow_tf.parallelism's one thread per op and one batch shard per core
    "glow_tf": System(build_glow_tf, one_thread_per_op=True),
    "glow_tf_trainer": System(build_glow_tf_trainer, one_thread_per_op=True),
    "glow_tf_trainer_bf16": System(
        functools.partial(build_glow_tf_trainer, compute_dtype="bfloat16"), one_thread_per_op=True
    ),
    # one variable per weight of every flow step (the layout before glow_tf.stacking, and of older runs)
    "glow_tf_trainer_per_step": System(
        functools.partial(build_glow_tf_trainer, stack_variables=False), one_thread_per_op=True
    ),
    # TensorFlow's default graph optimiser (every grappler pass): what parallelism.CPU_GRAPPLER_OPTIONS saves
    "glow_tf_trainer_tf_grappler": System(build_glow_tf_trainer, one_thread_per_op=True, tf_grappler=True),
    # TensorFlow's default threading (every op over every core), no shards: what glow_tf.parallelism adds
    "glow_tf_trainer_tf_threads": System(functools.partial(build_glow_tf_trainer, batch_shards=1)),
    "glow_tf_xla": System(build_glow_tf, jit=True, one_thread_per_op=True),
    "tfb_glow": System(build_tfb_glow),
    "tfb_glow_xla": System(build_tfb_glow, jit=True),
    "torch_glow": System(build_torch_glow),
}
JIT_SYSTEMS = ("glow_tf_xla", "tfb_glow_xla")


# --------------------------------------------------------------------------- timing
def _time_calls(fn: Callable[[], Any], warmup: int, timed: int) -> tuple[float, list[float], Any]:
    """First call (tracing included), ``warmup`` untimed calls, then ``timed`` timed calls."""
    first_s, out = _timed(fn)
    for _ in range(warmup):
        _, out = _timed(fn)
    times = []
    for _ in range(timed):
        seconds, out = _timed(fn)
        times.append(seconds)
    return first_s, times, out


class _Phase:
    """One timed callable (train, sample or eval): first call, then per-call times or an error."""

    def __init__(self, name: str, fn: Callable[[], Any], items: int):
        self.name, self.fn, self.items = name, fn, items
        self.first_s: float | None = None
        self.times: list[float] = []
        self.first_out = self.out = None
        self.error: str | None = None

    def call(self, timed: bool, catch: bool) -> None:
        """One call; the first ever call is recorded as ``first_s``. Errors are kept if ``catch``."""
        if self.error is not None:
            return
        try:
            seconds, self.out = _timed(self.fn)
        except Exception as err:  # noqa: BLE001 - report it, keep the other measurements
            if not catch:
                raise
            self.error = f"{type(err).__name__}: {str(err)[:300]}"
            return
        if self.first_s is None:
            self.first_s, self.first_out = seconds, self.out
        elif timed:
            self.times.append(seconds)

    def report(self) -> dict[str, Any]:
        """``<name>`` rates, ``<name>_first_call_s`` and ``<name>_finite`` (or ``<name>_error``)."""
        import numpy as np

        if self.error is not None:
            return {f"{self.name}_error": self.error}
        return {
            f"{self.name}_first_call_s": self.first_s,
            self.name: _median_rate(self.times, self.items),
            f"{self.name}_finite": bool(np.all(np.isfinite(self.out))),
        }


def _spread(count: int, rounds: int) -> set[int]:
    """``count`` round indices spread evenly over ``range(rounds)``."""
    return {k * rounds // count for k in range(count)}


def _measure_phases(fns: SystemFns, x, config: BenchConfig, steps: int) -> dict[str, Any]:
    """First training step, warm-up, then train / sample / eval calls interleaved round by round.

    Interleaving makes a burst of load from other processes hit all three phases
    alike instead of whichever phase happened to be running.
    """
    train = _Phase("train", lambda: fns.train(x), config.batch_size)
    sample = _Phase("sample", fns.sample, config.num_samples)
    evaluate = _Phase("eval", lambda: fns.evaluate(x), config.batch_size)
    train.call(timed=False, catch=False)  # the first step: tracing included
    for _ in range(config.warmup_steps):
        train.call(timed=False, catch=False)
    rss_after_train = _harness.peak_rss_mib()
    for phase in (sample, evaluate):
        for _ in range(2):  # trace, then one warm-up call
            phase.call(timed=False, catch=True)
    calls = _spread(config.timed_calls, steps) if steps >= config.timed_calls else set(range(config.timed_calls))
    for i in range(max(steps, config.timed_calls)):
        if i < steps:
            train.call(timed=True, catch=False)
        if i in calls:
            sample.call(timed=True, catch=True)
            evaluate.call(timed=True, catch=True)
    loss0, loss = float(train.first_out), float(train.out)
    return {
        "first_step_s": train.first_s,
        "first_loss_bits_per_dim": fns.loss_to_bits_per_dim(loss0),
        "last_loss_bits_per_dim": fns.loss_to_bits_per_dim(loss),
        "loss_finite": math.isfinite(loss),
        "peak_rss_after_train_warmup_mib": rss_after_train,
        "train": _median_rate(train.times, config.batch_size),
        **sample.report(),
        **evaluate.report(),
    }


def measure(system: str, config: BenchConfig, options: RunOptions) -> dict[str, Any]:
    """Measures one system at one config in this process; returns a JSON-friendly dict."""
    spec = SYSTEMS[system]
    tf = _import_tf(options.threads, spec.one_thread_per_op, spec.tf_grappler)
    builder, jit = spec.build, spec.jit
    images = _images(config, options.seed)
    rss_after_import = _harness.peak_rss_mib()
    result: dict[str, Any] = {"system": system, "config": asdict(config), "jit_compile": jit}
    start = time.perf_counter()
    fns, init_s = builder(config, options, jit, images)
    construct_s = time.perf_counter() - start - init_s
    result.update(_measure_phases(fns, tf.constant(images), config, options.steps or config.timed_steps))
    result.update(
        construct_s=construct_s,
        init_s=init_s,
        time_to_first_step_s=construct_s + result["first_step_s"],
        time_to_first_step_incl_init_s=construct_s + init_s + result["first_step_s"],
        peak_rss_mib=_harness.peak_rss_mib(),
        rss_after_tf_import_mib=rss_after_import,
        info=fns.info,
        tf_version=tf.__version__,
    )
    return result


def matmul_gflops(threads: int, size: int = 2048, calls: int = 10) -> dict[str, Any]:
    """Float32 ``size x size`` matmul throughput: median of ``calls`` timed calls after warm-up."""
    tf = _import_tf(threads)
    a = tf.random.normal([size, size], seed=1)
    b = tf.random.normal([size, size], seed=2)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))  # the sum is O(n^2), the matmul O(n^3)
    _, times, _ = _time_calls(matmul, warmup=2, timed=calls)
    flops = 2.0 * size**3
    med = statistics.median(times)
    return {"size": size, "calls": calls, "gflops_median": flops / med / 1e9, "gflops_best": flops / min(times) / 1e9}
