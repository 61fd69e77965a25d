"""Length-bucketed batches: same examples and metrics as unbucketed ones, shorter inputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret import data as data_lib
from jaxret import sharding, train
from jaxret.data import batches, splits
from jaxret.errors import ConfigError
from jaxret.models.layers import ByteDropout, byte_rate
from data_test import synthetic_sequences
from train_test import jitted_train_step, tiny_config

BUCKETS = (2, 4, 6)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """ML-1M-format users walking item cycles, with histories of 3 to 12 items."""
  folder = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  lines = []
  for u in range(1, 61):
    start, stride = rng.integers(1, 31), rng.choice([1, 2])
    for t in range(int(rng.integers(3, 13))):
      lines.append(f"{u}::{(start + stride * t - 1) % 30 + 1}::4::{1000 + 10 * t}")
  path = folder / "ml-1m" / "ratings.dat"
  path.parent.mkdir(parents=True)
  path.write_text("\n".join(lines) + "\n")
  return folder


def test_bucketed_train_batches_hold_every_example_once_cut_to_its_bucket():
  seqs = synthetic_sequences(num_users=60, seed=3)
  sp = splits.make_split(seqs, "loo")
  full = batches.TrainBatches(seqs, sp, max_len=6, batch_size=5)
  cut = batches.TrainBatches(seqs, sp, max_len=6, batch_size=5, length_buckets=BUCKETS)
  rows_full = {int(u): (i, t) for b in full.epoch(0, 0)
               for u, i, t in zip(b["users"], b["inputs"], b["targets"]) if u >= 0}
  got = list(cut.epoch(0, 0))
  assert len(got) == cut.steps_per_epoch > full.steps_per_epoch
  seen = []
  for b in got:
    width = b["inputs"].shape[1]
    assert width in BUCKETS and b["targets"].shape == b["mask"].shape == (5, width)
    for r in np.flatnonzero(b["users"] >= 0):
      u = int(b["users"][r])
      seen.append(u)
      inputs, targets = rows_full[u]
      # The cut window is the full one without padding: nothing real is dropped ...
      assert (inputs[:-width] == 0).all()
      np.testing.assert_array_equal(b["inputs"][r], inputs[-width:])
      np.testing.assert_array_equal(b["targets"][r], targets[-width:])
      # ... and it is the shortest bucket that holds it.
      n = int((inputs > 0).sum())
      assert width == min(k for k in BUCKETS if k >= n)
  assert sorted(seen) == sorted(rows_full)
  # Deterministic, reshuffled per epoch, resumable mid-epoch.
  again = list(cut.epoch(0, 0))
  assert all(np.array_equal(a["users"], b["users"]) for a, b in zip(got, again))
  assert not all(np.array_equal(a["users"], b["users"]) for a, b in zip(got, cut.epoch(0, 1)))
  resumed = list(cut.epoch(0, 0, start_step=3))
  assert len(resumed) == len(got) - 3
  np.testing.assert_array_equal(resumed[0]["inputs"], got[3]["inputs"])


def test_without_buckets_batches_are_unchanged():
  seqs = synthetic_sequences(num_users=40, seed=1)
  sp = splits.make_split(seqs, "loo")
  tb = batches.TrainBatches(seqs, sp, max_len=6, batch_size=7)
  perm = np.random.default_rng([0, 2]).permutation(tb.num_examples)
  for step, b in enumerate(tb.epoch(0, 2)):
    idx = perm[step * 7:(step + 1) * 7]
    np.testing.assert_array_equal(b["users"][:len(idx)], tb.users[idx])
    assert b["inputs"].shape == (7, 6)


@pytest.mark.parametrize("bad, match", [
    ((4, 2, 6), "increasing"), ((2, 4), "must be max_len=6"), ((0, 6), "positive"),
    (("a", 6), "ints"), ((2, 2, 6), "increasing")])
def test_bad_buckets_name_the_problem(bad, match):
  with pytest.raises(ValueError, match=match):
    batches.check_buckets(bad, 6)


def test_buckets_above_max_len_are_clipped():
  assert batches.check_buckets((64, 128, 200), 100) == (64, 100)
  assert batches.check_buckets((64, 128, 200), 8) == (8,)
  assert batches.check_buckets((2, 6), 6) == (2, 6)
  assert batches.check_buckets((), 6) == batches.check_buckets(None, 6) == (6,)


def test_bad_buckets_fail_config_validation(tiny_dir):
  config = tiny_config(tiny_dir, **{"train.length_buckets": (4, 2)})
  with pytest.raises(ConfigError, match="--config.train.length_buckets: .*increasing"):
    train.validate_config(config)


@pytest.mark.parametrize("head", ["dot", "mol"])
def test_bucketed_evaluation_equals_unbucketed(tiny_dir, head):
  config = tiny_config(tiny_dir, head=head)
  config.max_len = 6
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  mesh = sharding.make_mesh(1)
  step = jax.jit(train.make_eval_step(model, config, seqs.num_items))
  plain = data_lib.EvalBatches(seqs, split.test, 6, 16)
  cut = data_lib.EvalBatches(seqs, split.test, 6, 16, length_buckets=BUCKETS)
  assert len({b["inputs"].shape[1] for b in cut}) == len(BUCKETS)
  a = train.evaluate(step, state.params, plain, mesh)
  b = train.evaluate(step, state.params, cut, mesh)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_bucketed_training_compiles_once_per_bucket_and_learns(tiny_dir, tmp_path):
  config = tiny_config(tiny_dir, head="dot", **{"train.length_buckets": BUCKETS})
  config.max_len = 6
  config.train.position_budget = 0.5
  seqs, split, mesh, state, step = jitted_train_step(config)
  tb = data_lib.TrainBatches(seqs, split, 6, 16, BUCKETS)
  losses, widths = [], set()
  for epoch in range(6):
    for batch in tb.epoch(0, epoch):
      widths.add(batch["inputs"].shape[1])
      state, m = step(state, sharding.shard_batch(batch, mesh), jax.random.key(0))
      losses.append(float(m["loss"]))
  assert step._cache_size() == len(widths) > 1
  assert np.isfinite(losses).all() and np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
  # The budget counts positions of max_len-long rows: a short bucket keeps all of its own.
  result = train.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
  assert np.isfinite(result["ndcg@10"])


def test_budget_counts_max_len_positions_with_buckets():
  mask = jnp.ones((4, 3))
  targets = jnp.arange(12).reshape(4, 3) + 1
  negs = jnp.arange(5)
  pos, t, m, _ = train.select_positions(jax.random.key(0), mask, targets, negs, 0.5, 6)
  np.testing.assert_array_equal(np.asarray(pos), np.arange(12))     # 0.5 * 4 * 6 = all 12
  pos, t, m, _ = train.select_positions(jax.random.key(0), mask, targets, negs, 0.25, 6)
  assert pos.shape == (6,) and len(set(np.asarray(pos).tolist())) == 6


def test_byte_dropout_keeps_the_mean_and_its_rate():
  x = jnp.ones((400, 500))
  y = np.asarray(ByteDropout(0.2).apply({}, x, deterministic=False,
                                        rngs={"dropout": jax.random.key(0)}))
  dropped = (y == 0).mean()
  assert abs(dropped - byte_rate(0.2)) < 0.005
  assert abs(y.mean() - 1.0) < 0.01
  np.testing.assert_allclose(y[y > 0], 1 / (1 - byte_rate(0.2)), rtol=1e-6)
  assert (np.asarray(ByteDropout(0.2).apply({}, x, deterministic=True)) == 1).all()
  other = np.asarray(ByteDropout(0.2).apply({}, x, deterministic=False,
                                            rngs={"dropout": jax.random.key(1)}))
  assert not np.array_equal(y, other)
