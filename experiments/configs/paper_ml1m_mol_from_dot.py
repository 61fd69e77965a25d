"""SASRec + MoL + sampled softmax on ml-1m-half, started as a fast dot run's model.

Like `paper_ml1m_mol_warm.py` (the encoder and item embeddings of a `paper_ml1m_dot_fast.py`
run), but the MoL head does not start fresh: its component projections are linear
(`mol.query_hidden=0`) and start as zero-padded identities (`init_head_as_dot`), so at step 0
every one of the P logits is the dot run's cos(q, i) / tau and the MoL score is the dot run's.
The gating starts fresh and the components diverge from there.

Measured (session 34, seed 0; results/diagnostics/mol_from_dot_probe.json): the start is exact
(with learning rate 0 the validation NDCG@10 is the dot stage's 0.144449), but training lowers
it, with the encoder trained (0.0901 after one epoch at lr 1e-3, 0.1292 at 2e-4, 0.1359 at 2e-4
with 1024 negatives) and with it frozen, so that only the similarity changes (0.1326 at lr 1e-3;
0.1422, 0.1409, 0.1395 over three epochs at 1e-4; 0.1404, 0.1397, 0.1387 with 1024 negatives;
with item and softmax dropout off, best 0.1411 at epoch 5 of 12 at 1e-3).
NOT a recipe that gives MoL above dot in a short budget; kept as the measured probe.

  python -m experiments.run --config=experiments/configs/paper_ml1m_dot_fast.py --workdir=DOT
  python -m experiments.run --config=experiments/configs/paper_ml1m_mol_from_dot.py \
      --config.init_from=DOT --workdir=DIR
"""
import ml_collections

from experiments.configs import paper_ml1m_mol_warm


def get_config() -> ml_collections.ConfigDict:
  c = paper_ml1m_mol_warm.get_config()    # init_from required; 12 epochs, cosine
  c.init_head_as_dot = True
  c.mol.query_hidden = 0
  return c
