"""Reading a finished (or interrupted) run back from its workdir (no flags defined here)."""
import json
from pathlib import Path

import jax
import ml_collections

from jaxret import train
from jaxret.checkpoint import Checkpointer
from jaxret.errors import ConfigError


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
