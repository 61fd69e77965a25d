"""Training and evaluation: pure jitted steps and the `train_and_evaluate` loop.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(params, batch) -> sums`
are built once per run by `make_train_step` / `make_eval_step` and jitted over the device
mesh (batch split on `data`, parameters replicated); per-step randomness is
`fold_in(rng, state.step)`. Metrics are returned as sums plus weights so averages are exact
across devices and padded batches.
"""
from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm.auto import tqdm

from jaxret import data as data_lib
from jaxret import losses as losses_lib
from jaxret import metrics as metrics_lib
from jaxret import sharding
from jaxret.checkpoint import Checkpointer
from jaxret.errors import ConfigError, JaxretError
from jaxret.models import encoders as encoders_lib
from jaxret.models import heads as heads_lib
from jaxret.models.retrieval import RetrievalModel
from jaxret.retrieval.hindexer import HIndexedRetrievalModel, HIndexer, hindexer_loss

DEFAULT_NEGATIVES = {"bce": 127, "ss": 128, "softmax": 0}
_MAX_STEPS_IN_FLIGHT = 2  # training steps dispatched ahead of the host


class TrainingError(JaxretError):
  """Training cannot go on (e.g. a non-finite loss)."""


class TrainState(train_state.TrainState):
  pass


# ----------------------------------------------------------------------------- building


def _section(config: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
  section = config.get(name)
  return dict(section) if section is not None else {}


def build_model(config: ml_collections.ConfigDict, num_items: int) -> RetrievalModel:
  encoder_cls = encoders_lib.ENCODERS.get(config.encoder)
  head_cls = heads_lib.HEADS.get(config.head)
  losses_lib.LOSSES.get(config.loss)  # fail fast on an unknown loss name
  enc_kwargs = _section(config, config.encoder)
  if config.encoder == "sasrec":
    enc_kwargs["max_len"] = config.max_len
  try:
    encoder = encoder_cls(num_items=num_items, **enc_kwargs)
    head = head_cls(**_section(config, config.head))
  except TypeError as e:
    raise ConfigError(f"bad option in --config.{config.encoder} or --config.{config.head}: {e}")
  if config.get("hindexer_dim", 0) > 0:
    return HIndexedRetrievalModel(encoder=encoder, head=head,
                                  hindexer=HIndexer(dim=config.hindexer_dim))
  return RetrievalModel(encoder=encoder, head=head)


def num_negatives(config: ml_collections.ConfigDict) -> int:
  n = config.num_negatives
  return DEFAULT_NEGATIVES[config.loss] if n is None or n < 0 else int(n)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int | None = None) -> Any:
  """The learning rate of `config.train`: a float, or a step -> rate schedule.

  Linear warm-up over `warmup_steps`, then constant, or with `lr_decay_epochs` > 0 a cosine
  decay to `learning_rate * lr_final_ratio` over that many epochs (counted after warm-up).
  Without warm-up or decay it stays a float, so optimizer states (and checkpoints) keep the
  structure they had before schedules existed.
  """
  t = config.train
  peak, decay_epochs = t.learning_rate, t.get("lr_decay_epochs", 0)
  if decay_epochs <= 0:
    return optax.linear_schedule(0.0, peak, t.warmup_steps) if t.warmup_steps > 0 else peak
  if not steps_per_epoch:
    raise ValueError("--config.train.lr_decay_epochs needs the number of steps per epoch: "
                     "pass steps_per_epoch to make_optimizer / init_state")
  decay = optax.cosine_decay_schedule(peak, decay_epochs * steps_per_epoch,
                                      alpha=t.get("lr_final_ratio", 0.0))
  if t.warmup_steps <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, t.warmup_steps), decay],
                              [t.warmup_steps])


def encoder_update_scale(config: ml_collections.ConfigDict,
                         steps_per_epoch: int | None = None) -> Callable | None:
  """step -> multiplier of the encoder's updates (0 while frozen, then encoder_lr_scale), or
  None when both options are off (the optimizer then keeps its plain structure)."""
  t = config.train
  scale, frozen = float(t.get("encoder_lr_scale", 1.0)), int(t.get("freeze_encoder_epochs", 0))
  if scale == 1.0 and frozen == 0:
    return None
  if frozen and not steps_per_epoch:
    raise ValueError("--config.train.freeze_encoder_epochs needs the number of steps per "
                     "epoch: pass steps_per_epoch to make_optimizer / init_state")
  boundary = frozen * (steps_per_epoch or 0)
  return lambda step: jnp.where(step < boundary, 0.0, scale)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  t = config.train
  lr = learning_rate_schedule(config, steps_per_epoch)
  parts = []
  if t.grad_clip and t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  adamw = optax.adamw(lr, b1=0.9, b2=0.98, weight_decay=t.weight_decay)
  encoder_scale = encoder_update_scale(config, steps_per_epoch)
  if encoder_scale is None:
    parts.append(adamw)
  else:
    parts.append(optax.multi_transform(
        {"encoder": optax.chain(adamw, optax.scale_by_schedule(encoder_scale)), "rest": adamw},
        lambda params: {name: "encoder" if name == "encoder" else "rest" for name in params}))
  return optax.chain(*parts)


