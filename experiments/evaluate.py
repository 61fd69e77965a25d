"""Re-evaluates a finished (or interrupted) run from its best-validation checkpoint.

  python -m experiments.evaluate --workdir=/tmp/run1 [--split=test] [--out=FILE]

Reads `workdir/config.json`, rebuilds the model, restores `checkpoints/best` and runs the
same full-ranking evaluation as training, without the training code path. Writes
`<split>_metrics_eval.json` in the workdir (or --out).
"""
import json
from pathlib import Path

import jax
import ml_collections
from absl import flags

from experiments import cli
from jaxret import data as data_lib
from jaxret import sharding
from jaxret import train
from jaxret.checkpoint import Checkpointer
from jaxret.errors import ConfigError

flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_enum("split", "test", ["valid", "test"], "Which split to evaluate.")
flags.DEFINE_string("out", None, "Output JSON (default: workdir/<split>_metrics_eval.json).")
flags.DEFINE_string("data_dir", None, "Override the run's data_dir.")
FLAGS = flags.FLAGS


def restore_best(workdir: str, data_dir: str | None = None):
  """A run's (config, sequences, split, model, best params, checkpoint meta) from its workdir.

  Raises:
    ConfigError: no config.json, or no best checkpoint yet.
  """
  workdir_path = Path(workdir)
  config_file = workdir_path / "config.json"
  if not config_file.is_file():
    raise ConfigError(f"{config_file} not found: --workdir must be the folder of a run made by "
                      f"`python -m experiments.run`")
  config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
  if data_dir:
    config.data_dir = data_dir
  seqs, sp = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  ckpt = Checkpointer(workdir_path)
  restored = ckpt.restore("best", {"params": state.params})
  ckpt.close()
  if restored is None:
    raise ConfigError(f"{workdir_path}/checkpoints/best holds no checkpoint yet; train first")
  return config, seqs, sp, model, restored[0]["params"], restored[1]


def evaluate_workdir(workdir: str, split: str = "test", data_dir: str | None = None
                     ) -> dict[str, float]:
  config, seqs, sp, model, params, _ = restore_best(workdir, data_dir)
  mesh = sharding.make_mesh(config.train.num_devices or None)
  params = sharding.replicate(params, mesh)
  batches = data_lib.EvalBatches(seqs, sp.eval_examples(split), config.max_len,
                                 config.eval.batch_size, config.eval.exclude_history,
                                 length_buckets=train.length_buckets(config))
  eval_step = jax.jit(train.make_eval_step(model, config, seqs.num_items))
  return train.evaluate(eval_step, params, batches, mesh, split,
                        train.eval_sampling(config, seqs.num_items))


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required (the folder of a run)")
  result = evaluate_workdir(FLAGS.workdir, FLAGS.split, FLAGS.data_dir)
  out = Path(FLAGS.out or Path(FLAGS.workdir) / f"{FLAGS.split}_metrics_eval.json")
  out.write_text(json.dumps(result, indent=2))
  print(json.dumps(result, indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  cli.run_main(main)
