"""Prints a dataset's size (the seed study's dataset table) and writes it as JSON.

  python -m experiments.stats --dataset=ml-1m-half [--data_dir=DIR] [--min_interactions=0]
      [--out=stats.json]
"""
import json

from absl import flags

from experiments import cli
from jaxret import data

flags.DEFINE_string("out", None, "Write the statistics to this JSON file.")
cli.define_data_flags()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  seqs = data.load_sequences(FLAGS.dataset, FLAGS.data_dir, FLAGS.min_interactions)
  result = data.stats(seqs)
  print(f"{FLAGS.dataset} (min_interactions={FLAGS.min_interactions}): "
        f"users {result['users']:,}  items {result['items']:,}  "
        f"interactions {result['interactions']:,}  "
        f"avg/user {result['avg_per_user']:.2f}  avg/item {result['avg_per_item']:.2f}")
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  cli.run_main(main)
