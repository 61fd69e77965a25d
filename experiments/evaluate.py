"""Re-evaluates a finished (or interrupted) run from its best-validation checkpoint.

  python -m experiments.evaluate --workdir=/tmp/run1 [--split=test] [--out=FILE]

Reads `workdir/config.json`, rebuilds the model, restores `checkpoints/best` and runs the
same full-ranking evaluation as training, without the training code path. Writes
`<split>_metrics_eval.json` in the workdir (or --out).
"""
import json
from pathlib import Path

import jax
from absl import flags

from experiments import cli
from experiments.workdirs import restore_best
from jaxret import data as data_lib
from jaxret import sharding
from jaxret import train
from jaxret.errors import ConfigError

flags.DEFINE_string("workdir", None, "A run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_enum("split", "test", ["valid", "test"], "Which split to evaluate.")
flags.DEFINE_string("out", None, "Output JSON (default: workdir/<split>_metrics_eval.json).")
flags.DEFINE_string("data_dir", None, "Override the run's data_dir.")
FLAGS = flags.FLAGS


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
