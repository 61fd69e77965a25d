"""Reading a finished (or interrupted) run back from its workdir (no flags defined here)."""
import json
from pathlib import Path

from typing import Iterator

import jax
import ml_collections
import numpy as np

from jaxret import data as data_lib
from jaxret import train
from jaxret.checkpoint import Checkpointer
from jaxret.errors import ConfigError
from jaxret.models.retrieval import RetrievalModel


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


def encoded_examples(model, params, seqs, examples, max_len: int, batch: int = 256
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(inputs (b, L), encoder outputs (b, L, D)) of the real rows of each evaluation batch of
  `examples` (left-padded; the last position is the user's query)."""
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=RetrievalModel.encode))
  for b in data_lib.EvalBatches(seqs, examples, max_len, batch, exclude_history=False):
    real = np.asarray(b["weight"]) > 0
    yield np.asarray(b["inputs"])[real], np.asarray(encode(params, b["inputs"]))[real]
