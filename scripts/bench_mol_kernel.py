"""All-pairs MoL scores: the fused Pallas kernel against XLA's `MoLHead.score_sides`.

  python scripts/bench_mol_kernel.py [--batch=256] [--pool=100000] [--block_items=128]
      [--chunk=8192] [--repeats=5] [--out=results/bench_mol_kernel.json]

A MoL head of the paper row's sizes (P_Q=8, P_X=4, d=64, gating hidden 128) with random
weights scores --batch queries against --pool items both ways, in the same run: XLA over
item chunks of --chunk (its (pairs, hidden) intermediates must fit), and
`jaxret.kernels.mol_pallas.mol_scores`. Checks the two agree, then prints and writes each
one's seconds per call (median of --repeats after a warm-up) and the kernel's speed-up. Off a
GPU the kernel runs in the Pallas interpreter: a correctness run, not a timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxret.kernels import mol_pallas  # noqa: E402
from jaxret.models.heads import MoLHead, MoLItemSide  # noqa: E402


def seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--pool", type=int, default=100_000)
  p.add_argument("--block_items", type=int, default=128)
  p.add_argument("--chunk", type=int, default=8192, help="items per XLA call")
  p.add_argument("--dim", type=int, default=50, help="encoder output width")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="results/bench_mol_kernel.json")
  args = p.parse_args(argv)
  if args.pool % args.chunk and args.pool > args.chunk:
    p.error(f"--pool ({args.pool}) must be a multiple of --chunk ({args.chunk})")
  chunk = min(args.chunk, args.pool)

  head = MoLHead()
  kq, ki, kp = jax.random.split(jax.random.key(0), 3)
  queries = jax.random.normal(kq, (args.batch, args.dim))
  items = jax.random.normal(ki, (args.pool, args.dim))
  params = head.init(kp, queries[:1], items[None, :2])["params"]
  q_side = jax.jit(lambda x: head.apply({"params": params}, x, method=MoLHead.query_side))(
      queries)
  i_side = jax.jit(lambda x: head.apply({"params": params}, x, method=MoLHead.item_side))(
      items)

  @jax.jit
  def xla_scores(q_side, i_side):
    def one(chunk_side):
      return head.apply({"params": params}, q_side, chunk_side, method=MoLHead.score_sides)
    chunks = MoLItemSide(*(x.reshape((-1, chunk) + x.shape[1:]) for x in i_side))
    return jnp.concatenate(jax.lax.map(one, chunks), axis=1)       # (n_chunks, B, c) -> (B, N)

  pallas_scores = jax.jit(lambda q, i: mol_pallas.mol_scores(
      head, params, q, i, block_items=args.block_items))
  want = np.asarray(xla_scores(q_side, i_side))
  got = np.asarray(pallas_scores(q_side, i_side))
  max_err = float(np.max(np.abs(got - want)))
  scale = float(np.max(np.abs(want)))
  if not max_err <= 1e-3 * max(scale, 1.0):
    raise SystemExit(f"error: the kernel differs from XLA by {max_err:.3g} (scores up to "
                     f"{scale:.3g})")
  xla_s = seconds(lambda: xla_scores(q_side, i_side), args.repeats)
  pallas_s = seconds(lambda: pallas_scores(q_side, i_side), args.repeats)
  record = dict(backend=jax.default_backend(), device=jax.devices()[0].device_kind,
                jax=jax.__version__, interpret=jax.default_backend() != "gpu",
                batch=args.batch, pool=args.pool, block_items=args.block_items,
                xla_chunk=chunk, xla_s=xla_s, pallas_s=pallas_s,
                speedup=round(xla_s / pallas_s, 3), max_abs_diff=max_err,
                pairs_per_s_pallas=round(args.batch * args.pool / pallas_s))
  print(f"{record['device']}: B={args.batch} N={args.pool}: XLA {xla_s * 1e3:.2f} ms, "
        f"Pallas {pallas_s * 1e3:.2f} ms ({record['speedup']:.2f}x); max |diff| {max_err:.2e}"
        + (" [interpreter: not a timing]" if record["interpret"] else ""))
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
