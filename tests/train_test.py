"""Training: every (encoder, head, loss) learns; the loop checkpoints, resumes and re-evaluates."""
import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import default
from jaxret import data as data_lib
from jaxret import sharding, train
from jaxret.checkpoint import Checkpointer
from jaxret.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
# XLA flags of the CLI subprocesses: one device, and the fast compile of conftest.py.
SUBPROCESS_XLA_FLAGS = "--xla_backend_optimization_level=0"


def write_tiny_ml(folder: Path, num_users=48, num_items=30, length=14, seed=0) -> Path:
  """A learnable ML-1M-format file: each user walks a cycle of items with small noise."""
  rng = np.random.default_rng(seed)
  lines = []
  for u in range(1, num_users + 1):
    start, stride = rng.integers(1, num_items + 1), rng.choice([1, 2])
    for t in range(length):
      item = (start + stride * t - 1) % num_items + 1
      if rng.random() < 0.1:
        item = rng.integers(1, num_items + 1)
      lines.append(f"{u}::{item}::4::{1000 + 10 * t}")
  path = folder / "ml-1m" / "ratings.dat"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")
  return folder


def tiny_config(data_dir: Path, **overrides):
  c = default.get_config()
  c.dataset, c.data_dir, c.min_interactions, c.max_len = "ml-1m", str(data_dir), 0, 8
  c.sasrec.dim, c.sasrec.num_blocks, c.svd.dim = 16, 1, 8
  c.mlp.hidden = (16,)
  c.fm.factor_dim = c.neural_fm.factor_dim = 8
  c.neural_fm.hidden = (8,)
  c.mol.update(num_query_components=2, num_item_components=2, component_dim=8, gating_hidden=8,
               item_dropout=0.1)
  c.sasrec.dropout = c.mlp.dropout = c.fm.dropout = c.neural_fm.dropout = 0.0
  c.mol.softmax_dropout = 0.0  # dropout noise hides learning on 16 sequences
  c.num_negatives = 8
  c.train.batch_size, c.eval.batch_size = 16, 16
  c.train.learning_rate = 1e-2
  c.eval.ks = (1, 5, 10)
  c.eval.chunk_size = 16
  c.train.epochs = 4
  c.eval.patience = 0
  for k, v in overrides.items():
    target = c
    *path, last = k.split(".")
    for p in path:
      target = target[p]
    target[last] = v
  return c


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_ml(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("encoder", ["sasrec", "svd"])
@pytest.mark.parametrize("head", ["dot", "mlp", "fm", "neural_fm", "mol"])
@pytest.mark.parametrize("loss", ["bce", "ss"])
def test_every_combination_learns(tiny_dir, encoder, head, loss):
  config = tiny_config(tiny_dir, encoder=encoder, head=head, loss=loss)
  if encoder == "svd":
    config.svd.trainable = True  # a frozen SVD with a dot head has nothing to learn
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  svd = train.svd_factors_for(config, seqs, split) if encoder == "svd" else None
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0), svd)
  batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
  step = jax.jit(train.make_train_step(model, config, seqs.num_items))
  rng = jax.random.key(1)
  losses = []
  for _ in range(30):
    state, m = step(state, batch, rng)
    losses.append(float(m["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.95 * np.mean(losses[:5]), losses


def test_full_softmax_loss_learns(tiny_dir):
  config = tiny_config(tiny_dir, loss="softmax", head="dot")
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
  step = jax.jit(train.make_train_step(model, config, seqs.num_items))
  first = last = None
  for i in range(10):
    state, m = step(state, batch, jax.random.key(1))
    first = float(m["loss"]) if i == 0 else first
    last = float(m["loss"])
  assert last < first


def jitted_train_step(config):
  """(seqs, split, mesh, replicated initial state, jitted train step) of a config."""
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  mesh = sharding.make_mesh(1)
  state = sharding.replicate(train.init_state(config, model, seqs.num_items,
                                              jax.random.key(0)), mesh)
  step = jax.jit(train.make_train_step(model, config, seqs.num_items), donate_argnums=0)
  return seqs, split, mesh, state, step


def test_train_step_compiles_once(tiny_dir):
  config = tiny_config(tiny_dir, head="mol")
  seqs, split, mesh, state, step = jitted_train_step(config)
  batches = data_lib.TrainBatches(seqs, split, config.max_len, 16)
  for epoch in range(2):
    for batch in batches.epoch(0, epoch):
      state, _ = step(state, sharding.shard_batch(batch, mesh), jax.random.key(0))
  assert step._cache_size() == 1


def test_unknown_names_fail_fast(tiny_dir):
  for field, valid in (("encoder", "sasrec, svd"), ("head", "dot, fm, mlp, mol, neural_fm"),
                       ("loss", "bce, softmax, ss")):
    config = tiny_config(tiny_dir, **{field: "nope"})
    with pytest.raises(ConfigError, match=f"unknown .*'nope'; valid names: {valid}"):
      train.build_model(config, 10)


def run_cli(*args, timeout=300):
  env = {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                        env=env, timeout=timeout)


def cli_args(tiny_dir, workdir, epochs=10):
  return ["experiments.run", "--dataset=ml-1m", "--head=dot", f"--data_dir={tiny_dir}",
          "--min_interactions=0",
          f"--workdir={workdir}", f"--epochs={epochs}", "--config.max_len=8",
          "--config.sasrec.dim=16", "--config.mol.num_query_components=2",
          "--config.mol.num_item_components=2", "--config.mol.component_dim=8",
          "--config.mol.gating_hidden=8", "--config.num_negatives=8",
          "--config.train.batch_size=16", "--config.eval.batch_size=16",
          "--config.eval.ks=(1,5,10)", "--config.eval.patience=0"]


def test_run_then_evaluate_reproduces_test_metrics(tiny_dir, tmp_path):
  """`experiments.evaluate` recomputes a finished run's test_metrics.json exactly from its
  checkpoint. (Resuming a killed run is faults_test's: SIGKILL at 10 moments.)"""
  ref_dir = tmp_path / "ref"
  r = run_cli(*cli_args(tiny_dir, ref_dir))
  assert r.returncode == 0, r.stderr[-2000:]
  reference = json.loads((ref_dir / "test_metrics.json").read_text())
  assert len((ref_dir / "metrics.jsonl").read_text().splitlines()) == 10 * 2 + 1

  r = run_cli("experiments.evaluate", f"--workdir={ref_dir}")
  assert r.returncode == 0, r.stderr[-2000:]
  again = json.loads((ref_dir / "test_metrics_eval.json").read_text())
  assert again and all(again[k] == reference[k] for k in again)


def test_cli_errors_are_one_line(tiny_dir, tmp_path):
  for extra, match in ((["--head=nope"], "unknown head 'nope'; valid names"),
                       (["--config.train.batch_size=nope"], "config.train.batch_size"),
                       (["--config.train.num_devices=1", "--config.train.batch_size=16",
                         "--dataset=ml-20m"], "not found")):
    r = run_cli(*cli_args(tiny_dir, tmp_path / "w"), *extra)
    assert r.returncode == 2, (extra, r.stderr[-1000:])
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], r.stderr[-1000:]


def test_position_budget_keeps_every_real_position_when_they_fit(tiny_dir):
  """Scoring only a budget of positions gives the exact loss if all real ones fit in it."""
  losses = {}
  for budget in (1.0, 0.6):
    config = tiny_config(tiny_dir, head="mol", max_len=20, **{"train.position_budget": budget,
                                                             "mol.item_dropout": 0.0})
    seqs, split = train.load_data(config)
    model = train.build_model(config, seqs.num_items)
    state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
    batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
    assert batch["mask"].mean() <= 0.6  # 11 real positions of 20 per row
    _, m = jax.jit(train.make_train_step(model, config, seqs.num_items))(
        state, batch, jax.random.key(3))
    losses[budget] = (float(m["loss"]), float(m["positions"]))
  assert losses[1.0][1] == losses[0.6][1] == batch["mask"].sum()
  assert losses[0.6][0] == pytest.approx(losses[1.0][0], rel=1e-5)
  # A budget below the real positions scores a random subset of them.
  config = tiny_config(tiny_dir, head="dot", max_len=20, **{"train.position_budget": 0.25})
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  _, m = jax.jit(train.make_train_step(model, config, seqs.num_items))(
      state, batch, jax.random.key(3))
  assert float(m["positions"]) == 16 * 20 * 0.25


@pytest.mark.parametrize("head,shared", [("mol", True), ("mlp", False)])
def test_chunked_scoring_equals_unchunked(tiny_dir, head, shared):
  """Scoring positions in checkpointed chunks gives the same loss and gradients.

  (MoL's load-balancing loss becomes a mean of per-chunk values, so it is off here.)
  """
  out = {}
  for chunk in (0, 7):
    config = tiny_config(tiny_dir, head=head, shared_negatives=shared, mol_aux_weight=0.0,
                         **{"train.score_chunk": chunk, "mol.item_dropout": 0.0})
    seqs, split = train.load_data(config)
    model = train.build_model(config, seqs.num_items)
    state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
    batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
    new_state, m = jax.jit(train.make_train_step(model, config, seqs.num_items))(
        state, batch, jax.random.key(3))
    out[chunk] = (float(m["loss"]), float(m["grad_norm"]), new_state.params)
  assert out[7][0] == pytest.approx(out[0][0], rel=1e-5)
  assert out[7][1] == pytest.approx(out[0][1], rel=1e-4)
  # Adam turns round-off-sized gradients into full steps, so compare within one step (lr).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-2), out[0][2], out[7][2])


def test_hindexer_trains_jointly_and_feeds_the_index(tiny_dir):
  """With hindexer_dim > 0 the stage-1 towers learn from the auxiliary loss, and the index
  built from the trained model uses them."""
  from jaxret.retrieval import MoLIndex
  config = tiny_config(tiny_dir, head="mol", hindexer_dim=8)
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  assert "hindexer" in state.params
  batch = next(data_lib.TrainBatches(seqs, split, config.max_len, 16).epoch(0, 0))
  step = jax.jit(train.make_train_step(model, config, seqs.num_items))
  h = []
  for _ in range(20):
    state, m = step(state, batch, jax.random.key(1))
    h.append(float(m["hindexer_loss"]))
  assert h[0] > 0 and np.mean(h[-3:]) < 0.9 * np.mean(h[:3]), h
  index = MoLIndex.from_model(model, state.params)
  queries = model.apply({"params": state.params}, batch["inputs"][:4],
                        method=type(model).last_query)
  ids, _ = index.retrieve(queries, k=5, k_prime=seqs.num_items, generator="hindexer")
  exact_ids, _ = index.exact_mol_topk(queries, k=5)
  np.testing.assert_array_equal(np.sort(ids, -1), np.sort(exact_ids, -1))


def test_more_epochs_continue_a_finished_run(tiny_dir, tmp_path):
  config = tiny_config(tiny_dir, head="dot", **{"train.epochs": 2})
  first = train.train_and_evaluate(config, tmp_path, log=lambda s: None)
  assert first["epochs"] == 2
  config.train.epochs = 3
  second = train.train_and_evaluate(config, tmp_path, log=lambda s: None)
  assert second["epochs"] == 3
  epochs = [json.loads(ln)["epoch"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["split"] == "train"]
  assert epochs == [1, 2, 3]


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path,
                                                                         monkeypatch):
  from jaxret import losses as losses_lib
  config = tiny_config(tiny_dir, head="dot", **{"train.epochs": 1})
  train.train_and_evaluate(config, tmp_path, log=lambda s: None)
  good = sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir())
  real_ss = losses_lib.LOSSES.get("ss")

  def nan_ss(*args, **kwargs):
    loss_sum, weight = real_ss(*args, **kwargs)
    return loss_sum * jnp.nan, weight

  monkeypatch.setitem(losses_lib.LOSSES._entries, "ss", nan_ss)
  config.train.epochs = 2
  with pytest.raises(train.TrainingError, match=r"non-finite loss \(nan\) at step 4 \(epoch 2\)"):
    train.train_and_evaluate(config, tmp_path, log=lambda s: None)
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == good


def test_same_seed_same_metrics_different_seed_different(tiny_dir, tmp_path):
  results = []
  for i, seed in enumerate((0, 0, 1)):
    config = tiny_config(tiny_dir, head="dot", seed=seed, **{"train.epochs": 2})
    config.sasrec.dropout = 0.2  # randomness on: dropout, negatives and shuffling all seeded
    results.append(train.train_and_evaluate(config, tmp_path / str(i), log=lambda s: None))
  keys = [k for k in results[0] if k != "train_time"]
  assert all(results[0][k] == results[1][k] for k in keys)
  assert any(results[0][k] != results[2][k] for k in keys)


def test_rbg_prng_is_seeded_and_an_unknown_impl_fails_fast(tiny_dir, tmp_path):
  results = []
  for i, impl in enumerate(("rbg", "rbg", "threefry2x32")):
    config = tiny_config(tiny_dir, head="mol", prng_impl=impl, **{"train.epochs": 2})
    config.sasrec.dropout = 0.2
    results.append(train.train_and_evaluate(config, tmp_path / str(i), log=lambda s: None))
  keys = [k for k in results[0] if k != "train_time"]
  assert all(np.isfinite(results[0][k]) for k in keys)
  assert all(results[0][k] == results[1][k] for k in keys)
  assert any(results[0][k] != results[2][k] for k in keys)
  with pytest.raises(ConfigError, match="unknown --config.prng_impl 'philox'; valid names: "
                                        "threefry2x32, rbg, unsafe_rbg"):
    train.validate_config(tiny_config(tiny_dir, prng_impl="philox"))


def test_warm_start_loads_the_encoder_of_another_run(tiny_dir, tmp_path):
  # The source decays its learning rate (as the fast dot recipe does): only its params count.
  dot = tiny_config(tiny_dir, head="dot", **{"train.epochs": 2, "train.lr_decay_epochs": 2})
  train.train_and_evaluate(dot, tmp_path / "dot", log=lambda s: None)
  mol = tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"))
  seqs, _ = train.load_data(mol)
  fresh = train.init_state(mol, train.build_model(mol, seqs.num_items), seqs.num_items,
                           jax.random.key(3)).params
  params, loaded = train.warm_start_encoder(mol, fresh, seqs.num_items)
  assert "encoder initialised from" in loaded and "dot head" in loaded
  dot_model = train.build_model(dot, seqs.num_items)
  template = train.init_params(dot, dot_model, jax.random.key(0))
  ckpt = Checkpointer(tmp_path / "dot")
  (best, _), _ = ckpt.restore("best", {"params": template}), ckpt.close()
  for a, b in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(best["params"]["encoder"])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(params["encoder"]["item_embedding"]["embedding"],
                            fresh["encoder"]["item_embedding"]["embedding"])
  for a, b in zip(jax.tree.leaves(params["head"]), jax.tree.leaves(fresh["head"])):
    np.testing.assert_array_equal(a, b)                 # the head starts fresh
  logs = []
  train.train_and_evaluate(tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"),
                                       **{"train.epochs": 1}), tmp_path / "mol", log=logs.append)
  assert any("encoder initialised from" in line for line in logs)
  shutil.copytree(tmp_path / "dot", tmp_path / "dot_copy")
  shutil.rmtree(tmp_path / "dot")   # a resumed run needs only its own checkpoint
  logs = []
  train.train_and_evaluate(tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"),
                                       **{"train.epochs": 2}), tmp_path / "mol", log=logs.append)
  assert any("resumed from" in line for line in logs)
  assert not any("encoder initialised from" in line for line in logs)
  shutil.move(tmp_path / "dot_copy", tmp_path / "dot")

  wider = tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"))
  wider.sasrec.dim = 24
  with pytest.raises(ConfigError, match="encoder does not match this run's"):
    train.warm_start_encoder(wider, train.init_state(
        wider, train.build_model(wider, seqs.num_items), seqs.num_items,
        jax.random.key(0)).params, seqs.num_items)
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text((tmp_path / "dot" / "config.json").read_text())
  with pytest.raises(ConfigError, match="untrained: no checkpoints/best there"):
    train.warm_start_encoder(tiny_config(tiny_dir, head="mol", init_from=str(untrained)),
                             fresh, seqs.num_items)
  assert not (untrained / "checkpoints").exists()   # the source folder is left as it was
  with pytest.raises(ConfigError, match="init_from=.*nowhere: no config.json there"):
    train.warm_start_encoder(tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "nowhere")),
                             fresh, seqs.num_items)


