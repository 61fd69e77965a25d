"""beauty row: SASRec + dot-product head, sampled softmax (128 negatives)."""
import ml_collections

from experiments.configs.rows import common


def get_config() -> ml_collections.ConfigDict:
  return common.beauty("dot")
