"""Top-k of a full (B, N) score matrix: one `lax.top_k` against `grouped_topk` and `select_topk`.

  python scripts/bench_topk.py [--batch=256] [--pool=1000000] [--ks=100,1000,5000,10000]
      [--groups=8,16,32] [--out=results/bench_topk.json]

Scores are N(0, 1) draws (a stage-1 score matrix before its top-k). Each timing is the median
of --repeats jitted calls after one warm-up call, all in the same run; every result is checked
against `lax.top_k` (same values; ids equal up to tied scores). Prints and writes each method's
seconds per call and its speed-up over `lax.top_k`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxret.allocator import tune_allocator  # noqa: E402
from jaxret.retrieval import topk as topk_lib  # noqa: E402


def seconds(fn, x, repeats: int) -> float:
  jax.block_until_ready(fn(x))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--pool", type=int, default=1_000_000)
  p.add_argument("--ks", default="100,1000,5000,10000")
  p.add_argument("--groups", default="8,16,32")
  p.add_argument("--methods", default="grouped,select",
                 help="which of grouped, select to time against lax.top_k (select is a host "
                      "introselect: off CPU it copies the scores to the host)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="results/bench_topk.json")
  args = p.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  if set(methods) - {"grouped", "select"}:
    p.error(f"--methods: unknown {sorted(set(methods) - {'grouped', 'select'})}; "
            f"choose from grouped, select")
  tune_allocator()
  scores = jax.random.normal(jax.random.key(0), (args.batch, args.pool))
  records = []
  for k in (int(v) for v in args.ks.split(",")):
    exact = jax.jit(lambda s, k=k: topk_lib.exact_topk(s, k))
    base = seconds(exact, scores, args.repeats)
    ref = exact(scores)
    records.append(dict(method="lax.top_k", group=1, k=k, seconds=round(base, 6), speedup=1.0))
    print(f"k={k:6d} lax.top_k           {base:7.3f} s", flush=True)
    groups = [int(v) for v in args.groups.split(",")]
    for name, fn_of, gs in (("grouped_topk", topk_lib.grouped_topk, groups),
                            ("select_topk", topk_lib.select_topk, [1] + groups)):
      if name.split("_")[0] not in methods:
        continue
      for g in gs:
        fn = jax.jit(lambda s, k=k, g=g, f=fn_of: f(s, k, g))
        out = fn(scores)
        if not np.array_equal(np.asarray(out.scores), np.asarray(ref.scores)):
          raise SystemExit(f"error: {name}(k={k}, group={g}) differs from lax.top_k")
        sec = seconds(fn, scores, args.repeats)
        records.append(dict(method=name, group=g, k=k, seconds=round(sec, 6),
                            speedup=round(base / sec, 3)))
        print(f"k={k:6d} {name} g={g:<3d} {sec:7.3f} s  {base / sec:5.2f}x", flush=True)
  machine = f"{platform.machine()} {os.cpu_count()} cpus, jax {jax.__version__} " \
            f"{jax.default_backend()}"
  if jax.default_backend() != "cpu":
    machine += f" ({jax.devices()[0].device_kind})"
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(dict(batch=args.batch, pool=args.pool, machine=machine,
                                 records=records), indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
