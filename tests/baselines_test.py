"""jaxret.baselines: item popularity, against a brute-force numpy count and ranking."""
import numpy as np
import pytest

from jaxret import baselines, train
from jaxret.errors import ConfigError
from train_test import tiny_config, write_tiny_ml


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_ml(tmp_path_factory.mktemp("data"), num_users=40, length=20)


def brute_force_popularity(seqs, split, name, exclude_history, ks):
  """Counts per user loop; each example's rank = other candidates with count >= the target's."""
  counts = np.zeros(seqs.num_items + 1, np.int64)
  for u in range(seqs.num_users):
    for item in seqs.user_items(u)[:split.train_len[u]]:
      counts[item] += 1
  examples = split.eval_examples(name)
  sums = {}
  for u, pos in zip(examples.users, examples.positions):
    items = seqs.user_items(u)
    target = items[pos]
    candidates = set(range(1, seqs.num_items + 1)) - {target}
    if exclude_history:
      candidates -= set(items[:pos].tolist())
    rank = sum(counts[c] >= counts[target] for c in candidates)
    per = {"mrr": 1.0 / (rank + 1)}
    for k in ks:
      per[f"hr@{k}"] = float(rank < k)
      per[f"ndcg@{k}"] = 1.0 / np.log2(rank + 2) if rank < k else 0.0
    for key, value in per.items():
      sums[key] = sums.get(key, 0.0) + value
  return counts, {key: value / len(examples) for key, value in sums.items()}


@pytest.mark.parametrize("protocol, exclude_history", [("loo", True), ("ratio", True),
                                                       ("loo", False)])
def test_popularity_matches_brute_force(tiny_dir, protocol, exclude_history):
  config = tiny_config(tiny_dir, protocol=protocol)
  config.eval.exclude_history = exclude_history
  config.eval.ks = (1, 5, 10)
  config.eval.batch_size = 8
  config.train.num_devices = 1
  seqs, split = train.load_data(config)
  out = baselines.evaluate_popularity(config, seqs, split)
  assert set(out) == {"valid", "test", "eval_time"}
  for name in ("valid", "test"):
    counts, expected = brute_force_popularity(seqs, split, name, exclude_history, (1, 5, 10))
    np.testing.assert_array_equal(baselines.item_popularity(seqs, split), counts)
    for key, value in expected.items():
      assert out[name][key] == pytest.approx(value, abs=1e-6), (name, key)


def test_popularity_counts_only_the_training_part(tiny_dir):
  config = tiny_config(tiny_dir, protocol="loo")
  seqs, split = train.load_data(config)
  counts = baselines.item_popularity(seqs, split)
  assert counts[0] == 0 and counts.sum() == split.train_len.sum()
  assert counts.sum() < len(seqs.items)  # each user's last two items are held out


def test_recent_popularity_counts_the_latest_training_interactions(tiny_dir):
  config = tiny_config(tiny_dir, protocol="loo")
  seqs, split = train.load_data(config)
  train_items, train_times = [], []
  for u in range(seqs.num_users):
    start = seqs.user_ptr[u]
    train_items += seqs.items[start:start + split.train_len[u]].tolist()
    train_times += seqs.times[start:start + split.train_len[u]].tolist()
  train_items, train_times = np.array(train_items), np.array(train_times)
  cut = np.sort(train_times)[int(np.floor(0.75 * (len(train_times) - 1)))]  # 0.25 latest
  expected = np.bincount(train_items[train_times >= cut], minlength=seqs.num_items + 1)
  got = baselines.item_popularity(seqs, split, recent_fraction=0.25)
  np.testing.assert_array_equal(got, expected)
  assert 0 < got.sum() < baselines.item_popularity(seqs, split).sum()
  out = baselines.evaluate_popularity(config, seqs, split, recent_fraction=0.25)
  assert 0.0 <= out["test"]["hr@10"] <= 1.0
  with pytest.raises(ConfigError, match=r"recent_fraction must be in \(0, 1\], got 0"):
    baselines.item_popularity(seqs, split, recent_fraction=0)
