"""How the distilled h-indexer's recall depends on its fit (a diagnostic, not a test).

  python scripts/hindexer_study.py --checkpoint=WORKDIR [--pool=20000 --steps=1500 ...] \
      [--out=results/diagnostics/hindexer_study.jsonl] [--cache_dir=/tmp/hindexer_study]

Distils one h-indexer from the checkpoint's MoL head with the given fit settings (as
scripts/bench_retrieval.py does) and measures, on a fixed synthetic pool of --eval_pool items
and the same held-out --batch real queries, the stage-1 recall of the exact MoL top-k: the
fraction of each query's exact MoL top-k items that the stage-1 dot product ranks within its
top k'. With an exact stage 2 this is the two-stage relative recall@k, so a fit can be judged
without running stage 2. The evaluation pool and its exact MoL top-k are computed once and
cached in --cache_dir (keyed by checkpoint, seed, pool size and k). With
--union_avg_fractions it also reports the recall of a mixed candidate list of the same size k':
the h-indexer's top (1 - f) k' together with the 'avg' generator's top f k'. Appends one JSON
record per run to --out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import gaussian_like, load_source, prefix_queries, sample  # noqa: E402
from jaxret.allocator import tune_allocator  # noqa: E402
from jaxret.retrieval.hindexer import HIndexer, embed_item_table  # noqa: E402
from jaxret.retrieval.index import MoLIndex  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="workdir of a trained MoL run")
  p.add_argument("--out", default="results/diagnostics/hindexer_study.jsonl")
  p.add_argument("--cache_dir", default="/tmp/hindexer_study")
  p.add_argument("--label", default="", help="free text stored with the record")
  p.add_argument("--batch", type=int, default=256, help="held-out evaluation queries")
  p.add_argument("--eval_pool", type=int, default=1_000_000)
  p.add_argument("--k", type=int, default=100)
  p.add_argument("--k_primes", default="1000,2000,5000,10000")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--union_avg_fractions", default="",
                 help="also report the recall of the union of the h-indexer's top (1-f) k' "
                      "and the 'avg' generator's top f k', for these f (e.g. 0.1,0.25)")
  # The fit (defaults: scripts/bench_retrieval.py's).
  p.add_argument("--pool", type=int, default=20000, help="synthetic items of the fit")
  p.add_argument("--dim", type=int, default=64)
  p.add_argument("--hidden", type=int, default=128)
  p.add_argument("--num_probes", type=int, default=1, help="query probes (HIndexer.num_probes)")
  p.add_argument("--unnormalized", action="store_true",
                 help="stage-1 score is a raw inner product, not a cosine (HIndexer.normalize "
                      "False); pair it with --temperature=1")
  p.add_argument("--steps", type=int, default=1500)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--num_negatives", type=int, default=1024)
  p.add_argument("--teacher_k", type=int, default=64)
  p.add_argument("--teacher_temperature", type=float, default=1.0)
  p.add_argument("--temperature", type=float, default=0.05)
  p.add_argument("--learning_rate", type=float, default=3e-3)
  p.add_argument("--num_hard_negatives", type=int, default=0,
                 help="student-mined rows per query (fit_hindexer's num_hard_negatives)")
  p.add_argument("--mine_every", type=int, default=250, help="steps between two minings")
  p.add_argument("--prefix_queries", type=int, default=0,
                 help="extra fit queries from earlier positions of the fit users' histories")
  p.add_argument("--gaussian_queries", type=int, default=0,
                 help="extra fit queries drawn from a Gaussian with the mean and covariance "
                      "of the fit's real queries (more, more varied queries for the towers)")
  p.add_argument("--fit_query_recall", type=int, default=0,
                 help="also measure the stage-1 recall on this many of the fit's own queries "
                      "(the query side's train recall: a gap to the held-out recall is "
                      "generalisation, no gap is what a dot product can represent)")
  p.add_argument("--params", default="",
                 help="start from the towers in this file (written by scripts/bench_retrieval.py "
                      "--hindexer_params) instead of fitting; the fit flags above must be the "
                      "file's (--dim, --hidden), the rest are ignored")
  p.add_argument("--refine_steps", type=int, default=0,
                 help="then fine-tune the towers on the evaluation pool itself, the catalog "
                      "they index (MoLIndex.refine_hindexer), for this many steps (0: off)")
  p.add_argument("--refine_queries", type=int, default=8000,
                 help="the first this many fit queries (the real ones first) refine them")
  p.add_argument("--refine_teacher_k_prime", type=int, default=20000)
  p.add_argument("--refine_hard_negatives", type=int, default=256)
  p.add_argument("--refine_learning_rate", type=float, default=1e-3)
  return p.parse_args(argv)


def _ints(s: str) -> list[int]:
  return [int(float(x)) for x in s.split(",") if x]


def eval_set(args, src, queries: np.ndarray,
             tag: str = "") -> tuple[np.ndarray, np.ndarray]:
  """The fixed evaluation pool (N, D) and each query's exact MoL top-k rows (B, k), cached
  (`tag` names a query set other than the held-out one)."""
  key = hashlib.sha1(f"{Path(args.checkpoint).resolve()}|{args.seed}|{args.eval_pool}|"
                     f"{args.k}|{args.batch}{tag}".encode()).hexdigest()[:12]
  path = Path(args.cache_dir) / f"eval_{key}.npz"
  items = sample(np.random.default_rng([args.seed, 1]), args.eval_pool, src.item_mean,
                 src.item_chol)
  if path.exists():
    return items, np.load(path)["top"]
  t = time.time()
  index = MoLIndex.from_arrays(src.head, src.head_params, items)
  top = np.asarray(index.exact_mol_topk(queries, args.k)[0])         # ids == rows here
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, top=top)
  print(f"exact MoL top-{args.k} over {args.eval_pool} items: {time.time() - t:.0f}s "
        f"(cached in {path})")
  return items, top


def stage1_ranks(hindexer, h_params, queries: np.ndarray, items: np.ndarray,
                 top: np.ndarray) -> np.ndarray:
  """(B, k) 0-based h-indexer rank (among all N items) of each exact MoL top-k item."""
  emb_q = hindexer.apply({"params": h_params}, jnp.asarray(queries),
                         method=HIndexer.embed_queries)
  return dot_ranks(emb_q, embed_item_table(hindexer, h_params, items), top)


def avg_ranks(index: MoLIndex, queries: np.ndarray, top: np.ndarray) -> np.ndarray:
  """(B, k) 0-based rank under the 'avg' generator of each exact MoL top-k item."""
  table = index.stage1_table("avg")
  return dot_ranks(index.stage1_query_embeddings(queries, "avg"),
                   table.values.astype(jnp.float32), top)


def dot_ranks(query_emb: jax.Array, table: jax.Array, top: np.ndarray) -> np.ndarray:
  """(B, k) 0-based rank of rows `top` among the (N,) dot-product scores of each query
  ((B, M, d) multi-probe queries: each row's best probe)."""

  @jax.jit
  def ranks(q, rows, table):
    scores = q @ table.T if q.ndim == 2 else jnp.max(q @ table.T, axis=1)  # (b, N)
    target = jnp.take_along_axis(scores, rows, axis=-1)              # (b, k)
    ordered = -jnp.sort(-scores, axis=-1)                             # descending
    # Items scoring strictly higher than the target (ties counted in its favour).
    return jax.vmap(lambda o, t: jnp.searchsorted(-o, -t, side="left"))(ordered, target)

  out = [np.asarray(ranks(query_emb[s:s + 32], jnp.asarray(top[s:s + 32]), table))
         for s in range(0, len(top), 32)]
  return np.concatenate(out)


def recall_at(ranks: np.ndarray, k_primes: list[int]) -> dict[str, float]:
  """{k': fraction of the exact MoL top-k items that stage 1 ranks within its top k'}."""
  return {str(kp): round(float(np.mean(ranks < kp)), 4) for kp in k_primes}


def union_recall(h_ranks: np.ndarray, a_ranks: np.ndarray, k_prime: int,
                 avg_fraction: float) -> float:
  """Recall of the union of the h-indexer's top (1 - f) k' and the 'avg' top f k'."""
  n_avg = int(round(avg_fraction * k_prime))
  return float(np.mean((h_ranks < k_prime - n_avg) | (a_ranks < n_avg)))


def recall_by_mol_rank(ranks: np.ndarray, k_primes: list[int],
                       edges: tuple[int, ...] = (0, 10, 50, 100, 1000)) -> dict:
  """{'a-b': {k': stage-1 recall of the exact MoL items ranked a..b-1}}: which of the MoL top
  items the stage-1 dot product misses (columns of `ranks` are in MoL rank order)."""
  out = {}
  for lo, hi in zip(edges[:-1], edges[1:]):
    hi = min(hi, ranks.shape[1])
    part = ranks[:, lo:hi]
    if part.size:
      out[f"{lo}-{hi - 1}"] = {
          str(kp): round(float(np.mean(part < kp)), 4) for kp in k_primes}
  return out


def main(argv=None) -> None:
  args = parse_args(argv)
  tune_allocator()
  if args.params and not Path(args.params).is_file():
    raise SystemExit(f"error: --params {args.params}: no such file (write one with "
                     f"scripts/bench_retrieval.py --hindexer_params=FILE)")
  src = load_source(args.checkpoint, args.seed)
  rng = np.random.default_rng(args.seed)
  perm = rng.permutation(len(src.queries))
  queries, fit_q = src.queries[perm[:args.batch]], src.queries[perm[args.batch:]]
  if args.prefix_queries > 0:
    fit_q = np.concatenate([fit_q, prefix_queries(src, perm[args.batch:], args.prefix_queries,
                                                  rng)])
  real_fit_q = fit_q
  if args.gaussian_queries > 0:
    fit_q = np.concatenate([fit_q, gaussian_like(rng, real_fit_q, args.gaussian_queries)])
  items, top = eval_set(args, src, queries)

  t = time.time()
  hindexer = HIndexer(dim=args.dim, hidden=args.hidden,
                      num_probes=args.num_probes, normalize=not args.unnormalized)
  saved = {}
  if args.params:
    saved = serialization.msgpack_restore(Path(args.params).read_bytes())
    h_params = saved["params"]
  else:
    train_items = np.concatenate([sample(rng, args.pool, src.item_mean, src.item_chol),
                                  src.real_items])
    base = MoLIndex.from_arrays(src.head, src.head_params, train_items)
    h_params = base.fit_hindexer(
        fit_q, train_items, hindexer, teacher_k=args.teacher_k, steps=args.steps,
        batch_size=args.batch_size, num_negatives=args.num_negatives,
        learning_rate=args.learning_rate, temperature=args.temperature,
        teacher_temperature=args.teacher_temperature,
        num_hard_negatives=args.num_hard_negatives, mine_every=args.mine_every,
        log=print).arrays.hindexer_params
  fit_s = time.time() - t
  refine = {}
  if args.refine_steps > 0:
    refine["start_recall_at_k_prime"] = recall_at(
        stage1_ranks(hindexer, h_params, queries, items, top), _ints(args.k_primes))
    print(f"before refining: {refine['start_recall_at_k_prime']}")
    t = time.time()
    catalog = MoLIndex.from_arrays(src.head, src.head_params, items, hindexer=hindexer,
                                   hindexer_params=h_params)
    h_params = catalog.refine_hindexer(
        fit_q[:args.refine_queries], items, teacher_k_prime=args.refine_teacher_k_prime,
        num_hard_negatives=args.refine_hard_negatives,
        learning_rate=args.refine_learning_rate, steps=args.refine_steps,
        log=print).arrays.hindexer_params
    refine.update(steps=args.refine_steps, queries=min(args.refine_queries, len(fit_q)),
                  teacher_k_prime=args.refine_teacher_k_prime,
                  hard_negatives=args.refine_hard_negatives,
                  learning_rate=args.refine_learning_rate, seconds=round(time.time() - t, 1))
  r = stage1_ranks(hindexer, h_params, queries, items, top)
  recall = recall_at(r, _ints(args.k_primes))
  fit_recall = {}
  if args.fit_query_recall > 0:
    seen = real_fit_q[:args.fit_query_recall]
    _, seen_top = eval_set(args, src, seen, tag=f"|fit{len(seen)}")
    r_seen = stage1_ranks(hindexer, h_params, seen, items, seen_top)
    fit_recall = recall_at(r_seen, _ints(args.k_primes))
  union = {}
  fractions = [float(f) for f in args.union_avg_fractions.split(",") if f]
  if fractions:
    a = avg_ranks(MoLIndex.from_arrays(src.head, src.head_params, items), queries, top)
    union = {f"{f:g}": {str(kp): round(union_recall(r, a, kp, f), 4)
                        for kp in _ints(args.k_primes)} for f in [0.0, *fractions, 1.0]}
  record = dict(label=args.label, date=time.strftime("%Y-%m-%d %H:%M:%S"),
                checkpoint=str(args.checkpoint), eval_pool=args.eval_pool, k=args.k,
                eval_queries=len(queries), fit_queries=len(fit_q),
                fit=dict(pool=args.pool, dim=args.dim, hidden=args.hidden,
                         num_probes=args.num_probes, normalize=not args.unnormalized,
                         steps=args.steps,
                         batch_size=args.batch_size, num_negatives=args.num_negatives,
                         teacher_k=args.teacher_k, teacher_temperature=args.teacher_temperature,
                         temperature=args.temperature, learning_rate=args.learning_rate,
                         prefix_queries=args.prefix_queries,
                         gaussian_queries=args.gaussian_queries,
                         num_hard_negatives=args.num_hard_negatives, mine_every=args.mine_every),
                fit_seconds=round(fit_s, 1), stage1_recall_at_k_prime=recall,
                median_rank=float(np.median(r)), p99_rank=float(np.percentile(r, 99)),
                recall_by_mol_rank=recall_by_mol_rank(r, _ints(args.k_primes)))
  if args.params:
    record["fit"] = dict(params_file=args.params, dim=args.dim, hidden=args.hidden,
                         settings=json.loads(saved.get("settings", "null")))
  if refine:
    record["refine"] = refine          # stage1_recall_at_k_prime is after refining
  if fit_recall:
    record["fit_queries_recall_at_k_prime"] = fit_recall   # the fit's own (seen) queries
  if union:
    record["union_avg_recall_at_k_prime"] = union         # {avg fraction: {k': recall}}
  print(json.dumps(record))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  with out.open("a") as f:
    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
  main()
