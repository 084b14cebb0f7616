"""Step time of the three backprop modes side by side in one process (their ratio to standard backprop).

    python benchmarks/backprop_overhead.py --image_size=64 --steps=32 --rounds=4

``scaling.py --grid=backprop`` measures each mode in its own process, one after the
other, which on a shared machine mixes the modes' cost with the machine's load. Here
one ``Trainer`` per mode (``configs/default.py`` on scikit-learn digits resized to the
image size, L=3, width 128, batch 16, LU, learned priors, set up as ``train.py``) is
built and traced first; then each round times ``--calls`` training steps of every
mode in turn, and prints each mode's seconds per step and its ratio to standard in
that round. Writes ``benchmarks/results/backprop_overhead-<time>.json``.
"""

from __future__ import annotations

import tempfile
import time

import _harness
from absl import flags

flags.DEFINE_integer("image_size", 64, "Image height and width.")
flags.DEFINE_integer("steps", 32, "Flow steps per level (K).")
flags.DEFINE_integer("rounds", 4, "Interleaved rounds.")
flags.DEFINE_integer("calls", 2, "Timed training steps per mode per round.")
FLAGS = flags.FLAGS

MODES = ("standard", "checkpointing", "reversible")


def main():
    from glow_tf import parallelism

    parallelism.configure_cpu_threads()  # as train.py
    from configs import default
    from glow_tf import train_lib

    trainers = {}
    for mode in MODES:
        config = default.get_config()
        config.data.name, config.data.image_size, config.data.channels = "digits", FLAGS.image_size, 3
        config.model.num_levels, config.model.num_steps, config.model.hidden_width = 3, FLAGS.steps, 128
        config.model.lu_decomposed, config.model.learn_top = True, True
        config.train.batch_size = config.train.n_init = 16
        config.train.backprop = mode
        trainer = train_lib.Trainer(config, tempfile.mkdtemp(prefix="backprop_overhead_"))
        trainer.initialize()
        batch = next(iter(trainer.make_dataset(0)))
        float(trainer.train_step(batch)["loss"])  # trace
        trainers[mode] = (trainer, batch)
    rounds = []
    for _ in range(FLAGS.rounds):
        seconds = {}
        for mode, (trainer, batch) in trainers.items():
            start = time.perf_counter()
            for _ in range(FLAGS.calls):
                float(trainer.train_step(batch)["loss"])
            seconds[mode] = (time.perf_counter() - start) / FLAGS.calls
        rounds.append(seconds)
        print("  ".join(f"{m} {s:.3f} s ({s / seconds['standard']:.2f}x)" for m, s in seconds.items()), flush=True)
    result = {
        "image_size": FLAGS.image_size,
        "steps": FLAGS.steps,
        "rounds": rounds,
        "machine": _harness.machine_info(),
    }
    path = _harness.write_json(result, _harness.result_path(f"backprop_overhead-{_harness.timestamp()}"))
    print(f"wrote {path}")


if __name__ == "__main__":
    _harness.run(main)