def test_init_head_as_dot_starts_mol_with_the_dot_runs_scores(tiny_dir, tmp_path):
  dot = tiny_config(tiny_dir, head="dot", **{"train.epochs": 2})
  train.train_and_evaluate(dot, tmp_path / "dot", log=lambda s: None)
  mol = tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"), init_head_as_dot=True,
                    **{"mol.query_hidden": 0, "mol.component_dim": 20})
  seqs, _ = train.load_data(mol)
  mol_model = train.build_model(mol, seqs.num_items)
  fresh = train.init_state(mol, mol_model, seqs.num_items, jax.random.key(3)).params
  params, loaded = train.warm_start_encoder(mol, fresh, seqs.num_items)
  assert "MoL components start as the dot head" in loaded
  dot_model = train.build_model(dot, seqs.num_items)
  template = train.init_params(dot, dot_model, jax.random.key(0))
  ckpt = Checkpointer(tmp_path / "dot")
  (best, _), _ = ckpt.restore("best", {"params": template}), ckpt.close()
  q, items = jax.random.normal(jax.random.key(1), (3, 16)), jax.random.normal(
      jax.random.key(2), (3, 7, 16))
  want = dot_model.head.apply({"params": best["params"].get("head", {})}, q, items)
  got = mol_model.head.apply({"params": params["head"]}, q, items)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  fresh_scores = mol_model.head.apply({"params": fresh["head"]}, q, items)
  assert not np.allclose(fresh_scores, want, atol=1e-2)
  for a, b in zip(jax.tree.leaves(params["head"]["logits_gate"]),
                  jax.tree.leaves(fresh["head"]["logits_gate"])):
    np.testing.assert_array_equal(a, b)                 # the gating starts fresh
  bad = [({"mol.component_dim": 20}, "set --config.mol.query_hidden=0"),
         ({"mol.query_hidden": 0, "mol.component_dim": 20, "mol.temperature": 0.1},
          "mol.temperature 0.1 != the dot run's dot.temperature 0.05"),
         ({"mol.query_hidden": 0}, "component_dim >= the encoder dim 16, got 8"),
         ({"mol.query_hidden": 0, "mol.component_dim": 20, "mol.num_user_components": 1,
           "mol.user_hash_buckets": 7}, "set --config.mol.num_user_components=0")]
  for overrides, message in bad:
    config = tiny_config(tiny_dir, head="mol", init_from=str(tmp_path / "dot"),
                         init_head_as_dot=True, **overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
      train.warm_start_encoder(config, fresh, seqs.num_items)
  config = tiny_config(tiny_dir, head="dot", init_from=str(tmp_path / "dot"),
                       init_head_as_dot=True)
  with pytest.raises(ConfigError, match="needs --head=mol, got 'dot'"):
    train.warm_start_encoder(config, fresh, seqs.num_items)
  with pytest.raises(ConfigError, match="give that run with --config.init_from"):
    train.validate_config(tiny_config(tiny_dir, head="mol", init_head_as_dot=True))


def test_cosine_learning_rate_schedule():
  config = default.get_config()
  config.train.learning_rate, config.train.warmup_steps = 1e-3, 10
  lr = train.learning_rate_schedule(config, 50)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(10_000)], [0.0, 5e-4, 1e-3, 1e-3])
  config.train.lr_decay_epochs, config.train.lr_final_ratio = 4, 0.1
  lr = train.learning_rate_schedule(config, steps_per_epoch=50)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(110), lr(210), lr(400)],
                             [0.0, 5e-4, 1e-3, 5.5e-4, 1e-4, 1e-4], rtol=1e-5, atol=1e-9)
  with pytest.raises(ValueError, match="steps per epoch"):
    train.make_optimizer(config)
  config.train.warmup_steps = 0
  lr = train.learning_rate_schedule(config, steps_per_epoch=50)
  np.testing.assert_allclose([lr(0), lr(100), lr(200)], [1e-3, 5.5e-4, 1e-4], rtol=1e-5)


