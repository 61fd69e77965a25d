"""experiments.build_index: the serving index of a tiny trained MoL run, its recall curve and
chosen k', the file it writes, and one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import build_index
from jaxret import train
from jaxret.errors import ConfigError
from jaxret.retrieval import MoLIndex
from train_test import tiny_config, write_tiny_ml

REPO = Path(__file__).resolve().parents[1]
OPTS = dict(quantization="fp32", hindexer_steps=0, hindexer_dim=8, hindexer_hidden=16,
            generator=None, k=5, target_recall=1.0, k_primes="", eval_users=16, seed=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  data = write_tiny_ml(root / "data")
  out = {}
  for head in ("mol", "dot"):
    config = tiny_config(data, head=head, loss="ss")
    config.train.epochs = 1
    train.train_and_evaluate(config, root / head, log=lambda _: None)
    out[head] = root / head
  return out


def test_build_index_of_a_mol_run(runs):
  workdir = runs["mol"]
  summary = build_index.build(str(workdir), **dict(OPTS, hindexer_steps=5))
  assert summary["generator"] == "hindexer" and "hindexer" in summary["generators"]
  assert summary["num_items"] == 30 and summary["eval_users"] == 16
  assert summary["fit_users"] == 48 - 16
  # Target 1.0: the ladder 5, 10, 25, 30 (= N) stops at the first k' with recall 1.
  curve = {int(k): r for k, r in summary["recall_at_k_prime"].items()}
  assert list(curve) == sorted(curve) and set(curve) <= {5, 10, 25, 30}
  assert summary["k_prime"] == max(curve) and curve[summary["k_prime"]] == 1.0
  assert all(r < 1.0 for kp, r in curve.items() if kp < summary["k_prime"])
  assert json.loads((workdir / "index.json").read_text()) == summary
  index = MoLIndex.load(summary["index"])
  assert index.num_items == 30 and "hindexer" in index.generators
  q = np.random.default_rng(0).standard_normal((4, index.query_dim)).astype(np.float32)
  ids, _ = index.retrieve(q, 5, 30, "hindexer")
  exact, _ = index.exact_mol_topk(q, 5)
  np.testing.assert_array_equal(ids, exact)
  assert set(np.asarray(ids).ravel()) <= set(range(1, 31))


def test_build_index_without_hindexer_uses_avg_and_given_k_primes(runs, tmp_path):
  summary = build_index.build(str(runs["mol"]), str(tmp_path / "ix.npz"),
                              **dict(OPTS, k_primes="10,5", target_recall=0.999999))
  assert summary["generator"] == "avg" and summary["index"] == str(tmp_path / "ix.npz")
  assert list(summary["recall_at_k_prime"]) in (["5"], ["5", "10"])


@pytest.mark.parametrize("opts, match", [
    (dict(k=31), r"--k must lie in \[1, 30\]"),
    (dict(k_primes="5,40"), "exceeds the 30 items"),
    (dict(k_primes="a"), "--k_primes must be integers"),
    (dict(target_recall=0), "--target_recall"),
    (dict(generator="hindexer"), "needs an index built with a hindexer"),
    (dict(eval_users=0), "--eval_users must be >= 1"),
    (dict(eval_users=48, hindexer_steps=2), "no users left to fit the h-indexer")])
def test_build_index_bad_settings_raise_one_clear_error(runs, opts, match):
  with pytest.raises(ConfigError, match=match):
    build_index.build(str(runs["mol"]), **dict(OPTS, **opts))


def test_build_index_cli_rejects_a_dot_run_in_one_line(runs):
  r = subprocess.run([sys.executable, "-m", "experiments.build_index",
                      f"--workdir={runs['dot']}"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "'dot' head" in r.stderr
  assert "Traceback" not in r.stderr
