"""Downloads a dataset from its official source into DATA_DIR/NAME/ (needs internet).

  python -m experiments.download --dataset=ml-1m [--data_dir=DIR]
"""
from absl import flags

from experiments import cli
from jaxret import data

flags.DEFINE_string("dataset", "ml-1m", f"One of: {', '.join(sorted(data.DATASETS))}.")
flags.DEFINE_string("data_dir", None, "Destination; default $JAXRET_DATA_DIR, else ./data.")
flags.DEFINE_string("cache_dir", None, "Archive cache; default ~/.cache/jaxret/downloads.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  path = data.download(FLAGS.dataset, FLAGS.data_dir, FLAGS.cache_dir)
  print(f"{FLAGS.dataset}: wrote {path}")


if __name__ == "__main__":
  cli.run_main(main)
