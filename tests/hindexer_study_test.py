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


def test_recall_by_mol_rank_splits_the_columns_by_mol_rank():
  study = _load_script()
  rng = np.random.default_rng(2)
  ranks = rng.integers(0, 5000, (30, 100))
  got = study.recall_by_mol_rank(ranks, [1000, 4000])
  assert list(got) == ["0-9", "10-49", "50-99"]
  for name, (lo, hi) in {"0-9": (0, 10), "10-49": (10, 50), "50-99": (50, 100)}.items():
    for kp in (1000, 4000):
      assert got[name][str(kp)] == round(float(np.mean(ranks[:, lo:hi] < kp)), 4)


def test_gaussian_like_matches_the_mean_and_covariance():
  study = _load_script()
  rng = np.random.default_rng(3)
  x = rng.standard_normal((500, 4)) @ np.array([[2., 0, 0, 0], [1, 1, 0, 0], [0, 0, .5, 0],
                                                 [0, 0, 1, 3]]) + 5
  draws = study.gaussian_like(np.random.default_rng(4), x, 200_000)
  assert draws.shape == (200_000, 4) and draws.dtype == np.float32
  np.testing.assert_allclose(draws.mean(0), x.mean(0), atol=0.05)
  np.testing.assert_allclose(np.cov(draws, rowvar=False), np.cov(x, rowvar=False), atol=0.1)