def test_sampled_candidate_evaluation(tiny_dir):
  """eval.sampled_negatives S: with S >= every ranking's other candidates the metrics equal
  full ranking; with a small S they are the mean of brute-force sampled rankings."""
  config = tiny_config(tiny_dir, head="dot")
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  mesh = sharding.make_mesh(1)
  batches = data_lib.EvalBatches(seqs, split.eval_examples("test"), config.max_len, 16)

  def run(s):
    c = tiny_config(tiny_dir, head="dot", **{"eval.sampled_negatives": s})
    step = jax.jit(train.make_eval_step(model, c, seqs.num_items))
    return train.evaluate(step, state.params, batches, mesh, "test",
                          train.eval_sampling(c, seqs.num_items))

  full, everything = run(0), run(seqs.num_items)
  assert full.keys() == everything.keys()
  for k in full:
    assert everything[k] == pytest.approx(full[k], abs=1e-6), k
  few = run(5)
  assert few["hr@5"] > full["hr@5"] and few["mrr"] > full["mrr"]
  with pytest.raises(ConfigError, match="sampled_negatives must be an integer >= 0"):
    train.validate_config(tiny_config(tiny_dir, **{"eval.sampled_negatives": -1}))


def _changed(before, after) -> bool:
  return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                      jax.tree.leaves(after)))


