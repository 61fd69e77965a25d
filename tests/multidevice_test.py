"""Data parallelism: a step on an 8-device mesh equals the 1-device step on the same batch."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxret import data as data_lib
from jaxret import sharding, train
from jaxret.errors import ConfigError
from train_test import tiny_config, write_tiny_ml


def test_eight_simulated_devices():
  # conftest.py sets XLA_FLAGS before jax is imported; without it every test here is vacuous.
  assert jax.device_count() == 8, "conftest.py did not give 8 simulated CPU devices"
  assert jax.config.jax_threefry_partitionable  # dropout bits do not depend on the sharding


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_ml(tmp_path_factory.mktemp("data"))


@functools.cache
def _setup(tiny_dir, head: str, prng_impl: str = "threefry2x32"):
  config = tiny_config(tiny_dir, head=head, loss="ss", prng_impl=prng_impl, **{
      "sasrec.dropout": 0.2, "mol.softmax_dropout": 0.2, "mol.item_dropout": 0.1})
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, train.prng_key(config))
  batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
  eval_batch = next(iter(data_lib.EvalBatches(seqs, split.valid, config.max_len, 16)))
  return config, model, seqs.num_items, state, batch, eval_batch


@pytest.mark.parametrize("head,prng_impl", [("dot", "threefry2x32"), ("mol", "threefry2x32"),
                                            ("mol", "rbg")])
def test_step_and_eval_match_single_device(tiny_dir, head, prng_impl):
  assert jax.device_count() == 8
  config, model, num_items, state, batch, eval_batch = _setup(tiny_dir, head, prng_impl)
  step = jax.jit(train.make_train_step(model, config, num_items))
  eval_step = jax.jit(train.make_eval_step(model, config, num_items))
  out = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(n)
    placed = sharding.shard_batch(batch, mesh)
    assert placed["inputs"].sharding.spec == P("data")
    assert {s.data.shape[0] for s in placed["inputs"].addressable_shards} == {16 // n}
    new_state, metrics = step(sharding.replicate(state, mesh), placed,
                              jax.random.fold_in(train.prng_key(config), 1))
    sums = eval_step(new_state.params, sharding.shard_batch(eval_batch, mesh))
    out[n] = jax.device_get((new_state.params, metrics, sums))

  (params1, m1, sums1), (params8, m8, sums8) = out[1], out[8]
  assert np.isfinite(m1["loss"]) and m1["positions"] == m8["positions"]
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
  flat1 = jax.tree_util.tree_leaves_with_path(params1)
  flat8 = jax.tree.leaves(params8)
  assert len(flat1) == len(flat8)
  moved = 0
  for (path, a), b in zip(flat1, flat8):
    # Attention key biases get a zero gradient (softmax ignores them) that Adam turns into
    # steps of round-off noise, so params are compared to a tenth of one Adam step (lr 1e-2).
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-3, err_msg=jax.tree_util.keystr(path))
    moved += np.mean(np.abs(b - a) < 1e-6)
  assert moved / len(flat8) > 0.9  # and all but those few agree to round-off
  assert sums1.keys() == sums8.keys() and sums1["weight"] == 16
  for k in sums1:
    np.testing.assert_allclose(sums8[k], sums1[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_eval_runs_sharded_over_queries(tiny_dir):
  """Evaluation is one SPMD program over the mesh: each device ranks its own queries."""
  config, model, num_items, state, _, eval_batch = _setup(tiny_dir, "dot")
  mesh = sharding.make_mesh(8)
  eval_step = jax.jit(train.make_eval_step(model, config, num_items))
  compiled = eval_step.lower(sharding.replicate(state.params, mesh),
                             sharding.shard_batch(eval_batch, mesh)).compile()
  assert compiled.input_shardings[0][1]["inputs"].spec == P("data")
  assert "all-reduce" in compiled.as_text()  # per-device partial sums, then one reduction


@pytest.mark.parametrize("field", ["train.batch_size", "eval.batch_size"])
def test_batch_size_not_divisible_by_devices_fails_clearly(tiny_dir, tmp_path, field):
  config = tiny_config(tiny_dir, **{field: 12})
  with pytest.raises(ConfigError, match=f"--config.{field} 12 is not divisible by the 8 devices"
                     r"; use a multiple of 8 \(e\.g\. 8\)"):
    train.train_and_evaluate(config, tmp_path)