def init_state(config: ml_collections.ConfigDict, model: RetrievalModel, num_items: int,
               rng: jax.Array, svd_factors: np.ndarray | None = None,
               steps_per_epoch: int | None = None) -> TrainState:
  params = init_params(config, model, rng)
  if svd_factors is not None:
    params = {**params, "encoder": encoders_lib.with_svd_factors(
        {"params": params["encoder"]}, svd_factors)["params"]}
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(config, steps_per_epoch))


def init_params(config: ml_collections.ConfigDict, model: RetrievalModel, rng: jax.Array) -> Any:
  dummy = jnp.ones((1, config.max_len), jnp.int32)
  return model.init({"params": rng, "dropout": rng}, dummy, dummy,
                    jnp.ones((2,), jnp.int32))["params"]


def warm_start_encoder(config: ml_collections.ConfigDict, params: Any, num_items: int) -> tuple[
    Any, str]:
  """`params` with the encoder (item embeddings included) of `config.init_from`'s best checkpoint.

  Returns (params, a one-line description of what was loaded). ConfigError when the folder
  holds no finished run's config.json or best checkpoint, or when its encoder's shapes differ.
  """
  src = Path(config.init_from)
  if not (src / "config.json").is_file():
    raise ConfigError(f"--config.init_from={src}: no config.json there; pass the workdir of a "
                      f"training run (python -m experiments.run --workdir=...)")
  src_config = ml_collections.ConfigDict(json.loads((src / "config.json").read_text()))
  src_model = build_model(src_config, num_items)
  shapes = jax.eval_shape(lambda: init_params(src_config, src_model, jax.random.key(0)))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  restored = None
  if any((src / "checkpoints" / "best").glob("*")):  # Checkpointer would create the folders
    ckpt = Checkpointer(src)
    try:
      restored = ckpt.restore("best", {"params": template})
    finally:
      ckpt.close()
  if restored is None:
    raise ConfigError(f"--config.init_from={src}: no checkpoints/best there; train that run "
                      f"first")
  (tree, meta) = restored
  encoder = tree["params"]["encoder"]
  def shapes_of(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)
  if shapes_of(params["encoder"]) != shapes_of(encoder):
    raise ConfigError(f"--config.init_from={src}: its {src_config.encoder} encoder does not "
                      f"match this run's (layers or shapes differ, e.g. another dataset, "
                      f"max_len or encoder size); warm-start from a run of the same encoder")
  encoder = jax.tree.map(lambda x, ref: jnp.asarray(x, ref.dtype), encoder, params["encoder"])
  loaded = (f"encoder initialised from {src}/checkpoints/best (epoch {meta.get('best_epoch')}, "
            f"{src_config.head} head, valid {src_config.eval.metric} {meta.get('best', 0):.4f})")
  params = {**params, "encoder": encoder}
  if config.get("init_head_as_dot"):
    params = {**params, "head": mol_head_as_dot(config, src_config, params["head"])}
    loaded += "; MoL components start as the dot head (init_head_as_dot)"
  return params, loaded


def mol_head_as_dot(config: ml_collections.ConfigDict, src_config: ml_collections.ConfigDict,
                    head_params: Any) -> Any:
  """MoL head params whose score equals the l2-normalised dot head of `src_config`.

  The linear component projections become zero-padded identities (D -> d, bias 0) for every
  component: all P logits are cos(q, i) / tau, and the gating's weights, which sum to 1, leave
  that unchanged. The gating MLPs keep their fresh init, so the components diverge in training.
  """
  if config.head != "mol":
    raise ConfigError(f"--config.init_head_as_dot needs --head=mol, got {config.head!r}")
  if src_config.head != "dot" or not src_config.dot.normalize:
    raise ConfigError(f"--config.init_head_as_dot: --config.init_from={config.init_from} "
                      f"trained a {src_config.head!r} head; it needs an l2-normalised dot run "
                      f"(--head=dot --config.dot.normalize=True)")
  if config.mol.get("num_user_components", 0) and config.mol.get("user_hash_buckets", 0):
    raise ConfigError("--config.init_head_as_dot: user-id MoL components have no dot "
                      "counterpart; set --config.mol.num_user_components=0")
  if config.mol.query_hidden or config.mol.get("item_hidden", 0):
    raise ConfigError("--config.init_head_as_dot needs linear MoL projections: set "
                      "--config.mol.query_hidden=0 (and mol.item_hidden=0)")
  if config.mol.temperature != src_config.dot.temperature:
    raise ConfigError(f"--config.init_head_as_dot: mol.temperature {config.mol.temperature} "
                      f"!= the dot run's dot.temperature {src_config.dot.temperature}; make "
                      f"them equal")
  out = dict(head_params)
  d = config.mol.component_dim
  for name, comps in (("query_out_proj", config.mol.num_query_components),
                      ("item_out_proj", config.mol.num_item_components)):
    kernel = head_params[name]["kernel"]                                 # (D, comps * d)
    if kernel.shape[0] > d:
      raise ConfigError(f"--config.init_head_as_dot needs mol.component_dim >= the encoder "
                        f"dim {kernel.shape[0]}, got {d}")
    eye = jnp.eye(kernel.shape[0], d, dtype=kernel.dtype)
    out[name] = {"kernel": jnp.tile(eye, (1, comps)),
                 "bias": jnp.zeros_like(head_params[name]["bias"])}
  return out


