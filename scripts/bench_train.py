"""Training-step benchmark: compile time, step time, throughput, memory, recompilations.

  python scripts/bench_train.py [--out=results/bench_train.json] [--heads=dot,mlp,fm,neural_fm,mol]
      [--losses=bce,ss] [--dtypes=float32] [--steps=10] [--batch_size=64]
      [--position_budget=0.6] [--score_chunk=-1] [--length_buckets=64,128,200]
      [--append] [--set=mol.gating_hidden=32 --set=mol.query_hidden=128 ...]

Each (encoder, head, loss, dtype) runs in its own subprocess (so peak RSS is its own) on the
real `ml-1m-half` shapes (set JAXRET_DATA_DIR), with the entry points' allocator settings
(`experiments.cli.tune_allocator`). Prints ratios measured in the same run: each head's step
time over the dot head's, and bf16 over fp32.

With --length_buckets the batches are cut to those lengths as in training
(`--config.train.length_buckets`): every bucket's shape is compiled first (warm-up), then
`step_ms` is the mean over the next --steps batches of the epoch (their mix of lengths), and
`compiles_after_first` counts compilations after each shape's first step.

Each --set KEY=VALUE overrides one config field (as `--config.KEY=VALUE` would in training),
e.g. a smaller MoL; the overrides are kept in the record under `config_overrides`.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace) -> dict:
  """Runs in the child process: one configuration, one JSON record on stdout."""
  sys.path.insert(0, str(REPO))
  import jax
  import jax.numpy as jnp

  from experiments import cli
  from experiments.configs import default
  from jaxret import data as data_lib
  from jaxret import sharding, train

  cli.tune_allocator()

  c = default.get_config()
  c.dataset, c.encoder, c.head, c.loss = args.dataset, args.encoder, args.head, args.loss
  c.train.batch_size = args.batch_size
  c.train.position_budget = args.position_budget
  c.train.score_chunk = args.score_chunk
  c.train.length_buckets = tuple(int(b) for b in args.length_buckets.split(",") if b)
  overrides = parse_overrides(args.set)
  apply_overrides(c, overrides)
  buckets = train.length_buckets(c)
  if args.dtype == "bfloat16":  # bf16 compute, fp32 master weights (params stay fp32)
    for section in (c.encoder, c.head):
      c[section]["dtype"] = jnp.bfloat16
  seqs, split = train.load_data(c)
  model = train.build_model(c, seqs.num_items)
  mesh = sharding.make_mesh(1)
  svd = train.svd_factors_for(c, seqs, split) if c.encoder == "svd" else None
  state = sharding.replicate(train.init_state(c, model, seqs.num_items, train.prng_key(c), svd),
                             mesh)
  step = jax.jit(train.make_train_step(model, c, seqs.num_items), donate_argnums=0)
  batches = data_lib.TrainBatches(seqs, split, c.max_len, c.train.batch_size, buckets)

  def stream():
    epoch = 0
    while True:
      yield from batches.epoch(0, epoch)
      epoch += 1

  it = stream()
  rng = jax.random.fold_in(train.prng_key(c), 1)
  t0 = time.perf_counter()
  state, m = step(state, sharding.shard_batch(next(it), mesh), rng)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  num_shapes = len(batches.buckets)
  seen = set()
  while len(seen) < num_shapes:                  # compile every bucket's shape first
    batch = next(it)
    seen.add(batch["inputs"].shape[1])
    state, m = step(state, sharding.shard_batch(batch, mesh), rng)
  jax.block_until_ready(m)
  times, positions, timed = [], [], []
  for i in range(args.warmup + args.steps):
    batch = next(it)
    t = time.perf_counter()
    state, m = step(state, sharding.shard_batch(batch, mesh), rng)
    jax.block_until_ready(m)
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
      positions.append(float(m["positions"]))
      timed.append(batch)
  step_s = statistics.mean(times) if buckets else statistics.median(times)
  # XLA's cost analysis counts a loop body once, so count FLOPs on the unchunked step (per
  # batch shape, averaged over the timed batches).
  unchunked = c.copy_and_resolve_references()
  unchunked.train.score_chunk = 0
  flops_step = jax.jit(train.make_train_step(model, unchunked, seqs.num_items))
  flops_of = {}
  for b in timed:
    width = b["inputs"].shape[1]
    if width not in flops_of:
      cost = flops_step.lower(state, sharding.shard_batch(b, mesh), rng).cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      flops_of[width] = float((cost or {}).get("flops", float("nan")))  # None on some GPUs
  cost = {"flops": statistics.mean(flops_of[b["inputs"].shape[1]] for b in timed)}
  return {
      "encoder": c.encoder, "head": c.head, "loss": c.loss, "dtype": args.dtype,
      "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "batch": c.train.batch_size, "position_budget": c.train.position_budget,
      "length_buckets": list(buckets),
      "score_chunk": c.train.score_chunk,
      "num_negatives": train.num_negatives(c),
      "step_ms": 1000 * step_s, "compile_s": compile_s,
      "positions_per_s": statistics.mean(positions) / step_s,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "compiles_after_first": step._cache_size() - num_shapes,
      "gflops_per_step": float(cost.get("flops", float("nan"))) / 1e9,
      "achieved_gflops_per_s": float(cost.get("flops", float("nan"))) / 1e9 / step_s,
      "steps_timed": len(times),
      "config_overrides": overrides,
  }


def apply_overrides(c, overrides: dict) -> None:
  """Sets each dotted config field; exits with a message naming an unknown one."""
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    section = c
    for name in path:
      section = section.get(name) if hasattr(section, "get") else None
    if not hasattr(section, "get") or leaf not in section:
      raise SystemExit(f"--set {key}: no such config field (see experiments/configs/default.py)")
    section[leaf] = value


def parse_overrides(items: list[str]) -> dict:
  """['mol.gating_hidden=32', ...] -> {'mol.gating_hidden': 32, ...} (values as Python literals)."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. --set=mol.gating_hidden=32")
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="results/bench_train.json")
  p.add_argument("--dataset", default="ml-1m-half")
  p.add_argument("--encoder", default="sasrec")
  p.add_argument("--heads", default="dot,mlp,fm,neural_fm,mol")
  p.add_argument("--losses", default="bce,ss")
  p.add_argument("--dtypes", default="float32")
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--position_budget", type=float, default=0.6)
  p.add_argument("--score_chunk", type=int, default=-1, help="-1: the trainer's auto choice")
  p.add_argument("--length_buckets", default="",
                 help="comma-separated bucket lengths ending at max_len (default: off)")
  p.add_argument("--append", action="store_true",
                 help="add the records to --out instead of replacing it")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override one config field, e.g. mol.gating_hidden=32 (repeatable)")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--head", default=None, help=argparse.SUPPRESS)
  p.add_argument("--loss", default=None, help=argparse.SUPPRESS)
  p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    print("RESULT " + json.dumps(measure(args)), flush=True)
    return

  sys.path.insert(0, str(REPO))
  from experiments.configs import default
  apply_overrides(default.get_config(), parse_overrides(args.set))  # fail before any child runs

  records = []
  for dtype in args.dtypes.split(","):
    for loss in args.losses.split(","):
      for head in args.heads.split(","):
        cmd = [sys.executable, __file__, "--child", f"--head={head}", f"--loss={loss}",
               f"--dtype={dtype}", f"--dataset={args.dataset}", f"--encoder={args.encoder}",
               f"--batch_size={args.batch_size}", f"--position_budget={args.position_budget}",
               f"--score_chunk={args.score_chunk}", f"--length_buckets={args.length_buckets}",
               f"--steps={args.steps}", f"--warmup={args.warmup}",
               *(f"--set={item}" for item in args.set)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")})
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not line:
          print(f"{head}/{loss}/{dtype} failed:\n{r.stderr[-2000:]}", file=sys.stderr)
          continue
        rec = json.loads(line[0][len("RESULT "):])
        records.append(rec)
        print(f"{args.encoder:6s} {head:9s} {loss:4s} {dtype:8s} step {rec['step_ms']:8.1f} ms  "
              f"{rec['gflops_per_step']:6.1f} GFLOP ({rec['achieved_gflops_per_s']:5.1f}/s)  "
              f"compile {rec['compile_s']:5.1f} s  {rec['positions_per_s']:9.0f} pos/s  "
              f"rss {rec['peak_rss_mb']:6.0f} MB  recompiles {rec['compiles_after_first']}",
              flush=True)
  by = {(r["head"], r["loss"], r["dtype"]): r for r in records}  # one --length_buckets per run
  for (head, loss, dtype), r in sorted(by.items()):
    dot = by.get(("dot", loss, dtype))
    if dot and head != "dot":
      r["step_ratio_vs_dot"] = r["step_ms"] / dot["step_ms"]
      r["flops_ratio_vs_dot"] = r["gflops_per_step"] / dot["gflops_per_step"]
      print(f"ratio {head}/dot ({loss}, {dtype}): step {r['step_ratio_vs_dot']:.2f}x, "
            f"FLOPs {r['flops_ratio_vs_dot']:.2f}x")
    fp32 = by.get((head, loss, "float32"))
    if fp32 and dtype == "bfloat16":
      r["step_ratio_vs_fp32"] = r["step_ms"] / fp32["step_ms"]
      print(f"ratio bf16/fp32 ({head}, {loss}): {r['step_ratio_vs_fp32']:.2f}x")
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  machine = f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}"
  previous = json.loads(out.read_text()) if args.append and out.exists() else []
  out.write_text(json.dumps(previous + [{**r, "machine": machine} for r in records], indent=2))
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
