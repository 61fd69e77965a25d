"""Builds the two-stage serving index of a trained MoL run and picks k' for it.

  python -m experiments.build_index --workdir=/tmp/run1 [--out=FILE.npz] \
      [--quantization=int8] [--hindexer_steps=3000] [--k=100 --target_recall=0.99]

Restores the run's best checkpoint and builds a `jaxret.retrieval.MoLIndex` over every item
(MoL item sides, stage-1 tables). With --hindexer_steps > 0 it distils an h-indexer from the
MoL head (`MoLIndex.fit_hindexer`) on the test queries of all users but --eval_users held-out
ones, on which it then measures relative recall@k of the two-stage retrieve against the exact
MoL top-k per k' and picks the smallest k' that reaches --target_recall
(`MoLIndex.recall_curve` / `choose_k_prime`). Writes the index (default
WORKDIR/index.npz; `MoLIndex.load(path)` reads it back) and WORKDIR/index.json (settings,
recall curve, chosen k').
"""
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from experiments.workdirs import encoded_examples, restore_best
from jaxret.errors import ConfigError
from jaxret.models.retrieval import RetrievalModel
from jaxret.retrieval import GENERATORS, QUANTIZATIONS, HIndexer, MoLIndex

def define_flags() -> None:
  """The command's flags (defined when run as a command, so importing `build` defines none)."""
  flags.DEFINE_string("workdir", None, "A MoL run's workdir (holds config.json and checkpoints/).")
  flags.DEFINE_string("out", None, "Index file (default: WORKDIR/index.npz).")
  flags.DEFINE_string("data_dir", None, "Override the run's data_dir.")
  flags.DEFINE_enum("quantization", "fp32", list(QUANTIZATIONS), "Stage-1 table format.")
  flags.DEFINE_integer("hindexer_steps", 0, "Distil an h-indexer for this many steps (0: none).")
  flags.DEFINE_integer("hindexer_dim", 64, "h-indexer embedding width.")
  flags.DEFINE_integer("hindexer_hidden", 512, "h-indexer tower width.")
  flags.DEFINE_enum("generator", None, list(GENERATORS),
                    "Stage-1 generator for the recall curve (default: hindexer when fitted, "
                    "else avg).")
  flags.DEFINE_integer("k", 100, "Results per query of the recall curve.")
  flags.DEFINE_float("target_recall", 0.99, "Relative recall@k the chosen k' must reach.")
  flags.DEFINE_string("k_primes", "", "Comma-separated k' to measure (default: k x 1, 2, 5, ...).")
  flags.DEFINE_integer("eval_users", 256, "Held-out users whose queries measure the curve.")
  flags.DEFINE_integer("seed", 0, "Which users are held out.")


FLAGS = flags.FLAGS


def user_queries(model, params, seqs, examples, max_len: int) -> np.ndarray:
  """(M, D) query vectors: the encoder's output at the last position of each example."""
  return np.concatenate([enc[:, -1] for _, enc in encoded_examples(
      model, params, seqs, examples, max_len)]).astype(np.float32)


def build(workdir: str, out: str | None = None, data_dir: str | None = None, **opts) -> dict:
  """Builds, measures and writes the index of `workdir` (the flags as keyword arguments)."""
  config, seqs, split, model, params, meta = restore_best(workdir, data_dir)
  if config.head != "mol":
    raise ConfigError(f"{workdir} trained a {config.head!r} head; a serving index needs a MoL "
                      "run (--head=mol)")
  t0 = time.time()
  index = MoLIndex.from_model(model, params, quantization=opts["quantization"])
  queries = user_queries(model, params, seqs, split.eval_examples("test"), config.max_len)
  eval_users = min(opts["eval_users"], len(queries))
  if eval_users < 1:
    raise ConfigError(f"--eval_users must be >= 1, got {opts['eval_users']}")
  perm = np.random.default_rng(opts["seed"]).permutation(len(queries))
  held_out, fit_q = queries[perm[:eval_users]], queries[perm[eval_users:]]
  if opts["hindexer_steps"] > 0:
    if len(fit_q) == 0:
      raise ConfigError(f"no users left to fit the h-indexer: all {len(queries)} are among "
                        f"--eval_users={opts['eval_users']}")
    ids = jnp.arange(1, seqs.num_items + 1, dtype=jnp.int32)
    items = model.apply({"params": params}, ids, method=RetrievalModel.embed_items)
    teacher_k = min(64, index.num_items)
    index = index.fit_hindexer(
        fit_q, items, HIndexer(dim=opts["hindexer_dim"], hidden=opts["hindexer_hidden"]),
        teacher_k=teacher_k, steps=opts["hindexer_steps"],
        num_negatives=min(1024, index.num_items), log=print)
  generator = opts["generator"] or ("hindexer" if "hindexer" in index.generators else "avg")
  k, target = opts["k"], opts["target_recall"]
  if not 1 <= k <= index.num_items:
    raise ConfigError(f"--k must lie in [1, {index.num_items}] (the catalog), got {k}")
  if not 0 < target <= 1:
    raise ConfigError(f"--target_recall must lie in (0, 1], got {target}")
  try:
    k_primes = [int(x) for x in opts["k_primes"].split(",") if x] or index.default_k_primes(k)
  except ValueError:
    raise ConfigError(f"--k_primes must be integers, got {opts['k_primes']!r}") from None
  try:
    curve = index.recall_curve(held_out, k, k_primes, generator, stop_at=target)
  except ValueError as e:
    raise ConfigError(f"--k_primes / --generator: {e}") from None
  k_prime = next((kp for kp, r in curve.items() if r >= target), None)
  if k_prime is None:
    print(f"note: no k' of {', '.join(map(str, curve))} reaches relative recall@{k} {target}; "
          f"the best is {max(curve.values()):.4f}")
  out_path = index.save(out or Path(workdir) / "index.npz")
  summary = {"index": str(out_path), "checkpoint_epoch": meta.get("epoch"),
             "num_items": index.num_items, "quantization": opts["quantization"],
             "generators": list(index.generators), "generator": generator,
             "hindexer_steps": opts["hindexer_steps"], "k": k,
             "target_recall": target, "k_prime": k_prime,
             "recall_at_k_prime": {str(kp): r for kp, r in curve.items()},
             "eval_users": eval_users, "fit_users": int(len(fit_q)),
             "seconds": round(time.time() - t0, 1)}
  (Path(workdir) / "index.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise ConfigError("--workdir is required (the folder of a MoL run)")
  summary = build(FLAGS.workdir, FLAGS.out, FLAGS.data_dir, quantization=FLAGS.quantization,
                  hindexer_steps=FLAGS.hindexer_steps, hindexer_dim=FLAGS.hindexer_dim,
                  hindexer_hidden=FLAGS.hindexer_hidden, generator=FLAGS.generator,
                  k=FLAGS.k, target_recall=FLAGS.target_recall, k_primes=FLAGS.k_primes,
                  eval_users=FLAGS.eval_users, seed=FLAGS.seed)
  print(json.dumps(summary, indent=2))
  kp = summary["k_prime"]
  print(f"wrote {summary['index']}; " + (
      f"k'={kp} reaches relative recall@{summary['k']} {summary['target_recall']} "
      f"({summary['generator']})" if kp else "no measured k' reached the target"))


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
