"""scripts/hindexer_study.py's rank and union-recall helpers against brute-force numpy."""
import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location("hindexer_study",
                                                REPO / "scripts" / "hindexer_study.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_dot_ranks_match_brute_force():
  study = _load_script()
  rng = np.random.default_rng(0)
  q, table = rng.standard_normal((40, 8)), rng.standard_normal((300, 8))
  top = rng.integers(0, 300, (40, 5))
  got = study.dot_ranks(jnp.asarray(q, jnp.float32), jnp.asarray(table, jnp.float32), top)
  scores = (q.astype(np.float32) @ table.astype(np.float32).T)
  want = np.array([[np.sum(scores[b] > scores[b, t]) for t in row] for b, row in enumerate(top)])
  np.testing.assert_array_equal(got, want)


def test_union_recall_counts_an_item_found_by_either_list():
  study = _load_script()
  rng = np.random.default_rng(1)
  h, a = rng.integers(0, 1000, (50, 20)), rng.integers(0, 1000, (50, 20))
  for k_prime, f in [(100, 0.0), (100, 0.25), (300, 0.5), (300, 1.0)]:
    n_avg = int(round(f * k_prime))
    found = [[h[b, j] < k_prime - n_avg or a[b, j] < n_avg for j in range(20)]
             for b in range(50)]
    assert study.union_recall(h, a, k_prime, f) == np.mean(found)
  assert study.union_recall(h, a, 100, 0.0) == np.mean(h < 100)