def svd_factors_for(config, seqs: data_lib.Sequences, split: data_lib.Split) -> np.ndarray:
  """Item factors of a truncated SVD of the training interactions (train prefixes only)."""
  users = np.repeat(np.arange(seqs.num_users), split.train_len)
  starts = np.repeat(seqs.user_ptr[:-1], split.train_len)
  offsets = np.arange(len(users)) - np.repeat(np.cumsum(split.train_len) - split.train_len,
                                              split.train_len)
  items = seqs.items[starts + offsets]
  return encoders_lib.svd_item_factors(users, items, seqs.num_users, seqs.num_items,
                                       config.svd.dim, seed=config.seed)


# ----------------------------------------------------------------------------- steps


def _aux_sum(variables: Any) -> jax.Array:
  leaves = jax.tree.leaves(variables.get("aux_loss", {}))
  return sum((jnp.sum(x) for x in leaves), jnp.zeros((), jnp.float32))


def select_positions(rng: jax.Array, mask: jax.Array, targets: jax.Array, negatives: jax.Array,
                     budget: float, full_len: int | None = None):
  """Picks T = ceil(budget * B * full_len) positions to score (full_len: the batch's L by
  default; the run's max_len when batches are cut to length buckets, so the budget is a
  count of positions, whatever the bucket): every real one when they fit, else a uniform
  random subset of the real ones. Returns (positions (T,), targets (T,), mask (T,),
  negatives (R,) or (T, R)). Padding is about half of ML-1M's positions at L=200, so a
  budget of ~0.6 halves the head's cost (MoL's dominant one) without dropping real targets
  in most batches. A budget of at least all B * L positions keeps them all (T = B * L).
  """
  flat_mask = mask.reshape(-1)
  full = flat_mask.shape[0] if full_len is None else mask.shape[0] * full_len
  t = min(flat_mask.shape[0], max(1, math.ceil(budget * full)))
  if t == flat_mask.shape[0]:
    positions = jnp.arange(t, dtype=jnp.int32)
  else:
    priority = (flat_mask > 0) + jax.random.uniform(rng, flat_mask.shape)  # real ones first
    _, positions = jax.lax.top_k(priority, t)
  sel_targets = targets.reshape(-1)[positions]
  sel_mask = flat_mask[positions]
  if negatives.ndim > 1:
    negatives = negatives.reshape(-1, negatives.shape[-1])[positions]
  return positions, sel_targets, sel_mask, negatives


