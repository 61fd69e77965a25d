"""Two-stage MoL retrieval benchmark: the paper's Figure 3 (relative recall vs k', q/s vs N).

  python scripts/bench_retrieval.py --pool_sizes=10000,100000,1000000 --out_dir=results \
      [--checkpoint=WORKDIR]

Writes to --out_dir:
  retrieval_recall.csv      generator, quantization, pool_size, k, k_prime, relative_recall
  retrieval_throughput.csv  method, quantization, pool_size, batch, k, k_prime, qps
  fig3a_relative_recall.png relative recall@k of two-stage vs exact MoL, as a function of k'
  fig3b_throughput.png      queries/s vs pool size (exact_mol, two_stage, stage1_only, faiss)
  machine.json              cpu, cores, jax version and backend, chosen top-k backend

With --checkpoint (a MoL run's workdir): the MoL head is the trained one, the queries are
the trained encoder's real query vectors (the last position of --batch test users' histories),
and besides the synthetic pools the benchmark runs on the real catalog (pool `real`, the
trained item vectors). Synthetic pools (pool `synthetic`): item vectors sampled from a
Gaussian with the trained item vectors' mean and covariance. Without a checkpoint: a
randomly initialised MoL head (the default config's sizes) and N(0, I) items and queries.
The 'hindexer' generator is distilled from the MoL head (`fit_hindexer`) once, on
--hindexer_pool synthetic items (and the real items) and the real queries of the users not
among the benchmark's --batch queries, and applied to every pool; --hindexer_params=FILE
keeps the fit for the next run with the same settings.
Relative recall uses the same --batch queries as the throughput runs, so the exact-MoL
reference pass doubles as that method's compile / warm-up call. Timings: one warm-up call,
then the median of --repeats calls (one call when a call takes > 20 s), each ended by
`jax.block_until_ready`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxret.allocator import tune_allocator  # noqa: E402
from jaxret.models.heads import MoLHead  # noqa: E402
from jaxret.retrieval import topk as topk_lib  # noqa: E402
from jaxret.retrieval.hindexer import HIndexer  # noqa: E402
from jaxret.retrieval.index import MoLIndex  # noqa: E402


def _ints(s: str) -> list[int]:
  return [int(float(x)) for x in s.split(",") if x]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--pool_sizes", default="10000,100000,1000000")
  p.add_argument("--out_dir", default="results")
  p.add_argument("--checkpoint", default="", help="workdir of a trained run (optional)")
  p.add_argument("--batch", type=int, default=256, help="queries per call (throughput)")
  p.add_argument("--ks", default="10,100")
  p.add_argument("--k_primes", default="100,200,500,1000,2000,5000,10000")
  p.add_argument("--generators", default="hindexer,avg,per_component")
  p.add_argument("--quantizations", default="fp32,bf16,int8")
  p.add_argument("--per_component_max_pool", type=int, default=10_000,
                 help="skip the per_component generator above this pool size (its stage 1 "
                      "scores all P_Q x P_X component pairs: ~1/5 of exact MoL's FLOPs)")
  p.add_argument("--throughput_generator", default="",
                 help="generator of the two-stage throughput runs (default: hindexer when "
                      "it is among --generators, else avg)")
  p.add_argument("--throughput_k_primes", default="1000,2000,5000,10000",
                 help="k' values of the two-stage throughput runs")
  p.add_argument("--exact_mol_max_pool", type=int, default=1_000_000,
                 help="skip exact-MoL throughput above this pool size")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--hindexer_pool", type=int, default=20000)
  p.add_argument("--hindexer_dim", type=int, default=64)
  # Tower width and fit steps: the best fit of scripts/hindexer_study.py on the MoL seed-0
  # checkpoint (stage-1 recall@100 at k'=5000: 0.959, against 0.940 at hidden 128, 1500 steps).
  p.add_argument("--hindexer_hidden", type=int, default=512)
  p.add_argument("--hindexer_steps", type=int, default=3000)
  p.add_argument("--hindexer_probes", type=int, default=1,
                 help="query probes of the h-indexer (an item scores its best probe); "
                      "M probes of --hindexer_dim / M cost one probe of --hindexer_dim")
  p.add_argument("--hindexer_prefix_queries", type=int, default=0,
                 help="with --checkpoint: add this many training queries drawn from the "
                      "earlier positions of the fit users' histories (encoder outputs)")
  p.add_argument("--hindexer_gaussian_queries", type=int, default=0,
                 help="with --checkpoint: add this many training queries drawn from a Gaussian "
                      "with the mean and covariance of the fit users' queries "
                      "(results/diagnostics/hindexer_study.jsonl: +20,000 raised held-out "
                      "stage-1 recall@100 at k'=10k 0.975 -> 0.981)")
  p.add_argument("--hindexer_teacher_k_prime", type=int, default=0,
                 help="teacher lists from a two-stage 'avg' retrieve with this k' instead "
                      "of the exact MoL scan of the fit pool (0: exact)")
  p.add_argument("--hindexer_hard_negatives", type=int, default=0,
                 help="student-mined hard rows per fit query (fit_hindexer's "
                      "num_hard_negatives; 0: off). On the MoL s0 checkpoint 256 raised stage-1 "
                      "recall@100 at k'=1000 from 0.845 to 0.858 and left k'>=5000 unchanged")
  p.add_argument("--hindexer_refine_steps", type=int, default=0,
                 help="after the fit, fine-tune the h-indexer on each pool it indexes "
                      "(MoLIndex.refine_hindexer: teacher lists and hard negatives from the "
                      "pool itself) for this many steps (0: off). Not saved: ~20 min per "
                      "1e6-item pool on 2 CPU cores at 1500 steps")
  p.add_argument("--hindexer_refine_queries", type=int, default=8000,
                 help="the first this many fit queries (the real ones first) refine it")
  p.add_argument("--hindexer_refine_teacher_k_prime", type=int, default=20000,
                 help="k' of the two-stage retrieve that finds the refine teacher lists")
  p.add_argument("--hindexer_params", default="",
                 help="a file for the fitted h-indexer: loaded when it exists (and was fitted "
                      "with the same settings), else written after the fit, so a rerun skips "
                      "the fit (~7-35 min on 2 CPU cores at the defaults / the best settings)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--readme", default="",
                 help="also rewrite this README's retrieval block from the results")
  p.add_argument("--readme_tag", default="retrieval",
                 help="the README block's markers, <!-- TAG:begin --> ... <!-- TAG:end --> "
                      "(e.g. retrieval-gpu for a GPU run's results)")
  p.add_argument("--report_only", action="store_true",
                 help="only re-render --readme from the CSVs / machine.json in --out_dir")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- model / pool


class Source(NamedTuple):
  head: MoLHead
  head_params: dict
  item_mean: np.ndarray         # (D,)
  item_chol: np.ndarray         # (D, D) covariance factor
  queries: np.ndarray | None    # (U, D) real query vectors, or None
  real_items: np.ndarray | None  # (N, D) trained item vectors, or None
  # Encoder outputs at the earlier positions of each user's test history (M, D), and the
  # row of `queries` (the same user) each one belongs to (M,); None without a checkpoint.
  prefix_queries: np.ndarray | None = None
  prefix_owner: np.ndarray | None = None


def load_source(checkpoint: str, seed: int) -> Source:
  """The MoL head, item statistics and (with a checkpoint) real queries and items."""
  if not checkpoint:
    head = MoLHead()                                          # the default config's sizes
    dim = 50
    params = head.init(jax.random.key(seed), jnp.zeros((1, dim)), jnp.zeros((1, dim)))
    return Source(head, params["params"], np.zeros(dim), np.eye(dim), None, None)
  from experiments.workdirs import encoded_examples, restore_best
  from jaxret.errors import ConfigError
  from jaxret.models.retrieval import RetrievalModel
  try:
    config, seqs, split, model, params, meta = restore_best(checkpoint)
  except ConfigError as e:
    raise SystemExit(f"error: --checkpoint: {e}") from None
  if config.head != "mol":
    raise SystemExit(f"error: {checkpoint} trained a {config.head!r} head; the retrieval "
                     f"benchmark needs a MoL run (--head=mol)")
  ids = jnp.arange(1, seqs.num_items + 1, dtype=jnp.int32)
  items = np.asarray(model.apply({"params": params}, ids, method=RetrievalModel.embed_items),
                     np.float64)
  queries, prefixes, owners, seen = [], [], [], 0
  for inputs, encoded in encoded_examples(model, params, seqs, split.eval_examples("test"),
                                          config.max_len):                # (b, L), (b, L, D)
    queries.append(encoded[:, -1])              # the last position: the user's test query
    earlier = inputs[:, :-1] != 0               # real items before the last (left-padded)
    rows, cols = np.nonzero(earlier)
    prefixes.append(encoded[rows, cols])
    owners.append(rows + seen)
    seen += len(encoded)
  queries = np.concatenate(queries)
  mean = items.mean(0)
  chol = np.linalg.cholesky(np.cov(items, rowvar=False) + 1e-6 * np.eye(items.shape[1]))
  print(f"MoL head from {checkpoint} (best checkpoint, epoch {meta.get('epoch')}): "
        f"{len(items)} items, {len(queries)} real test queries")
  return Source(model.head, params["head"], mean, chol, queries.astype(np.float32),
                items.astype(np.float32), np.concatenate(prefixes).astype(np.float32),
                np.concatenate(owners))


def sample(rng, n: int, mean: np.ndarray, chol: np.ndarray) -> np.ndarray:
  out = np.empty((n, mean.shape[0]), np.float32)
  for s in range(0, n, 1 << 18):
    z = rng.standard_normal((min(1 << 18, n - s), mean.shape[0]))
    out[s:s + z.shape[0]] = z @ chol.T + mean
  return out


def gaussian_like(rng, x: np.ndarray, n: int) -> np.ndarray:
  """(n, D) float32 draws from the Gaussian with the mean and covariance of the rows of x."""
  cov = np.cov(x, rowvar=False) + 1e-6 * np.eye(x.shape[1])
  return sample(rng, n, x.mean(axis=0), np.linalg.cholesky(cov))


def prefix_queries(src: Source, users: np.ndarray, n: int, rng) -> np.ndarray:
  """n encoder outputs at earlier history positions of the users `users` (rows of
  src.queries), drawn without replacement (all of them if there are fewer)."""
  if src.prefix_queries is None:
    raise SystemExit("error: --hindexer_prefix_queries needs --checkpoint")
  pool = np.flatnonzero(np.isin(src.prefix_owner, users))
  pick = rng.choice(pool, min(n, len(pool)), replace=False)
  return src.prefix_queries[pick]


# ----------------------------------------------------------------------------- timing


def median_seconds(fn, repeats: int, warm: bool = False) -> float:
  if not warm:
    jax.block_until_ready(fn())                               # compile + warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
    if times[-1] > 20:                                        # slow baselines: fewer runs
      break
  return float(np.median(times))


def faiss_qps(vectors: np.ndarray, queries: np.ndarray, k: int, repeats: int) -> float | None:
  try:
    import faiss
  except ImportError:
    print("faiss not installed (pip install '.[bench]'): skipping faiss_flat_ip")
    return None
  index = faiss.IndexFlatIP(vectors.shape[1])
  index.add(np.ascontiguousarray(vectors, np.float32))
  q = np.ascontiguousarray(queries, np.float32)
  index.search(q, k)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    index.search(q, k)
    times.append(time.perf_counter() - t)
  return q.shape[0] / float(np.median(times))


# ----------------------------------------------------------------------------- fit cache


def hindexer_fit_settings(args) -> dict:
  """Everything that decides the h-indexer fit (and which users are held out of it)."""
  keys = ("checkpoint", "seed", "batch", "hindexer_pool", "hindexer_dim", "hindexer_hidden",
          "hindexer_steps", "hindexer_probes", "hindexer_prefix_queries",
          "hindexer_gaussian_queries", "hindexer_teacher_k_prime", "hindexer_hard_negatives")
  return {k: getattr(args, k) for k in keys}


def load_or_fit(path: str, settings: dict, fit):
  """`fit()`'s params, or those saved at `path` by a fit with the same `settings`."""
  if not path:
    return fit()
  file = Path(path)
  if file.exists():
    saved = serialization.msgpack_restore(file.read_bytes())
    if saved.get("settings") != json.dumps(settings, sort_keys=True):
      raise SystemExit(f"error: {file} holds an h-indexer fitted with other settings "
                       f"({saved.get('settings')}); delete it or pass another "
                       f"--hindexer_params")
    print(f"h-indexer loaded from {file}")
    return saved["params"]
  params = fit()
  blob = {"settings": json.dumps(settings, sort_keys=True),
          "params": jax.tree.map(np.asarray, params)}
  file.parent.mkdir(parents=True, exist_ok=True)
  tmp = file.with_name(file.name + ".tmp")
  tmp.write_bytes(serialization.msgpack_serialize(blob))
  os.replace(tmp, file)                                       # atomic: never half a file
  print(f"h-indexer saved to {file}")
  return params


