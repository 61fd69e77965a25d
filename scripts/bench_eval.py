"""Full-ranking validation benchmark: seconds per eval batch, before and after the
one-pass scoring and the per-head item chunk.

  python scripts/bench_eval.py [--rows=beauty_sasrec_mol_ss,...] [--batches=4] [--repeats=3]
      [--out=results/bench_eval.json]

For each row, builds its model (`experiments/configs/rows/<row>.py`, random initial weights: the
time does not depend on them) on its real dataset (set JAXRET_DATA_DIR) and times the
validation step over the first --batches batches in three settings, alternated --repeats
times: `before` (4096-item chunks, every chunk scored twice: target scores, then ranks, as
before session 26), `one_pass` (4096-item chunks, a batch's scores kept: each chunk scored
once) and `auto` (the head's chunk, `train.eval_chunk_size`, scores kept). Checks that all
give the same metrics, prints the ratios measured in the same run and writes a JSON list
of one record per row to --out.
"""
from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rows", default="beauty_sasrec_mol_ss,beauty_sasrec_dot_ss,"
                 "seed_ml1m_sasrec_mlp_bce,seed_ml1m_sasrec_neural_fm_bce",
                 help="configs of experiments/configs/rows")
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default="results/bench_eval.json")
  args = p.parse_args(argv)
  from experiments import cli
  cli.tune_allocator()
  records = [measure(row, args) for row in args.rows.split(",") if row]
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(records, indent=2) + "\n")
  bad = [r["row"] for r in records if not r["same_metrics"]]
  if bad:
    sys.exit(f"the evaluation settings disagree on the metrics of {bad}: a bug in "
             f"jaxret.metrics.chunked_ranks")


def measure(row: str, args: argparse.Namespace) -> dict:
  import jax
  import numpy as np

  from jaxret import data as data_lib
  from jaxret import sharding, train

  c = importlib.import_module(f"experiments.configs.rows.{row}").get_config()
  seqs, split = train.load_data(c)
  model = train.build_model(c, seqs.num_items)
  mesh = sharding.make_mesh(1)
  svd = train.svd_factors_for(c, seqs, split) if c.encoder == "svd" else None
  params = train.init_state(c, model, seqs.num_items, train.prng_key(c), svd).params
  batches = data_lib.EvalBatches(seqs, split.valid, c.max_len, c.eval.batch_size,
                                 c.eval.exclude_history,
                                 length_buckets=train.length_buckets(c))
  batches = [sharding.shard_batch(b, mesh) for _, b in zip(range(args.batches), batches)]

  budget = int(c.eval.max_buffered_scores)
  modes = {"before": (4096, 0), "one_pass": (4096, budget), "auto": (-1, budget)}
  steps = {}
  for name, (chunk, buffered) in modes.items():
    mc = c.copy_and_resolve_references()
    mc.eval.chunk_size, mc.eval.max_buffered_scores = chunk, buffered
    steps[name] = jax.jit(train.make_eval_step(model, mc, seqs.num_items))
  sums, times = {}, {name: [] for name in modes}
  for name, step in steps.items():                      # compile + warm-up
    sums[name] = jax.device_get([step(params, b) for b in batches])
  for _ in range(args.repeats):
    for name, step in steps.items():
      t = time.perf_counter()
      jax.block_until_ready([step(params, b) for b in batches])
      times[name].append((time.perf_counter() - t) / len(batches))
  # Chunks of another size may round a score differently: equal to float32 precision.
  same = all(np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6)
             for name in modes for a, b in zip(sums["before"], sums[name]) for k in a)
  per_batch = {name: statistics.median(v) for name, v in times.items()}
  record = {
      "row": row, "dataset": c.dataset, "head": c.head, "num_items": seqs.num_items,
      "eval_batch": c.eval.batch_size, "auto_chunk_size": train.eval_chunk_size(c),
      "valid_batches_per_epoch": -(-len(split.valid) // c.eval.batch_size),
      "batches": len(batches), "repeats": args.repeats,
      "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "max_buffered_scores": budget,
      "s_per_batch": per_batch, "all_times": times,
      "before_over_one_pass": per_batch["before"] / per_batch["one_pass"],
      "before_over_auto": per_batch["before"] / per_batch["auto"],
      "same_metrics": same,
      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  print(json.dumps({k: v for k, v in record.items() if k != "all_times"}), flush=True)
  return record

if __name__ == "__main__":
  main()
