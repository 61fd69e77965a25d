"""Trains and evaluates one model.

  python -m experiments.run --head=mol
  python -m experiments.run --dataset=ml-1m --encoder=sasrec --head=mol --loss=ss \
      --protocol=loo --workdir=/tmp/run1 --seed=0 [--epochs=N] [--data_dir=DIR] \
      [--config.train.batch_size=64 ...]

Several hosts: the same command on each, plus --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I (I = 0..N-1; or JAX_COORDINATOR_ADDRESS and a cluster
environment JAX detects, e.g. SLURM).
"""
import json
from pathlib import Path

from absl import flags
from ml_collections import config_flags

from experiments import cli
from jaxret import distributed, train

with cli.flag_errors_in_one_line():  # reads the --config.FIELD overrides now, at import
  _CONFIG = config_flags.DEFINE_config_file(
      "config", str(Path(__file__).resolve().parent / "configs" / "default.py"),
      "Configuration file (fields overridable).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, TensorBoard, test_metrics.json;"
                    " default: workdirs/<dataset>-<encoder>-<head>-<loss>-<protocol>-s<seed>.")
flags.DEFINE_string("dataset", None, "Dataset name (overrides config.dataset).")
flags.DEFINE_string("data_dir", None, "Folder of datasets (default $JAXRET_DATA_DIR, else ./data).")
flags.DEFINE_string("encoder", None, "Query encoder: sasrec, svd.")
flags.DEFINE_string("head", None, "Similarity head: dot, mlp, fm, neural_fm, mol.")
flags.DEFINE_string("loss", None, "Loss: bce, ss, softmax.")
flags.DEFINE_string("protocol", None, "Evaluation protocol: loo, ratio.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_integer("epochs", None, "Maximum number of epochs.")
flags.DEFINE_integer("min_interactions", None, "k-core threshold (0 = off).")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0's "
                    "coordinator (default $JAX_COORDINATOR_ADDRESS); unset = one process.")
flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
FLAGS = flags.FLAGS

_SHORTCUTS = {"dataset": "dataset", "data_dir": "data_dir", "encoder": "encoder",
              "head": "head", "loss": "loss", "protocol": "protocol", "seed": "seed",
              "min_interactions": "min_interactions"}


def resolve_config():
  config = _CONFIG.value
  with config.unlocked():
    for flag, field in _SHORTCUTS.items():
      value = getattr(FLAGS, flag)
      if value is not None:
        config[field] = value
    if FLAGS.epochs is not None:
      config.train.epochs = FLAGS.epochs
  return config


def main(argv):
  del argv
  distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  config = resolve_config()
  workdir = FLAGS.workdir or (f"workdirs/{config.dataset}-{config.encoder}-{config.head}-"
                              f"{config.loss}-{config.protocol}-s{config.seed}")
  result = train.train_and_evaluate(config, workdir)
  print(json.dumps(result, indent=2))
  print(f"wrote {workdir}/test_metrics.json")


if __name__ == "__main__":
  cli.run_main(main)
