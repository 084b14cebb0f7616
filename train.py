"""Train or evaluate Glow.

    python train.py --dataset=digits                       # offline quick start (configs/digits.py)
    python train.py --dataset=celeba                       # configs/celeba.py
    python train.py --config=configs/cifar10.py --workdir=runs/c10 --config.train.batch_size=64
    python train.py --mode=eval --workdir=runs/c10 --checkpoint=best

Runs resume from the workdir's latest checkpoint when the config agrees with the run's
config.json on the model, the data and the seed (--start_over moves a run of another
config aside instead). Flags only pick the config and the run; everything else lives in
glow_tf.train_lib. A mistake (bad flag, unknown config key, unusable workdir, missing
data) ends with one line on stderr and exit status 1 or 2, never a traceback.
"""

import logging as logging_std
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# glow_tf trains with tf_keras (Keras 2): with tf.keras pointing there too, TensorFlow skips importing Keras 3
# (and the matplotlib and scikit-learn modules it pulls in), about 1 s and 90 MiB less at start-up.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

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
flags.DEFINE_bool("start_over", False, "Move a run already in --workdir aside (<workdir>.old-<time>) and start anew.")
FLAGS = flags.FLAGS
HELP = "See python train.py --helpfull."


def _joined(args: list[str], names: tuple[str, ...]) -> list[str]:
    """``--name value`` written as ``--name=value`` for the given flag names (absl accepts both)."""
    out, i = [], 0
    while i < len(args):
        if args[i] in names and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{args[i]}={args[i + 1]}")
            i += 2
        else:
            out.append(args[i])
            i += 1
    return out


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _config_key_error(err: Exception, args: list[str]) -> str:
    """One line for ml_collections' unknown-key error: the flag, the bad key and its suggestion."""
    suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', str(err))
    key = suggestion.group(2) if suggestion else re.sub(r"[^\w.]", "", str(err).split("\\n")[0])
    flag = next((a.split("=", 1)[0] for a in args if a.startswith("--config.") and f".{key}" in a), key)
    hint = f'did you mean "{suggestion.group(1)}"?' if suggestion else "the config has no such field."
    return f"Unknown config key in {flag}: {hint} {HELP}"


def _parse(argv):
    """absl flag parsing, with --dataset=X standing for --config=configs/X.py (so --config.* overrides work).

    Every parsing mistake exits with one line on stderr (status 1).
    """
    args = [argv[0], *_joined(list(argv[1:]), ("--dataset", "--config", "--workdir", "--mode", "--checkpoint"))]
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
        if "Did you mean" in str(err):
            sys.exit(_config_key_error(err, args))
        sys.exit(f"{_one_line(err)} {HELP}")
    except (AttributeError, KeyError) as err:  # ml_collections: an override of a field the config lacks
        sys.exit(_config_key_error(err, args))


class _QuietTFInfo(logging_std.Filter):
    """Drops TF's per-save "Sharding callback duration" info lines from the console."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return not str(record.msg).startswith("Sharding callback duration")


def _usage_errors() -> None:
    """Exits with one line for a command that cannot run, before TensorFlow is imported."""
    if FLAGS.mode == "eval":
        if not FLAGS.workdir:
            sys.exit("--mode=eval needs --workdir=DIR of a training run.")
    elif FLAGS.config is None:
        sys.exit(f"Pass --dataset=<name> (one of {DATASET_CONFIGS}) or --config=<config file>. {HELP}")
    else:
        try:
            FLAGS.config.to_dict()  # ml_collections loads the file lazily: surface its errors here
        except Exception as err:
            sys.exit(f"Cannot load the config: {_one_line(err)}")
    if FLAGS.workdir and os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
        sys.exit(f"--workdir={FLAGS.workdir!r} is an existing file, not a folder; pass a folder path.")


def _run() -> int:
    from glow_tf import distribute, parallelism, train_lib  # after flag parsing: importing TF is slow

    if not FLAGS.tpu and (FLAGS.mode == "eval" or FLAGS.config.train.batch_shards == 0):
        parallelism.configure_cpu_threads()  # before TF's first op; a no-op with a local GPU or TPU
    elif not FLAGS.tpu:
        parallelism.configure_graph_optimizer()  # the lighter grappler set-up alone (CPU-only machines)

    if FLAGS.mode == "eval":
        result = train_lib.evaluate_checkpoint(FLAGS.workdir, FLAGS.checkpoint, distribute.make_strategy(FLAGS.tpu))
        print(
            f"test bits/dim {result['bits_per_dim']:.4f} over {result['num_examples']} images ({result['checkpoint']})"
        )
        return 0
    name = FLAGS.dataset or os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    strategy = distribute.make_strategy(FLAGS.tpu)
    trainer = train_lib.Trainer(FLAGS.config, workdir, strategy, start_over=FLAGS.start_over)
    result = trainer.train()
    if result.interrupted_by:
        return 128 + result.interrupted_by
    return 0


def main(argv):
    if len(argv) > 1:
        sys.exit(f"Unexpected argument(s) {argv[1:]}: flags take the form --name=value. {HELP}")
    _usage_errors()
    logging.get_absl_handler().addFilter(_QuietTFInfo())
    from glow_tf import checkpointing, data, train_lib, workdirs

    # The user's mistakes, each one line; anything else is a bug and keeps its traceback.
    prefixes = (
        (data.DatasetUnavailableError, "Dataset unavailable"),
        (workdirs.IncompatibleRunError, "Cannot resume"),
        (checkpointing.CheckpointError, "Cannot restore"),
        (train_lib.NonFiniteLossError, "Training stopped"),
        (ValueError, "Invalid configuration"),
        (OSError, "Error"),  # missing or unusable files and folders
    )
    try:
        return _run()
    except tuple(kind for kind, _ in prefixes) as err:
        prefix = next(p for kind, p in prefixes if isinstance(err, kind))
        sys.exit(f"{prefix}: {_one_line(err)}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse)
