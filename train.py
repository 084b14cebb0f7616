"""Train or evaluate Glow.

    python train.py --dataset=digits                       # offline quick start (configs/digits.py)
    python train.py --dataset=celeba                       # configs/celeba.py
    python train.py --config=configs/cifar10.py --workdir=runs/c10 --config.train.batch_size=64
    python train.py --mode=eval --workdir=runs/c10 --checkpoint=best

Runs resume from the workdir's latest checkpoint. Flags only pick the config and the
run; everything else lives in glow_tf.train_lib.
"""

import logging as logging_std
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DATASET_CONFIGS = sorted(
    name[:-3] for name in os.listdir(CONFIG_DIR) if name.endswith(".py") and not name.startswith(("_", "default"))
)

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_enum("dataset", None, DATASET_CONFIGS, "Shorthand for --config=configs/<dataset>.py.")
flags.DEFINE_string("workdir", None, "Run folder (default runs/<config name>); resumed if it holds checkpoints.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train, or eval: test bits/dim over the whole test split.")
flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Checkpoint evaluated in --mode=eval.")
flags.DEFINE_string("tpu", "", "TPU address; trains with TPUStrategy when given.")
FLAGS = flags.FLAGS


def _parse(argv):
    """absl flag parsing, with --dataset=X standing for --config=configs/X.py (so --config.* overrides work)."""
    args = list(argv)
    names = [a.split("=", 1)[0] for a in args[1:]]
    dataset = next((a.split("=", 1)[1] for a in args[1:] if a.startswith("--dataset=")), None)
    if dataset is not None and "--config" in names:
        sys.exit("Pass either --dataset or --config, not both.")
    if dataset is not None:
        if dataset not in DATASET_CONFIGS:
            sys.exit(f"Unknown --dataset={dataset!r}; choose one of {DATASET_CONFIGS}.")
        args.insert(1, f"--config={os.path.join(CONFIG_DIR, dataset + '.py')}")
    sys.argv = args  # ml_collections finds the --config.* overrides to define in sys.argv
    try:
        return FLAGS(args)
    except flags.Error as err:
        sys.exit(f"{err}\nSee python train.py --helpfull.")


class _QuietTFInfo(logging_std.Filter):
    """Drops TF's per-save "Sharding callback duration" info lines from the console."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return not str(record.msg).startswith("Sharding callback duration")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietTFInfo())
    from glow_tf import data, distribute, parallelism, train_lib  # after flag parsing: importing TF is slow

    if not FLAGS.tpu and (FLAGS.mode == "eval" or FLAGS.config.train.batch_shards == 0):
        parallelism.configure_cpu_threads()  # before TF's first op; a no-op with a local GPU or TPU

    if FLAGS.mode == "eval":
        if not FLAGS.workdir:
            raise app.UsageError("--mode=eval needs --workdir of a training run.")
        result = train_lib.evaluate_checkpoint(FLAGS.workdir, FLAGS.checkpoint, distribute.make_strategy(FLAGS.tpu))
        print(
            f"test bits/dim {result['bits_per_dim']:.4f} over {result['num_examples']} images ({result['checkpoint']})"
        )
        return 0
    if FLAGS.config is None:
        raise app.UsageError("Pass --dataset=<name> or --config=configs/<name>.py.")
    name = FLAGS.dataset or os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    try:
        trainer = train_lib.Trainer(FLAGS.config, workdir, distribute.make_strategy(FLAGS.tpu))
    except data.DatasetUnavailableError as err:
        sys.exit(f"Dataset unavailable: {err}")
    except ValueError as err:
        sys.exit(f"Invalid configuration: {err}")
    try:
        result = trainer.train()
    except train_lib.NonFiniteLossError as err:
        sys.exit(f"Training stopped: {err}")
    if result.interrupted_by:
        return 128 + result.interrupted_by
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
