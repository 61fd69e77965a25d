"""seed_ml1m row: SASRec + NeuralFM head, BCE (127 negatives)."""
import ml_collections

from experiments.configs.rows import common


def get_config() -> ml_collections.ConfigDict:
  return common.seed_ml1m("sasrec", "neural_fm")