def test_encoder_frozen_for_its_epochs_then_scaled(tiny_dir):
  config = tiny_config(tiny_dir, head="mol", **{"train.freeze_encoder_epochs": 1,
                                               "train.encoder_lr_scale": 0.5})
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  batches = data_lib.TrainBatches(seqs, split, config.max_len, 16)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0),
                           steps_per_epoch=batches.steps_per_epoch)
  step = jax.jit(train.make_train_step(model, config, seqs.num_items))
  start = jax.device_get(state.params)
  for batch in batches.epoch(0, 0):
    state, _ = step(state, batch, jax.random.key(0))
  frozen = jax.device_get(state.params)
  assert not _changed(start["encoder"], frozen["encoder"])     # item embeddings included
  assert _changed(start["head"], frozen["head"])
  state, _ = step(state, next(iter(batches.epoch(0, 1))), jax.random.key(0))
  assert _changed(frozen["encoder"], jax.device_get(state.params)["encoder"])

  scale = train.encoder_update_scale(config, steps_per_epoch=3)
  np.testing.assert_allclose([scale(0), scale(2), scale(3), scale(100)], [0, 0, 0.5, 0.5])
  assert train.encoder_update_scale(default.get_config()) is None  # the plain optimizer
  with pytest.raises(ValueError, match="steps per epoch"):
    train.make_optimizer(config)


