"""SASRec + MoL + sampled softmax on ml-1m-half, warm-started from a fast dot run.

Two stages, aimed at <= 30 minutes in all on 2 CPU cores: the fast dot recipe
(`paper_ml1m_dot_fast.py`, ~8 min) trains the SASRec encoder and item embeddings; this run
starts from that run's best checkpoint (`init_from`), adds a fresh MoL head of the paper
row's size, and trains everything for a short cosine schedule. From scratch, MoL with 128
negatives needs ~40 epochs of ~95 s to reach validation NDCG@10 0.10.

Measured (session 15, seed 0, idle machine; results/runs/fast/warm_dot_s0 and warm_mol_s0):
7.6 + 23.3 = 31 min, but the best validation NDCG@10 is 0.1311 (epoch 9), below the dot
stage's own 0.1446: the fresh head first pulls the encoder down to 0.084 and 12 epochs do not
win it back (test HR@10 0.2284 vs the dot stage's 0.2508). NOT a recipe that meets the target.
With the encoder frozen for 3 epochs and its updates scaled by 0.3 after
(`--config.train.freeze_encoder_epochs=3 --config.train.encoder_lr_scale=0.3`, session 16,
results/runs/fast/frz_*): 7.0 + 17.7 = 24.7 min, best validation NDCG@10 0.1356 (epoch 9), test
HR@10 0.2394: better than unfrozen, still below the dot stage (0.1444, 0.2508). Also NOT met.

  python -m experiments.run --config=experiments/configs/paper_ml1m_dot_fast.py --workdir=DOT
  python -m experiments.run --config=experiments/configs/paper_ml1m_mol_warm.py \
      --config.init_from=DOT --workdir=DIR
"""
import ml_collections

from experiments.configs.rows import common

EPOCHS = 12


def get_config() -> ml_collections.ConfigDict:
  c = common.paper_ml1m("mol")
  c.init_from = ""  # required: the fast dot run's workdir
  c.train.lr_decay_epochs = EPOCHS
  c.train.epochs = EPOCHS
  return c