def score_positions(model: RetrievalModel, variables: Any, queries: jax.Array,
                    targets: jax.Array, negatives: jax.Array, rng: jax.Array, chunk: int):
  """Scores each position's target and negatives, `chunk` positions at a time.

  queries (T, D), targets (T,), negatives (R,) shared or (T, R). Returns pos (T,),
  neg (T, R) and the summed auxiliary losses the head sowed. With 0 < chunk < T the
  positions are scored by a `lax.map` over chunks under `jax.checkpoint`, so a head's
  (chunk, R, ...) intermediates stay small and are recomputed in the backward pass instead
  of being stored: about 2x faster for MoL on CPU. Dropout keys differ per chunk.
  A sided head (MoL) computes its query side of all T positions, and the item side of
  shared negatives, once outside the chunks (they are not recomputed in the backward pass).
  """
  sided = model.has_sides
  per_position = negatives.ndim > 1
  if sided:
    q_key, n_key, rng = jax.random.split(rng, 3)
    queries = model.apply(variables, queries, method=RetrievalModel.query_sides,
                          deterministic=False, rngs={"dropout": q_key})
    if not per_position:
      negatives = model.apply(variables, negatives, method=RetrievalModel.item_sides,
                              deterministic=False, rngs={"dropout": n_key})

  def score(q, t, n, key):
    method = RetrievalModel.score_sides_pos_neg if sided else RetrievalModel.score_pos_neg
    (pos, neg), variables_out = model.apply(
        variables, q, t, n, method=method, deterministic=False,
        rngs={"dropout": key}, mutable=["aux_loss"])
    return pos, neg, _aux_sum(variables_out)

  t_len = targets.shape[0]
  if chunk <= 0 or chunk >= t_len:
    return score(queries, targets, negatives, rng)
  n_chunks = -(-t_len // chunk)
  pad = n_chunks * chunk - t_len

  def split(x):  # (T, ...) -> (n_chunks, chunk, ...)
    x = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    return x.reshape((n_chunks, chunk) + x.shape[1:])

  q = jax.tree.map(split, queries)
  n = split(negatives) if per_position else jnp.zeros((n_chunks,), jnp.int32)
  keys = jax.random.split(rng, n_chunks)

  @jax.checkpoint
  def one_chunk(args):
    qc, tc, nc, key = args
    return score(qc, tc, nc if per_position else negatives, key)

  pos, neg, aux = jax.lax.map(one_chunk, (q, split(targets), n, keys))
  return (pos.reshape(-1)[:t_len], neg.reshape(n_chunks * chunk, -1)[:t_len],
          jnp.mean(aux))


def length_buckets(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The run's `train.length_buckets` as given (() = full-length batches; older configs lack
  the field)."""
  return tuple(config.train.get("length_buckets") or ())


def make_train_step(model: RetrievalModel, config: ml_collections.ConfigDict,
                    num_items: int) -> Callable:
  """Returns the pure `train_step(state, batch, rng) -> (state, metrics)`."""
  loss_name = config.loss
  loss_fn = losses_lib.LOSSES.get(loss_name)
  if loss_name == "bce":
    loss_fn = functools.partial(loss_fn, negatives=config.get("bce_negatives", "sum"))
  r = num_negatives(config)
  shared = bool(config.shared_negatives)
  aux_weight = float(config.get("mol_aux_weight", 0.0))
  budget = float(config.train.get("position_budget", 1.0))
  chunk = int(config.train.get("score_chunk", -1))
  bucket_full_len = int(config.max_len) if length_buckets(config) else None
  if chunk < 0:  # auto: the per-pair activations of MoL's gating and of the MLP / NeuralFM
    # heads run faster and smaller in chunks of positions (bench_train, CPU: mlp 256 -> 32
    # cuts the step 7.7 -> 4.7 s bce; neural_fm unchunked -> 64 2.3 -> 1.4-1.5 s, RSS 2.7 ->
    # 1.2 GB); the dot and FM heads run unchunked.
    chunk = {"mol": 32, "mlp": 32, "neural_fm": 64}.get(config.head, 0)

  def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    neg_rng, dropout_rng, pos_rng = jax.random.split(step_rng, 3)
    enc_rng, head_rng = jax.random.split(dropout_rng)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    if loss_name == "softmax":
      negatives = jnp.arange(num_items + 1, dtype=jnp.int32)  # every item id, 0 masked below
    elif shared:
      negatives = data_lib.sample_negatives(neg_rng, (r,), num_items)
    else:
      negatives = data_lib.sample_negatives(neg_rng, targets.shape + (r,), num_items, targets)

    if budget < 1.0:
      positions, targets, mask, negatives = select_positions(
          pos_rng, mask, targets, negatives, budget, bucket_full_len)
    else:
      positions = None
      targets, mask = targets.reshape(-1), mask.reshape(-1)
      if negatives.ndim > 1:
        negatives = negatives.reshape(-1, negatives.shape[-1])

    def loss(params):
      variables = {"params": params}
      queries = model.apply(variables, inputs, deterministic=False, rngs={"dropout": enc_rng},
                            method=RetrievalModel.encode)
      queries = queries.reshape(-1, queries.shape[-1])  # (B*L, D)
      if positions is not None:
        queries = queries[positions]  # (T, D)
      pos, neg, aux = score_positions(model, variables, queries, targets, negatives, head_rng,
                                      chunk)
      if loss_name == "softmax":
        loss_sum, weight = loss_fn(neg, targets, mask)
      else:
        valid = losses_lib.valid_negatives(targets, negatives)
        loss_sum, weight = loss_fn(pos, neg, mask, valid)
      main = loss_sum / jnp.maximum(weight, 1.0)
      stage1 = jnp.zeros((), jnp.float32)
      if isinstance(model, HIndexedRetrievalModel):  # stage-1 towers (stop-gradient inputs)
        embed = lambda ids: model.apply(variables, ids, method=RetrievalModel.embed_items)
        h_sum, h_weight = hindexer_loss(
            params["hindexer"], model.hindexer, queries, embed(targets), embed(negatives), mask,
            losses_lib.valid_negatives(targets, negatives), model.hindexer_temperature)
        stage1 = h_sum / jnp.maximum(h_weight, 1.0)
      return main + aux_weight * aux + stage1, (main, aux, stage1, weight)

    (total, (main, aux, stage1, weight)), grads = jax.value_and_grad(loss, has_aux=True)(
        state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"loss": main, "aux_loss": aux, "hindexer_loss": stage1, "total_loss": total,
                   "positions": weight, "grad_norm": optax.tree.norm(grads)}

  return train_step


def eval_cutoffs(config: ml_collections.ConfigDict, num_items: int) -> tuple[int, ...]:
  """The cutoffs of --config.eval.ks that fit the catalog; larger ones are skipped (HR@k of
  a k beyond the catalog is trivially 1). Every cutoff too large, or the validation metric's,
  is an error."""
  ks = tuple(int(k) for k in config.eval.ks)
  kept = tuple(k for k in ks if k <= num_items)
  if not kept:
    raise ConfigError(f"every cutoff in --config.eval.ks={ks} is larger than the {num_items} "
                      f"items of the catalog; use cutoffs <= {num_items}")
  metric_k = _metric_cutoff(config.eval.metric)
  if metric_k is not None and metric_k > num_items:
    raise ConfigError(f"--config.eval.metric={config.eval.metric} needs a cutoff <= the "
                      f"{num_items} items of the catalog; pick e.g. ndcg@{kept[-1]}")
  return kept


def make_eval_step(model: RetrievalModel, config: ml_collections.ConfigDict,
                   num_items: int) -> Callable:
  """Returns `eval_step(params, batch) -> {metric: weighted sum, 'weight': sum}`.

  With `config.eval.sampled_negatives` S > 0 it returns per-example `ranks`, `candidates`
  and `weights` instead; `evaluate` turns them into the expected metrics of ranking each
  target against S sampled candidates (`metrics.sampled_metrics_from_ranks`, on the host).
  """

  def batch_scorer(params, batch: dict[str, jax.Array]) -> metrics_lib.ScoreFn:
    variables = {"params": params}
    queries = model.apply(variables, batch["inputs"], method=RetrievalModel.last_query)
    return lambda ids: model.apply(variables, queries, ids, method=RetrievalModel.score)

  return make_ranking_eval_step(batch_scorer, config, num_items)


# Full-ranking item chunk per head on CPU (scripts/bench_eval.py, 2-core CPU, 256 queries,
# one scoring pass): MoL on Beauty's 12k items 1.67 s per batch at 4096 -> 0.62 s at 64; MLP
# on ml-1m-half 0.78 -> 0.41 s at 64; NeuralFM 0.21 -> 0.12 s at 256; dot and FM fastest at
# 4096. Accelerators (not measured) keep 4096: small chunks would serialise tiny kernels.
EVAL_CHUNKS_CPU = {"mol": 64, "mlp": 64, "neural_fm": 256}
EVAL_CHUNK_DEFAULT = 4096


def eval_chunk_size(config: ml_collections.ConfigDict) -> int:
  """`config.eval.chunk_size`, or with -1 (auto) the head's entry of EVAL_CHUNKS_CPU on CPU
  and EVAL_CHUNK_DEFAULT elsewhere."""
  chunk = int(config.eval.chunk_size)
  if chunk != -1:
    return chunk
  if jax.default_backend() != "cpu":
    return EVAL_CHUNK_DEFAULT
  return EVAL_CHUNKS_CPU.get(config.head, EVAL_CHUNK_DEFAULT)


def make_ranking_eval_step(batch_scorer: Callable[[Any, dict], metrics_lib.ScoreFn],
                           config: ml_collections.ConfigDict, num_items: int) -> Callable:
  """`make_eval_step` for any scorer: `batch_scorer(params, batch)` returns the batch's
  `score_fn(ids (C,)) -> (B, C)` (e.g. `jaxret.baselines`' popularity)."""
  ks = eval_cutoffs(config, num_items)
  chunk = eval_chunk_size(config)
  buffered = int(config.eval.get("max_buffered_scores", metrics_lib.MAX_BUFFERED_SCORES))
  sampled = int(config.eval.get("sampled_negatives", 0))

  def eval_step(params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    score_fn = batch_scorer(params, batch)
    ranks = metrics_lib.chunked_ranks(score_fn, batch["targets"], num_items, batch["exclude"],
                                      chunk_size=chunk, max_buffered_scores=buffered)
    w = batch["weight"]
    if sampled:
      return {"ranks": ranks, "weights": w,
              "candidates": metrics_lib.num_candidates(batch["targets"], batch["exclude"],
                                                       num_items)}
    per_example = metrics_lib.metrics_from_ranks(ranks, ks)
    sums = {k: jnp.sum(jnp.where(w > 0, v, 0.0) * w) for k, v in per_example.items()}
    sums["weight"] = jnp.sum(w)
    return sums

  return eval_step


def eval_sampling(config: ml_collections.ConfigDict,
                  num_items: int) -> tuple[int, tuple[int, ...]] | None:
  """(S, ks) for `evaluate` when `config.eval.sampled_negatives` S > 0, else None."""
  sampled = int(config.eval.get("sampled_negatives", 0))
  return (sampled, eval_cutoffs(config, num_items)) if sampled else None


def evaluate(eval_step: Callable, params: Any, batches: data_lib.EvalBatches, mesh,
             desc: str = "eval", sampled: tuple[int, tuple[int, ...]] | None = None
             ) -> dict[str, float]:
  """Runs `eval_step` over every batch; returns metric means over the real examples.

  `sampled`: `eval_sampling(config, num_items)`, needed by a sampled-candidate `eval_step`.
  """
  totals: dict[str, float] = {}
  for batch in tqdm(batches, total=batches.num_batches, desc=desc, leave=False,
                    disable=jax.process_index() != 0):
    out = jax.device_get(eval_step(params, sharding.shard_batch(batch, mesh)))
    if "ranks" in out:
      if sampled is None:
        raise ValueError("a sampled-candidate eval_step needs evaluate(..., sampled=(S, ks))")
      w = np.asarray(out["weights"], np.float64)
      real = w > 0
      per = metrics_lib.sampled_metrics_from_ranks(out["ranks"][real], out["candidates"][real],
                                                   sampled[0], sampled[1])
      out = {k: float(np.sum(v * w[real])) for k, v in per.items()}
      out["weight"] = float(np.sum(w))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  weight = totals.pop("weight", 0.0)
  return {k: v / weight for k, v in sorted(totals.items())} if weight else {}


# ----------------------------------------------------------------------------- the loop


class _Logger:
  """metrics.jsonl and TensorBoard events in the workdir, written by process 0 only."""

  def __init__(self, workdir: Path):
    self.active = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    if self.active:
      try:
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(workdir / "tensorboard"))
      except ImportError:
        self.tb = None

  def write(self, record: dict[str, Any]) -> None:
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tb is not None:
      for k, v in record.items():
        if isinstance(v, float) and k not in ("wall_time",):
          self.tb.add_scalar(f"{record.get('split', 'train')}/{k}", v, record["step"])
      self.tb.flush()

  def truncate_after(self, epoch: int) -> None:
    """Drops records of epochs after `epoch`, test records and a half-written last line:
    what a run killed after its last checkpoint logged, before it is replayed on resume."""
    if not self.active or not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if record.get("epoch", 0) <= epoch and record.get("split") != "test":
        kept.append(line)
    tmp = self.path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(self.path)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def _metric_cutoff(metric: str) -> int | None:
  """k of 'hr@k' / 'ndcg@k' / 'recall@k'; None for 'mrr'; ConfigError for anything else."""
  name, at, k = metric.partition("@")
  if metric == "mrr":
    return None
  if name not in ("hr", "ndcg", "recall") or not at or not k.isdigit() or int(k) < 1:
    raise ConfigError(f"unknown --config.eval.metric {metric!r}; use hr@K, ndcg@K, recall@K "
                      f"(K in --config.eval.ks) or mrr, e.g. ndcg@10")
  return int(k)


# JAX's PRNG implementations: 'threefry2x32' (JAX's default: the same bits on every backend and
# sharding) or 'rbg' (XLA's RngBitGenerator: ~6x faster bit generation on CPU, where dropout
# masks and sampled negatives are drawn every step; its bits may differ across backends).
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
DEFAULT_PRNG_IMPL = "threefry2x32"


def prng_key(config: ml_collections.ConfigDict) -> jax.Array:
  """The run's root key: `config.seed` under `config.prng_impl`."""
  return jax.random.key(config.seed, impl=config.get("prng_impl", DEFAULT_PRNG_IMPL))


def _check_nonnegative_int(field: str, value: Any, hint: str = "") -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ConfigError(f"--config.{field} must be an integer >= 0{hint}, got {value!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks what can be checked without data, so a bad value fails before anything is read
  or written: names, positive sizes, cutoffs and the validation metric."""
  build_model(config, 1)  # encoder, head and loss names, and their options
  data_lib.sources.get_spec(config.dataset)
  if config.protocol not in data_lib.PROTOCOLS:
    raise ConfigError(f"unknown protocol {config.protocol!r}; valid names: "
                      f"{', '.join(data_lib.PROTOCOLS)}")
  if config.get("bce_negatives", "sum") not in losses_lib.BCE_NEGATIVES:
    raise ConfigError(f"unknown --config.bce_negatives {config.bce_negatives!r}; valid names: "
                      f"{', '.join(losses_lib.BCE_NEGATIVES)}")
  if config.get("ratio_targets", "all") not in data_lib.splits.RATIO_TARGETS:
    raise ConfigError(f"unknown --config.ratio_targets {config.ratio_targets!r}; valid names: "
                      f"{', '.join(data_lib.splits.RATIO_TARGETS)}")
  if config.get("prng_impl", DEFAULT_PRNG_IMPL) not in PRNG_IMPLS:
    raise ConfigError(f"unknown --config.prng_impl {config.prng_impl!r}; valid names: "
                      f"{', '.join(PRNG_IMPLS)}")
  _check_nonnegative_int("train.freeze_encoder_epochs",
                         config.train.get("freeze_encoder_epochs", 0))
  scale = config.train.get("encoder_lr_scale", 1.0)
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (
      math.isfinite(scale) and scale >= 0):
    raise ConfigError(f"--config.train.encoder_lr_scale must be a number >= 0 (1: the "
                      f"learning rate of the rest), got {scale!r}")
  if config.get("init_head_as_dot") and not config.get("init_from"):
    raise ConfigError("--config.init_head_as_dot starts the MoL head as a dot run's head: "
                      "give that run with --config.init_from=WORKDIR")
  _check_nonnegative_int("eval.sampled_negatives", config.eval.get("sampled_negatives", 0),
                         " (0: rank against every item)")
  for field, value in (("train.batch_size", config.train.batch_size),
                       ("eval.batch_size", config.eval.batch_size),
                       ("train.epochs", config.train.epochs),
                       ("eval.every_epochs", config.eval.every_epochs),
                       ("max_len", config.max_len)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      if field == "train.epochs":
        raise ConfigError(f"--epochs (--config.train.epochs) must be a positive integer, got "
                          f"{value!r}; to evaluate a finished run use `python -m "
                          f"experiments.evaluate --workdir=...`")
      raise ConfigError(f"--config.{field} must be a positive integer, got {value!r}")
  chunk = config.eval.chunk_size
  if isinstance(chunk, bool) or not isinstance(chunk, int) or (chunk < 1 and chunk != -1):
    raise ConfigError(f"--config.eval.chunk_size must be a positive integer or -1 (per head), "
                      f"got {chunk!r}")
  _check_nonnegative_int("eval.max_buffered_scores",
                         config.eval.get("max_buffered_scores", metrics_lib.MAX_BUFFERED_SCORES),
                         " (0: score every chunk twice, never keep a batch's scores)")
  ks = config.eval.ks
  ks = tuple(ks) if isinstance(ks, (tuple, list)) else (ks,)
  if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
    raise ConfigError(f"--config.eval.ks must be positive integer cutoffs, e.g. (1,10,50), "
                      f"got {ks!r}")
  try:
    data_lib.batches.check_buckets(length_buckets(config), config.max_len)
  except ValueError as e:
    raise ConfigError(f"--config.train.length_buckets: {e}") from None
  metric_k = _metric_cutoff(config.eval.metric)
  if metric_k is not None and metric_k not in ks:
    raise ConfigError(f"--config.eval.metric={config.eval.metric} needs the cutoff {metric_k} "
                      f"in --config.eval.ks={ks}; add it or pick another metric")


def _check_workdir(workdir: Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise ConfigError(f"workdir {workdir} is a file, not a folder; pass another --workdir")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test.{jax.process_index()}"  # processes may share the workdir
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise ConfigError(f"workdir {workdir} is not writable ({e.strerror}); pass another "
                      f"--workdir") from None


def load_data(config: ml_collections.ConfigDict):
  seqs = data_lib.load_sequences(config.dataset, config.data_dir or None,
                                 config.min_interactions)
  split = data_lib.make_split(seqs, config.protocol,
                              ratio_targets=config.get("ratio_targets", "all"))
  return seqs, split


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       log: Callable[[str], None] = print) -> dict[str, float]:
  """Trains with early stopping, resuming from `workdir` if it holds a checkpoint.

  Writes `config.json`, `metrics.jsonl`, TensorBoard events, checkpoints and finally
  `test_metrics.json` (the test split, evaluated from the best-validation checkpoint).
  Returns the test metrics.
  """
  workdir = Path(workdir)
  # Every check runs before the first write, so a rejected run leaves the workdir as it was.
  validate_config(config)
  mesh = sharding.make_mesh(config.train.num_devices or None)
  sharding.check_divisible(config.train.batch_size, mesh, "--config.train.batch_size")
  sharding.check_divisible(config.eval.batch_size, mesh, "--config.eval.batch_size")
  _check_workdir(workdir)
  seqs, split = load_data(config)
  num_items = seqs.num_items
  ks = eval_cutoffs(config, num_items)
  model = build_model(config, num_items)
  buckets = length_buckets(config)
  train_batches = data_lib.TrainBatches(seqs, split, config.max_len, config.train.batch_size,
                                        buckets)
  valid_batches = data_lib.EvalBatches(
      seqs, split.valid, config.max_len, config.eval.batch_size, config.eval.exclude_history,
      max_examples=config.eval.max_valid_examples or None, seed=config.seed,
      length_buckets=buckets)
  test_batches = data_lib.EvalBatches(seqs, split.test, config.max_len, config.eval.batch_size,
                                      config.eval.exclude_history, length_buckets=buckets)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json(indent=2))
  log(f"{config.dataset}: {seqs.num_users} users, {num_items} items, "
      f"{train_batches.num_examples} training sequences, {len(valid_batches)} valid / "
      f"{len(test_batches)} test examples; {mesh.devices.size} device(s)")
  for note in data_lib.skipped_users(seqs, split):
    log(note)
  if len(ks) < len(config.eval.ks):
    log(f"--config.eval.ks: skipping {sorted(set(config.eval.ks) - set(ks))}, larger than the "
        f"{num_items} items of the catalog")

  rng = prng_key(config)
  init_rng, step_rng = jax.random.split(rng)
  svd = svd_factors_for(config, seqs, split) if config.encoder == "svd" else None
  state = init_state(config, model, num_items, init_rng, svd, train_batches.steps_per_epoch)
  state = sharding.replicate(state, mesh)

  ckpt = Checkpointer(workdir)
  meta = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_evals": 0, "finished": False,
          "train_time": 0.0}
  restored = ckpt.restore("latest", {"params": state.params, "opt_state": state.opt_state,
                                     "step": state.step})
  if restored is not None:
    tree, meta = restored
    # Early stopping is judged under this run's patience (a larger --epochs continues a run).
    meta["finished"] = bool(config.eval.patience) and meta["bad_evals"] >= config.eval.patience
    state = state.replace(params=tree["params"], opt_state=tree["opt_state"], step=tree["step"])
    state = sharding.replicate(state, mesh)
    log(f"resumed from {workdir}/checkpoints/latest at epoch {meta['epoch']} "
        f"(step {int(state.step)})")
  elif config.get("init_from"):  # a fresh run only: a resumed one has its own weights
    params, loaded = warm_start_encoder(config, state.params, num_items)
    state = sharding.replicate(state.replace(params=params), mesh)
    log(loaded)

  train_step = jax.jit(make_train_step(model, config, num_items), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, config, num_items))
  sampling = eval_sampling(config, num_items)
  logger = _Logger(workdir)
  if restored is not None:
    logger.truncate_after(meta["epoch"])
  metric = config.eval.metric
  t_start = time.time() - meta["train_time"]

  epoch_bar = tqdm(range(meta["epoch"], config.train.epochs), desc="epochs",
                   initial=meta["epoch"], total=config.train.epochs,
                   disable=jax.process_index() != 0 or meta["finished"])
  for epoch in epoch_bar:
    if meta["finished"]:
      break
    step_losses = []
    for batch in tqdm(train_batches.epoch(config.seed, epoch), total=train_batches.steps_per_epoch,
                      desc=f"epoch {epoch + 1}", leave=False, disable=jax.process_index() != 0):
      state, m = train_step(state, sharding.shard_batch(batch, mesh), step_rng)
      step_losses.append(m["total_loss"])
      if len(step_losses) > _MAX_STEPS_IN_FLIGHT:
        # Bounded dispatch-ahead: with many steps queued, XLA's CPU client can deadlock in a
        # collective when simulated devices outnumber the cores (seen with 8 on 2 cores).
        step_losses[-1 - _MAX_STEPS_IN_FLIGHT].block_until_ready()
    losses = np.asarray(jax.device_get(step_losses))
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      bad_step = int(state.step) - len(losses) + int(bad[0]) + 1
      raise TrainingError(
          f"non-finite loss ({losses[bad[0]]}) at step {bad_step} (epoch {epoch + 1}); the last "
          f"good checkpoint is kept in {workdir}/checkpoints; lower --config.train.learning_rate "
          f"or enable --config.train.grad_clip")
    record = {"step": int(state.step), "epoch": epoch + 1, "split": "train",
              "loss": float(losses.mean()), "wall_time": time.time() - t_start}
    meta["epoch"] = epoch + 1
    last = epoch + 1 == config.train.epochs
    if (epoch + 1) % config.eval.every_epochs == 0 or last:
      logger.write(record)
      valid = evaluate(eval_step, state.params, valid_batches, mesh, "valid", sampling)
      value = valid[metric]
      logger.write({"step": int(state.step), "epoch": epoch + 1, "split": "valid", **valid,
                    "wall_time": time.time() - t_start})
      epoch_bar.set_postfix(loss=f"{record['loss']:.4f}", **{metric: f"{value:.4f}"})
      if value > meta["best"]:
        meta.update(best=value, best_epoch=epoch + 1, bad_evals=0)
        ckpt.save("best", int(state.step), {"params": state.params}, dict(meta))
      else:
        meta["bad_evals"] += 1
      if config.eval.patience and meta["bad_evals"] >= config.eval.patience:
        meta["finished"] = True  # early-stopped; reaching --epochs is not final (raise it)
        log(f"early stop after epoch {epoch + 1}: best {metric} {meta['best']:.4f} at epoch "
            f"{meta['best_epoch']}")
    else:
      logger.write(record)
    meta["train_time"] = time.time() - t_start
    ckpt.save("latest", int(state.step), {"params": state.params, "opt_state": state.opt_state,
                                         "step": state.step}, dict(meta))
  epoch_bar.close()

  best = ckpt.restore("best", {"params": state.params})
  params = sharding.replicate(best[0]["params"], mesh) if best else state.params
  test = evaluate(eval_step, params, test_batches, mesh, "test", sampling)
  result = {**test, "best_epoch": meta["best_epoch"], "epochs": meta["epoch"],
            f"valid_{metric}": meta["best"], "train_time": meta["train_time"]}
  if jax.process_index() == 0:
    logger.write({"step": int(state.step), "epoch": meta["epoch"], "split": "test", **test,
                  "wall_time": time.time() - t_start})
    tmp = workdir / "test_metrics.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(workdir / "test_metrics.json")
  logger.close()
  ckpt.close()
  return result