# ----------------------------------------------------------------------------- main


def machine_info() -> dict:
  cpu = platform.processor()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  info = {"cpu_model": cpu, "cores": os.cpu_count(), "jax_version": jax.__version__,
          "jax_backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "topk_backend": topk_lib.best_backend(), "python": platform.python_version(),
          "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  if jax.default_backend() != "cpu":
    info["accelerator"] = jax.devices()[0].device_kind
  try:
    import faiss
    info["faiss_version"] = faiss.__version__
  except ImportError:
    pass
  return info


def main(argv=None) -> None:
  args = parse_args(argv)
  out = Path(args.out_dir)
  if args.report_only:
    recall_rows, tput_rows, info = read_results(out)
    plot(recall_rows, tput_rows, out)
    block = render(recall_rows, tput_rows, info, tag=args.readme_tag,
                   results_dir=args.out_dir.rstrip("/"))
    print(block)
    if args.readme:
      write_readme_block(Path(args.readme), block, tag=args.readme_tag)
    return
  out.mkdir(parents=True, exist_ok=True)
  pools, ks, k_primes = _ints(args.pool_sizes), _ints(args.ks), _ints(args.k_primes)
  quants = args.quantizations.split(",")
  gens = args.generators.split(",")
  allocator_tuned = tune_allocator()          # before machine_info: it sets the CPU default
  info = machine_info()
  info["allocator_tuned"] = allocator_tuned
  print(f"jax {jax.__version__} on {info['jax_backend']} ({info['cpu_model']}, "
        f"{info['cores']} cores); stage-1 top-k backend: {info['topk_backend']}; "
        f"allocator tuned: {info['allocator_tuned']}")

  src = load_source(args.checkpoint, args.seed)
  head, head_params = src.head, src.head_params
  rng = np.random.default_rng(args.seed)
  fit_queries = None
  if src.queries is not None:
    if len(src.queries) < 2 * args.batch:
      raise SystemExit(f"error: {len(src.queries)} real queries; need >= 2 x --batch "
                       f"({2 * args.batch}) to hold the benchmark's users out of the "
                       f"h-indexer's training queries")
    perm = rng.permutation(len(src.queries))
    queries, fit_queries = src.queries[perm[:args.batch]], src.queries[perm[args.batch:]]
    if args.hindexer_prefix_queries > 0:
      fit_queries = np.concatenate([fit_queries, prefix_queries(
          src, perm[args.batch:], args.hindexer_prefix_queries, rng)])
    if args.hindexer_gaussian_queries > 0:
      fit_queries = np.concatenate([fit_queries, gaussian_like(
          rng, src.queries[perm[args.batch:]], args.hindexer_gaussian_queries)])
  else:
    queries = sample(rng, args.batch, src.item_mean, src.item_chol)

  if not args.throughput_generator:
    args.throughput_generator = "hindexer" if "hindexer" in gens else "avg"
  h_params = None
  hindexer = HIndexer(dim=args.hindexer_dim, hidden=args.hindexer_hidden,
                      num_probes=args.hindexer_probes)
  if "hindexer" in gens:
    t = time.time()
    train_items = sample(rng, args.hindexer_pool, src.item_mean, src.item_chol)
    if src.real_items is not None:
      train_items = np.concatenate([train_items, src.real_items])
    train_q = (fit_queries if fit_queries is not None      # users disjoint from `queries`
               else sample(rng, 1024, src.item_mean, src.item_chol))

    def fit():
      base = MoLIndex.from_arrays(head, head_params, train_items)
      fitted = base.fit_hindexer(train_q, train_items, hindexer, teacher_k=64,
                                 teacher_k_prime=args.hindexer_teacher_k_prime or None,
                                 steps=args.hindexer_steps, batch_size=128,
                                 num_negatives=1024, learning_rate=3e-3,
                                 num_hard_negatives=args.hindexer_hard_negatives, log=print)
      return fitted.arrays.hindexer_params

    h_params = load_or_fit(args.hindexer_params, hindexer_fit_settings(args), fit)
    print(f"h-indexer ready in {time.time() - t:.0f}s")

  pool_list = [("synthetic", n, None) for n in pools]
  if src.real_items is not None:
    pool_list.insert(0, ("real", len(src.real_items), src.real_items))
  recall_rows, tput_rows, backend_qps = [], [], {}
  info.update(stage1_backend_qps=backend_qps, checkpoint=args.checkpoint or None,
              mol_head={k: getattr(head, k) for k in (
                  "num_query_components", "num_item_components", "component_dim",
                  "gating_hidden", "query_hidden")},
              throughput_generator=args.throughput_generator,
              hindexer_fit=None if h_params is None else dict(
                  queries=int(len(train_q)), prefix_queries=args.hindexer_prefix_queries,
                  gaussian_queries=args.hindexer_gaussian_queries,
                  pool=args.hindexer_pool, dim=args.hindexer_dim,
                  hidden=args.hindexer_hidden, probes=args.hindexer_probes,
                  steps=args.hindexer_steps, hard_negatives=args.hindexer_hard_negatives,
                  teacher_k_prime=args.hindexer_teacher_k_prime or "exact",
                  refine_steps=args.hindexer_refine_steps,
                  refine_queries=min(args.hindexer_refine_queries, len(train_q)),
                  refine_teacher_k_prime=args.hindexer_refine_teacher_k_prime),
              hindexer_refine_seconds={})
  qb = jnp.asarray(queries)
  for pool, n, real_items in pool_list:
    t0 = time.time()
    items = real_items if real_items is not None else sample(rng, n, src.item_mean,
                                                             src.item_chol)
    index = MoLIndex.from_arrays(head, head_params, items,
                                 hindexer=hindexer if h_params is not None else None,
                                 hindexer_params=h_params)
    print(f"\n== {pool} pool of {n} items: index built in {time.time() - t0:.1f}s "
          f"(stage-1 backend {index.stage1_backend(100, args.batch * n)} at k'=100)")
    if h_params is not None and args.hindexer_refine_steps > 0:
      t0 = time.time()
      index = index.refine_hindexer(train_q[:args.hindexer_refine_queries], items,
                                    teacher_k_prime=args.hindexer_refine_teacher_k_prime,
                                    steps=args.hindexer_refine_steps, log=print)
      info["hindexer_refine_seconds"][f"{pool}/{n}"] = round(time.time() - t0, 1)
      print(f"h-indexer refined on this pool in {time.time() - t0:.0f}s")
    kmax = min(max(ks), n)
    # Reference: exact MoL top-kmax; this call also compiles / warms up the timed one.
    t0 = time.time()
    ref = np.asarray(jax.block_until_ready(index.exact_mol_topk(qb, kmax))[0])
    print(f"exact MoL reference in {time.time() - t0:.1f}s (incl. compile)")
    for quant in quants:
      qindex = index.with_options(quant)
      for gen in gens:
        if gen == "per_component" and n > args.per_component_max_pool:
          continue
        for kp in (kp for kp in k_primes if kp <= n):
          k_here = [k for k in ks if k <= kp]
          if not k_here:
            continue
          got = np.asarray(qindex.retrieve(qb, max(k_here), kp, gen)[0])
          for k in k_here:
            r = np.mean([len(np.intersect1d(a[:k], b[:k])) / k for a, b in zip(got, ref)])
            recall_rows.append(dict(pool=pool, generator=gen, quantization=quant, pool_size=n,
                                    k=k, k_prime=kp, relative_recall=round(float(r), 4)))
            if k == 100 or len(k_here) == 1:
              print(f"recall@{k} {gen:13s} {quant}: k'={kp:6d} {r:.4f}")
    if "per_component" in gens and n > args.per_component_max_pool:
      print(f"per_component skipped at N={n} > --per_component_max_pool")
    # Throughput at batch B, k = max(ks).
    k = kmax
    tput_kps = sorted({min(kp, n) for kp in _ints(args.throughput_k_primes)})
    qps = {}
    if n <= args.exact_mol_max_pool:
      sec = median_seconds(lambda: index.exact_mol_topk(qb, k), min(args.repeats, 3),
                           warm=True)
      qps["exact_mol"] = args.batch / sec
      tput_rows.append(dict(pool=pool, method="exact_mol", quantization="fp32", pool_size=n,
                            batch=args.batch, k=k, k_prime="", qps=round(qps["exact_mol"], 2)))
    for quant in quants:
      qindex = index.with_options(quant)
      for kp in tput_kps:
        sec = median_seconds(lambda: qindex.retrieve(qb, k, kp, args.throughput_generator),
                             args.repeats)
        qps[f"two_stage/{quant}/k'={kp}"] = args.batch / sec
        tput_rows.append(dict(pool=pool, method="two_stage", quantization=quant, pool_size=n,
                              batch=args.batch, k=k, k_prime=kp,
                              qps=round(args.batch / sec, 2)))
      # Stage 1 alone: exact dot-product top-k over the 'avg' table (d = component_dim).
      s1q = qindex.stage1_query_embeddings(qb, "avg")
      table = qindex.stage1_table("avg")
      fn = jax.jit(lambda q, t: topk_lib.dot_topk(q, t, k, qindex.stage1_backend(
                                                      k, args.batch * table.num_rows),
                                                  max(128, (1 << 22) // args.batch)))
      sec = median_seconds(lambda: fn(s1q, table), args.repeats)
      qps[f"stage1_only/{quant}"] = args.batch / sec
      tput_rows.append(dict(pool=pool, method="stage1_only", quantization=quant, pool_size=n,
                            batch=args.batch, k=k, k_prime="", qps=round(args.batch / sec, 2)))
      if quant == "fp32":
        for be in topk_lib.BACKENDS:
          if be == "select" and info["jax_backend"] != "cpu":
            continue       # a host introselect: off CPU it copies the B x N scores to the host
          fb = jax.jit(lambda q, t, be=be: topk_lib.dot_topk(q, t, k, be,
                                                             max(128, (1 << 22) // args.batch)))
          backend_qps.setdefault(f"{pool}/{n}", {})[be] = round(
              args.batch / median_seconds(lambda: fb(s1q, table), args.repeats), 2)
        print(f"stage-1 fp32 q/s by top-k backend: {backend_qps[f'{pool}/{n}']}")
        f = faiss_qps(np.asarray(table.dequantize()), np.asarray(s1q), k, args.repeats)
        if f is not None:
          qps["faiss_flat_ip"] = f
          tput_rows.append(dict(pool=pool, method="faiss_flat_ip", quantization="fp32",
                                pool_size=n, batch=args.batch, k=k, k_prime="",
                                qps=round(f, 2)))
    for name, v in qps.items():
      print(f"q/s {name:22s} {v:12.1f}")
    if "exact_mol" in qps:
      for kp in tput_kps:
        ratio = qps[f"two_stage/fp32/k'={kp}"] / qps["exact_mol"]
        print(f"two_stage/exact_mol (fp32, {args.throughput_generator}, k'={kp}): {ratio:.1f}x")
    if "faiss_flat_ip" in qps:
      for quant in quants:
        print(f"stage1_only/{quant} / faiss_flat_ip: "
              f"{qps[f'stage1_only/{quant}'] / qps['faiss_flat_ip']:.2f}x")
    write_results(out, recall_rows, tput_rows, info)   # each finished pool survives a kill

  plot(recall_rows, tput_rows, out)
  print(f"\nwrote {out}/retrieval_recall.csv, retrieval_throughput.csv, machine.json, PNGs")
  block = render(*read_results(out), tag=args.readme_tag,
                 results_dir=args.out_dir.rstrip("/"))
  print(block)
  if args.readme:
    write_readme_block(Path(args.readme), block, tag=args.readme_tag)


def write_results(out: Path, recall_rows: list[dict], tput_rows: list[dict], info: dict) -> None:
  _write_csv(out / "retrieval_recall.csv", recall_rows,
             ["pool", "generator", "quantization", "pool_size", "k", "k_prime", "relative_recall"])
  _write_csv(out / "retrieval_throughput.csv", tput_rows,
             ["pool", "method", "quantization", "pool_size", "batch", "k", "k_prime", "qps"])
  (out / "machine.json").write_text(json.dumps(info, indent=2))


# ----------------------------------------------------------------------------- report

def markers(tag: str = "retrieval") -> tuple[str, str]:
  return f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"


BEGIN, END = markers()
RECALL_TARGET, SPEEDUP_TARGET, FAISS_TARGET = 0.99, 50.0, 3.0


def read_results(out: Path) -> tuple[list[dict], list[dict], dict]:
  """(recall rows, throughput rows, machine info) as written by `main` to `out`."""
  def rows(name: str) -> list[dict]:
    path = out / name
    if not path.is_file():
      raise SystemExit(f"error: {path} not found: run scripts/bench_retrieval.py first")
    with open(path, newline="") as f:
      data = list(csv.DictReader(f))
    for r in data:
      for key in ("pool_size", "k", "batch"):
        if key in r:
          r[key] = int(r[key])
      r["k_prime"] = int(r["k_prime"]) if r.get("k_prime") else None
      for key in ("relative_recall", "qps"):
        if key in r:
          r[key] = float(r[key])
    return data
  info = json.loads((out / "machine.json").read_text())
  return rows("retrieval_recall.csv"), rows("retrieval_throughput.csv"), info


def _qps(rows: list[dict], method: str, n: int, quant: str = "fp32", k_prime=None):
  for r in rows:
    if (r["pool"] == "synthetic" and r["method"] == method and r["pool_size"] == n
        and r["quantization"] == quant and (k_prime is None or r["k_prime"] == k_prime)):
      return r["qps"]
  return None


def render(recall_rows: list[dict], tput_rows: list[dict], info: dict, k: int = 100,
           tag: str = "retrieval", results_dir: str = "results") -> str:
  """The README's retrieval block (between the `tag` markers) from the benchmark's results."""
  begin, end = markers(tag)
  gen = info.get("throughput_generator", "avg")
  src = info.get("checkpoint") or "a randomly initialised MoL head"
  host = f"{info.get('cpu_model', '?')}, {info.get('cores', '?')} cores"
  if info.get("accelerator"):
    host = f"{info['accelerator']} (host: {host})"
  allocator = ("; glibc heap kept between calls (`jaxret.allocator.tune_allocator`)"
               if info.get("allocator_tuned") else "")
  lines = [begin, "",
           f"Measured by `scripts/bench_retrieval.py` ({info.get('date', '?')}) on "
           f"{host}, jax "
           f"{info.get('jax_version', '?')} on {info.get('jax_backend', '?')}; MoL head "
           f"from {src}; batch {tput_rows[0]['batch'] if tput_rows else '?'} queries; "
           f"stage-1 top-k backend `{info.get('topk_backend', '?')}`{allocator}. "
           f"Relative recall@{k}: "
           f"overlap of the two-stage top-{k} with the exact MoL top-{k}.", ""]
  fit = info.get("hindexer_fit") or {}
  if fit.get("refine_steps"):
    secs = info.get("hindexer_refine_seconds") or {}
    took = ", ".join(f"{key.split('/')[1]}: {v:,.0f} s" for key, v in secs.items())
    lines[-1:-1] = [f"The h-indexer was refined on each pool it indexes "
                    f"(`MoLIndex.refine_hindexer`: {fit['refine_steps']} steps on "
                    f"{fit['refine_queries']:,} fit queries, teacher lists from a two-stage "
                    f"retrieve at k'={fit['refine_teacher_k_prime']:,}; seconds by pool "
                    f"size: {took})."]
  syn = [r["pool_size"] for r in tput_rows if r["pool"] == "synthetic"]
  if syn:
    n = max(syn)
    exact = _qps(tput_rows, "exact_mol", n)
    curve = sorted((r["k_prime"], r["relative_recall"]) for r in recall_rows
                   if r["pool"] == "synthetic" and r["pool_size"] == n and r["k"] == k
                   and r["generator"] == gen and r["quantization"] == "fp32")
    two_qps = {kp: _qps(tput_rows, "two_stage", n, k_prime=kp) for kp, _ in curve}
    speedups = {kp: q / exact for kp, q in two_qps.items() if q is not None and exact}
    first = next(((kp, rec) for kp, rec in curve if rec >= RECALL_TARGET), None)
    if first is None:
      best = max(curve, key=lambda c: c[1]) if curve else (None, float("nan"))
      lines.append(f"- Two-stage (`{gen}`, fp32) at N={n:,}: relative recall@{k} never "
                   f"reaches {RECALL_TARGET} (best {best[1]:.4f} at k'={best[0]}): target NOT met.")
    else:
      kp, rec = first
      if kp not in speedups:
        lines.append(f"- Two-stage (`{gen}`, fp32) at N={n:,}: relative recall@{k} {rec:.4f} "
                     f"at k'={kp}; throughput at that k' not measured.")
      else:
        ok = "met" if speedups[kp] >= SPEEDUP_TARGET else "NOT met"
        lines.append(f"- Two-stage (`{gen}`, fp32) at N={n:,}: relative recall@{k} {rec:.4f} "
                     f"from k'={kp:,}, at {two_qps[kp]:,.1f} q/s = **{speedups[kp]:.0f}x** "
                     f"exact MoL ({exact:,.2f} q/s); target >= {RECALL_TARGET} at >= {SPEEDUP_TARGET:.0f}x: "
                     f"{ok}.")
    fast = [(kp, rec) for kp, rec in curve if speedups.get(kp, 0.0) >= SPEEDUP_TARGET]
    if fast:
      kp, rec = max(fast)
      lines.append(f"- At >= {SPEEDUP_TARGET:.0f}x exact MoL the largest measured k' is "
                   f"{kp:,} ({speedups[kp]:.0f}x), with relative recall@{k} {rec:.4f}.")
    s1, faiss = _qps(tput_rows, "stage1_only", n), _qps(tput_rows, "faiss_flat_ip", n)
    if s1 and faiss:
      ok = "met" if s1 / faiss >= FAISS_TARGET else "NOT met"
      lines.append(f"- Stage-1 exact dot-product top-{k} at N={n:,} (fp32): {s1:,.1f} q/s = "
                   f"**{s1 / faiss:.2f}x** faiss-cpu IndexFlatIP ({faiss:,.1f} q/s, same run); "
                   f"target >= {FAISS_TARGET:.0f}x: {ok}.")
    lines.append("")
  k_primes = sorted({r["k_prime"] for r in recall_rows if r["k"] == k})
  pools = sorted({(r["pool"], r["pool_size"]) for r in recall_rows if r["k"] == k},
                 key=lambda p: (p[0] != "real", p[1]))
  if pools:
    lines += [f"Relative recall@{k} by k' (Figure 3a; all pools and k in "
              f"`{results_dir}/retrieval_recall.csv`):", "",
              "| pool | N | generator | stage 1 | " + " | ".join(f"k'={kp:,}" for kp in k_primes)
              + " |", "|---|---|---|---|" + "---|" * len(k_primes)]
    for pool, n in pools:
      if pool == "synthetic" and n != max(p[1] for p in pools if p[0] == "synthetic"):
        continue
      combos = sorted({(r["generator"], r["quantization"]) for r in recall_rows
                       if (r["pool"], r["pool_size"]) == (pool, n)})
      for g, q in combos:
        vals = {r["k_prime"]: r["relative_recall"] for r in recall_rows
                if (r["pool"], r["pool_size"], r["generator"], r["quantization"], r["k"])
                == (pool, n, g, q, k)}
        lines.append(f"| {pool} | {n:,} | {g} | {q} | " + " | ".join(
            f"{vals[kp]:.4f}" if kp in vals else "" for kp in k_primes) + " |")
    lines.append("")
  if syn:
    two_kps = sorted({r["k_prime"] for r in tput_rows
                      if r["method"] == "two_stage" and r["pool"] == "synthetic"})
    lines += [f"Throughput, queries/s (Figure 3b; synthetic pools, fp32, two-stage with "
              f"`{gen}`; bf16 / int8 in `{results_dir}/retrieval_throughput.csv`):", "",
              "| N | exact MoL | " + " | ".join(f"two-stage k'={kp:,}" for kp in two_kps)
              + " | stage 1 only | faiss IndexFlatIP | stage 1 / faiss |",
              "|---|---|" + "---|" * len(two_kps) + "---|---|---|"]
    for n in sorted(set(syn)):
      def cell(v):
        return f"{v:,.1f}" if v is not None else "n/a"
      s1, faiss = _qps(tput_rows, "stage1_only", n), _qps(tput_rows, "faiss_flat_ip", n)
      ratio = f"{s1 / faiss:.2f}x" if s1 and faiss else "n/a"
      lines.append(f"| {n:,} | {cell(_qps(tput_rows, 'exact_mol', n))} | " + " | ".join(
          cell(_qps(tput_rows, "two_stage", n, k_prime=kp)) for kp in two_kps)
          + f" | {cell(s1)} | {cell(faiss)} | {ratio} |")
    lines.append("")
  lines.append(end)
  return "\n".join(lines)


def write_readme_block(readme: Path, block: str, tag: str = "retrieval") -> None:
  begin, end = markers(tag)
  text = readme.read_text()
  start, stop = text.find(begin), text.find(end)
  if start < 0 or stop < start:
    raise SystemExit(f"error: {readme} lacks the {begin} ... {end} markers")
  readme.write_text(text[:start] + block + text[stop + len(end):])
  print(f"wrote the retrieval block of {readme}")


def _write_csv(path: Path, rows: list[dict], cols: list[str]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)


def plot(recall_rows: list[dict], tput_rows: list[dict], out: Path) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib not installed (pip install -e .): skipping the figures")
    return
  if recall_rows:
    panels = [(pool, max(r["pool_size"] for r in recall_rows if r["pool"] == pool))
              for pool in ("real", "synthetic") if any(r["pool"] == pool for r in recall_rows)]
    ks = sorted({r["k"] for r in recall_rows})
    fig, axes = plt.subplots(len(panels), len(ks), figsize=(5 * len(ks), 4 * len(panels)),
                             squeeze=False)
    for row, (pool, n) in zip(axes, panels):
      for ax, k in zip(row, ks):
        series = sorted({(r["generator"], r["quantization"]) for r in recall_rows})
        for gen, quant in series:
          pts = sorted((r["k_prime"], r["relative_recall"]) for r in recall_rows
                       if r["pool"] == pool and r["pool_size"] == n and r["k"] == k
                       and r["generator"] == gen and r["quantization"] == quant)
          if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{gen} / {quant}",
                    linestyle={"fp32": "-", "bf16": "--", "int8": ":"}.get(quant, "-"))
        ax.set(xscale="log", xlabel="k' (stage-1 candidates)", ylabel=f"relative recall@{k}",
               title=f"Fig. 3a: two-stage vs exact MoL, {pool} N={n:,}", ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig3a_relative_recall.png", dpi=120)
    plt.close(fig)
  if tput_rows:
    fig, ax = plt.subplots(figsize=(6, 4))
    syn = [r for r in tput_rows if r["pool"] == "synthetic"]
    series = sorted({(r["method"], r["quantization"], r["k_prime"] or 0) for r in syn
                     if r["method"] != "two_stage" or r["quantization"] == "fp32"})
    for method, quant, kp in series:
      pts = sorted((r["pool_size"], r["qps"]) for r in syn
                   if r["method"] == method and r["quantization"] == quant
                   and (r["k_prime"] or 0) == kp)
      label = f"{method} / {quant}" + (f" / k'={kp}" if kp else "")
      ax.plot(*zip(*pts), marker="o", label=label,
              linestyle="--" if method == "two_stage" else "-")
    ax.set(xscale="log", yscale="log", xlabel="pool size N", ylabel="queries / s",
           title="Fig. 3b: throughput (batch %d)" % tput_rows[0]["batch"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig3b_throughput.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
  main()