def test_encoder_update_options_are_validated(tiny_dir):
  for field, value in (("train.freeze_encoder_epochs", -1), ("train.encoder_lr_scale", -0.1),
                       ("train.encoder_lr_scale", float("nan"))):
    config = tiny_config(tiny_dir, **{field: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      train.validate_config(config)


def test_eval_chunk_and_buffer_settings_leave_the_metrics_unchanged(tiny_dir):
  """Full ranking gives the same metrics whatever the item chunk and whether a batch's
  scores are kept (one scoring pass) or recomputed (two passes); -1 picks a chunk per head."""
  config = tiny_config(tiny_dir, head="mol")
  seqs, split = train.load_data(config)
  model = train.build_model(config, seqs.num_items)
  state = train.init_state(config, model, seqs.num_items, jax.random.key(0))
  mesh = sharding.make_mesh(1)
  batches = data_lib.EvalBatches(seqs, split.eval_examples("test"), config.max_len, 16)

  def run(chunk, buffered):
    c = tiny_config(tiny_dir, head="mol", **{"eval.chunk_size": chunk,
                                             "eval.max_buffered_scores": buffered})
    train.validate_config(c)
    step = jax.jit(train.make_eval_step(model, c, seqs.num_items))
    return train.evaluate(step, state.params, batches, mesh, "test")

  want = run(7, 0)
  for chunk, buffered in ((7, 1 << 25), (-1, 0), (-1, 1 << 25), (4096, 1 << 25)):
    got = run(chunk, buffered)
    assert got.keys() == want.keys()
    for k in want:
      assert got[k] == pytest.approx(want[k], abs=1e-6), (chunk, buffered, k)
  auto = {"eval.chunk_size": -1}
  assert train.eval_chunk_size(tiny_config(tiny_dir, head="mol", **auto)) == 64
  assert train.eval_chunk_size(tiny_config(tiny_dir, head="dot", **auto)) == 4096
  assert train.eval_chunk_size(tiny_config(tiny_dir, head="mol")) == 16   # as set
  for field, value in (("eval.chunk_size", 0), ("eval.chunk_size", -2),
                       ("eval.max_buffered_scores", -1)):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
      train.validate_config(tiny_config(tiny_dir, **{field: value}))
