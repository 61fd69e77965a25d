"""Reproduces the paper's tables: trains every row × seed, then writes CSV, Markdown and figures.

  python -m experiments.reproduce --table=seed_ml1m      # 10 rows × seeds 0,1,2 on ml-1m-half
  python -m experiments.reproduce --table=paper_ml1m --dataset=ml-1m   # the same, full ML-1M
  python -m experiments.reproduce --table=beauty --rows=sasrec_mol_ss --seeds=0,1,2,3,4
  python -m experiments.reproduce --table=seed_ml1m --report_only     # rebuild the reports

Each run trains in <workdir_root>/<table>/<row>/s<seed> from the row's config
(experiments/configs/rows/<table>_<row>.py). A run with a test_metrics.json is finished and
skipped (unless the row's eval.patience grew: then it trains on from its last checkpoint);
any other resumes from its checkpoint. Then <out_dir>/<table>.csv (long form),
<out_dir>/<table>.md and two PNGs are rebuilt from every finished run under the table's folder,
and the README block between `<!-- reproduce:<table>:begin -->` and `...:end -->` from the md.
Smoke runs: `--epochs=N` and `--config.FIELD=VALUE` overrides (applied to every row), with
their own --workdir_root and --out_dir.
"""
from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import traverse_util
from ml_collections import config_flags

from experiments import cli
from experiments.configs import default
from jaxret import train
from jaxret.errors import ConfigError, JaxretError

REPO = Path(__file__).resolve().parents[1]
CSV_COLUMNS = ("encoder", "head", "loss", "metric", "mean", "std", "n_seeds", "published")
VALID_METRIC = "ndcg@10"  # the validation curve drawn per epoch (the early-stopping metric)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- the tables


@dataclasses.dataclass(frozen=True)
class Row:
  """One table row; its config is experiments/configs/rows/<table>_<name>.py."""
  name: str  # e.g. 'sasrec_mlp_bce'
  label: str  # as printed, e.g. 'SASRec MLP+BCE'
  # Reference numbers by source (a key of `Table.sources`), then metric.
  references: Mapping[str, Mapping[str, float]] = dataclasses.field(default_factory=dict)
  # A reference ranker that is not trained ('popularity': `jaxret.baselines`), evaluated once
  # (as s0, whatever the seeds) on the data and protocol of row `config_row`'s config.
  baseline: str = ""
  config_row: str = ""


BASELINES = ("popularity",)


def popularity_row(config_row: str) -> Row:
  return Row("popularity", "Item popularity (no training)", baseline="popularity",
             config_row=config_row)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  metrics: tuple[str, ...]  # the test metrics shown, in column order
  rows: tuple[Row, ...]
  # Reference source -> (column label, where the numbers come from). 'published' fills the csv's
  # `published` column; any other source gets a `ref_<source>` column after it.
  sources: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
  note: str = ""


_SEED_METRICS = ("hr@1", "hr@10", "hr@50", "hr@500", "mrr")


def _seed_row(name: str, label: str, *published: float) -> Row:
  return Row(name, label, {"published": dict(zip(_SEED_METRICS, published))})


SEED_ML1M = Table(
    "seed_ml1m",
    "Seed study: learned similarities vs the dot product (ML-1M, ratio split, BCE)",
    _SEED_METRICS,
    (_seed_row("sasrec_mlp_bce", "SASRec MLP+BCE", 0.0644, 0.3467, 0.7044, 0.9378, 0.1588),
     _seed_row("sasrec_mol_bce", "SASRec MoL+BCE", 0.0644, 0.3489, 0.6533, 0.9378, 0.1521),
     _seed_row("svd_mlp_bce", "SVD MLP+BCE", 0.0600, 0.3244, 0.6844, 0.9356, 0.1497),
     _seed_row("sasrec_mol_ss", "SASRec MoL+SS", 0.0600, 0.3200, 0.6178, 0.9267, 0.1454),
     _seed_row("sasrec_dot_bce", "SASRec Dot+BCE", 0.0466, 0.3355, 0.6355, 0.9311, 0.1355),
     _seed_row("sasrec_fm_bce", "SASRec FM+BCE", 0.0578, 0.3044, 0.5667, 0.9222, 0.1334),
     _seed_row("sasrec_neural_fm_bce", "SASRec NeuralFM+BCE", 0.0378, 0.2956, 0.6156, 0.9200,
               0.1257),
     _seed_row("svd_fm_bce", "SVD FM+BCE", 0.0511, 0.2200, 0.4844, 0.8644, 0.1142),
     _seed_row("svd_neural_fm_bce", "SVD NeuralFM+BCE", 0.0378, 0.2667, 0.6356, 0.9133, 0.1113),
     _seed_row("svd_dot_bce", "SVD Dot+BCE", 0.0044, 0.1933, 0.5400, 0.9088, 0.0633),
     popularity_row("sasrec_dot_bce")),
    {"published": ("published, ML-1M", "published by the seed study, on the full ML-1M")},
    "Protocol `ratio` (70/20/10 global temporal split), 127 uniform negatives per positive "
    "(SS: 128), L=200, full ranking with the history excluded; one validation / test example "
    "per user, the first item after the cut (`ratio_targets=first`). The published numbers "
    "are not comparable one to one: their candidate protocol is unknown, and item popularity "
    "scores HR@500 ~0.58 under this full ranking against >= 0.86 in every published row "
    "(`results/diagnostics/seed_ml1m_probe.json`).")

PAPER_ML1M = Table(
    "paper_ml1m",
    "Revisiting Neural Retrieval on Accelerators (KDD 2023), ML-1M: SASRec, sampled softmax",
    ("hr@10", "ndcg@10", "hr@50", "hr@200", "mrr"),
    (Row("sasrec_dot_ss", "SASRec Dot+SS", {
        "published": {"hr@10": 0.2853, "ndcg@10": 0.1603, "hr@50": 0.5474, "hr@200": 0.7528},
        "pytorch_ml1m_half": {"hr@10": 0.2197, "ndcg@10": 0.1154, "hr@50": 0.508,
                              "hr@200": 0.745, "mrr": 0.100}}),
     Row("sasrec_mol_ss", "SASRec MoL+SS"),
     popularity_row("sasrec_dot_ss")),
    {"published": ("paper, ML-1M",
                   "SASRec (SS) published by Zhai et al. (KDD 2023), on the full ML-1M"),
     "pytorch_ml1m_half": ("PyTorch, ml-1m-half",
                           "a PyTorch SASRec measured on ml-1m-half with this protocol")},
    "Protocol `loo` (leave-one-out), 128 sampled-softmax negatives, L=200, full ranking with "
    "the history excluded.")

BEAUTY = Table(
    "beauty",
    "Amazon Beauty: SASRec, dot product vs MoL, sampled softmax",
    ("hr@10", "ndcg@10", "hr@50", "hr@200", "mrr"),
    (Row("sasrec_dot_ss", "SASRec Dot+SS"), Row("sasrec_mol_ss", "SASRec MoL+SS"),
     popularity_row("sasrec_dot_ss")),
    {},
    "Protocol `loo` (leave-one-out), 128 sampled-softmax negatives, L=50, full ranking with "
    "the history excluded. No published numbers.")

TABLES = {t.name: t for t in (SEED_ML1M, PAPER_ML1M, BEAUTY)}


def get_table(name: str) -> Table:
  if name not in TABLES:
    raise ConfigError(f"unknown table {name!r}; valid names: {', '.join(sorted(TABLES))}")
  return TABLES[name]


def select_rows(table: Table, names: Sequence[str] | None = None) -> tuple[Row, ...]:
  """The rows named (all when `names` is empty), in the order given."""
  if not names:
    return table.rows
  by_name = {r.name: r for r in table.rows}
  for n in names:
    if n not in by_name:
      raise ConfigError(f"unknown row {n!r} of table {table.name}; valid rows: "
                        f"{', '.join(by_name)}")
  return tuple(by_name[n] for n in names)


def row_config(table: Table, row: Row, seed: int, *, dataset: str | None = None,
               data_dir: str | None = None, epochs: int | None = None,
               overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The row's config file, then the seed, the command's dataset/data_dir/epochs and the
  `FIELD.PATH -> value` overrides (smoke runs), in that order."""
  config = importlib.import_module(
      f"experiments.configs.rows.{table.name}_{row.config_row or row.name}").get_config()
  config.seed = seed
  if dataset:
    config.dataset = dataset
  if data_dir:
    config.data_dir = data_dir
  if epochs is not None:
    config.train.epochs = epochs
  for field, value in (overrides or {}).items():
    holder, _, last = field.rpartition(".")
    try:
      target = config
      for part in filter(None, holder.split(".")):
        target = target[part]
      if last not in target:
        raise KeyError(field)
      target[last] = value
    except (KeyError, TypeError) as e:
      raise ConfigError(f"cannot override config field {field!r} with {value!r} "
                        f"({type(e).__name__}: {e})") from None
  return config


# ----------------------------------------------------------------------------- the sweep


def run_dir(workdir_root: str | Path, table: Table, row: Row, seed: int) -> Path:
  return Path(workdir_root) / table.name / row.name / f"s{seed}"


def is_finished(workdir: Path) -> bool:
  return (workdir / "test_metrics.json").exists()  # written last, atomically


# Fields that may change between invocations of one run without changing its numbers.
_FREE_FIELDS = frozenset({"data_dir", "train.num_devices", "eval.batch_size",
                          "eval.chunk_size", "eval.max_buffered_scores"})


def _patience_grows(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
  """A larger `eval.patience` (0 = never stop) continues a run exactly: early stopping only
  decides when training ends, so a run stopped at patience p is the first part of the same
  run under any patience above p."""
  old, new = stored.get("eval.patience"), wanted.get("eval.patience")
  return old is not None and new is not None and old != 0 and (new == 0 or new > old)


def check_run_matches(workdir: Path, config: ml_collections.ConfigDict) -> bool:
  """ConfigError if `workdir` holds a run of another config (dataset, model, seed, ...):
  skipping or resuming it would put another experiment's numbers in the table. An unfinished
  run may continue under another `train.epochs`, any run under a larger `eval.patience`;
  fields one side lacks are not compared. Returns whether the patience grew (a finished run
  then trains on)."""
  path = workdir / "config.json"
  if not path.exists():
    return False
  stored = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
  wanted = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")
  free = _FREE_FIELDS if is_finished(workdir) else _FREE_FIELDS | {"train.epochs"}
  patience_grew = _patience_grows(stored, wanted)
  if patience_grew:
    free = free | {"eval.patience"}
  diff = [k for k in wanted if k in stored and k not in free and stored[k] != wanted[k]]
  if diff:
    shown = ", ".join(f"{k}={stored[k]!r} (this command: {wanted[k]!r})" for k in diff[:3])
    raise ConfigError(f"{workdir} holds a run with {shown}; pass another --workdir_root, or "
                      f"delete that folder to train it again")
  return patience_grew


def hardware() -> str:
  """The accelerator (or CPU model) this process trains on, e.g. '1× NVIDIA H100 80GB HBM3'."""
  devices = jax.devices()
  if devices[0].platform != "cpu":
    return f"{len(devices)}× {devices[0].device_kind}"
  model = platform.processor() or platform.machine()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"CPU, {os.cpu_count()} cores ({model})"


def _record_session(workdir: Path, command: str) -> None:
  """Appends who trained this run, where, to <workdir>/reproduce.json (read by the report)."""
  path = workdir / "reproduce.json"
  sessions = json.loads(path.read_text()) if path.exists() else []
  sessions.append({"command": command, "hardware": hardware(), "jax": jax.__version__,
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %z")})
  workdir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(sessions, indent=2) + "\n")


@dataclasses.dataclass
class SweepSummary:
  trained: list[str] = dataclasses.field(default_factory=list)  # '<row>/s<seed>'
  skipped: list[str] = dataclasses.field(default_factory=list)  # finished before this sweep
  failed: list[str] = dataclasses.field(default_factory=list)  # stopped by a TrainingError


def sweep(table: Table, seeds: Sequence[int], *, workdir_root: str | Path,
          rows: Sequence[str] | None = None, dataset: str | None = None,
          data_dir: str | None = None, epochs: int | None = None,
          overrides: Mapping[str, Any] | None = None, command: str = "",
          log: Log = print) -> SweepSummary:
  """Trains every unfinished row × seed of `table` (resuming interrupted runs).

  Every config and workdir is checked before the first run trains. A run that stops with a
  `TrainingError` (a non-finite loss) is reported and the sweep goes on; other errors stop it.
  """
  runs = []
  for row in select_rows(table, rows):
    for seed in ([0] if row.baseline else seeds):
      config = row_config(table, row, seed, dataset=dataset, data_dir=data_dir, epochs=epochs,
                          overrides=overrides)
      workdir = run_dir(workdir_root, table, row, seed)
      train.validate_config(config)
      trains_on = check_run_matches(workdir, config)
      runs.append((row, seed, config, workdir, trains_on))
  summary = SweepSummary()
  todo = []
  for row, seed, config, workdir, trains_on in runs:
    if is_finished(workdir) and not trains_on:
      summary.skipped.append(f"{row.name}/s{seed}")
    else:
      todo.append((row, seed, config, workdir))
  n_rows = len({r[0].name for r in runs})
  log(f"{table.name}: {len(runs)} runs ({n_rows} rows × {len(seeds)} seeds) under "
      f"{Path(workdir_root) / table.name}: {len(summary.skipped)} finished (skipped), "
      f"{len(todo)} to train")
  for i, (row, seed, config, workdir) in enumerate(todo, 1):
    tag = f"[{i}/{len(todo)}] {table.name}/{row.name} s{seed}"
    resuming = (workdir / "checkpoints").exists()
    log(f"{tag}: {'resuming' if resuming else 'training'} in {workdir}"
        + (" (under a larger eval.patience)" if is_finished(workdir) else ""))
    _record_session(workdir, command)
    try:
      result = (run_baseline(row, config, workdir) if row.baseline
                else train.train_and_evaluate(config, workdir, log=log))
    except train.TrainingError as e:
      log(f"{tag}: failed: {e}")
      summary.failed.append(f"{row.name}/s{seed}")
      continue
    summary.trained.append(f"{row.name}/s{seed}")
    done = (f"{tag}: evaluated" if row.baseline else
            f"{tag}: done after {result['epochs']} epochs (best {result['best_epoch']})")
    log(f"{done}, test " + ", ".join(f"{m} {result[m]:.4f}" for m in table.metrics
                                     if m in result))
  log(f"{table.name}: {len(summary.trained)} trained, {len(summary.skipped)} skipped "
      f"(finished), {len(summary.failed)} failed")
  return summary


def run_baseline(row: Row, config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
  """Evaluates an untrained reference row; writes config.json and, last, test_metrics.json
  (its test metrics and `valid_ndcg@10`), the records a trained run leaves."""
  if row.baseline != "popularity":
    raise ConfigError(f"unknown baseline {row.baseline!r} of row {row.name}; valid names: "
                      f"{', '.join(BASELINES)}")
  from jaxret import baselines
  out = baselines.evaluate_popularity(config)
  result = {**out["test"], f"valid_{VALID_METRIC}": out["valid"][VALID_METRIC],
            "eval_time": out["eval_time"]}
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json(indent=2))
  tmp = workdir / "test_metrics.json.tmp"
  tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
  tmp.replace(workdir / "test_metrics.json")
  return result


# ----------------------------------------------------------------------------- results


@dataclasses.dataclass
class RunRecord:
  """A finished run, as read from its workdir."""
  seed: int
  test: dict[str, float]  # test_metrics.json: test metrics + best_epoch, epochs, train_time
  valid: dict[int, float]  # epoch -> validation NDCG@10 (metrics.jsonl)
  config: dict[str, Any]  # config.json
  sessions: list[dict[str, Any]]  # reproduce.json: the commands that trained it, and where


def _valid_curve(path: Path, metric: str = VALID_METRIC) -> dict[int, float]:
  curve = {}
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a half-written last line
      if record.get("split") == "valid" and metric in record:
        curve[int(record["epoch"])] = float(record[metric])
  return dict(sorted(curve.items()))


def collect(table: Table, workdir_root: str | Path) -> dict[str, list[RunRecord]]:
  """Every finished run (any s<seed> folder with a test_metrics.json) of every row, by row."""
  results = {}
  for row in table.rows:
    runs = []
    for workdir in (Path(workdir_root) / table.name / row.name).glob("s*"):
      if not re.fullmatch(r"s\d+", workdir.name) or not is_finished(workdir):
        continue
      config_path, sessions_path = workdir / "config.json", workdir / "reproduce.json"
      runs.append(RunRecord(
          seed=int(workdir.name[1:]),
          test=json.loads((workdir / "test_metrics.json").read_text()),
          valid=_valid_curve(workdir / "metrics.jsonl"),
          config=json.loads(config_path.read_text()) if config_path.exists() else {},
          sessions=json.loads(sessions_path.read_text()) if sessions_path.exists() else []))
    results[row.name] = sorted(runs, key=lambda r: r.seed)
  return results


def _metric_key(metric: str) -> tuple[str, int]:
  name, _, k = metric.partition("@")
  return name, int(k) if k.isdigit() else 0


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
  """Mean and sample standard deviation (ddof=1; None for one value); None, None if empty."""
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def summarize(table: Table, results: Mapping[str, Sequence[RunRecord]],
              dataset: str | None = None) -> list[dict[str, Any]]:
  """The csv's long-form records: one per (row, metric), the table's metrics first, then every
  other HR@k / NDCG@k the runs have. A row without finished runs has n_seeds 0, no mean."""
  found = {m for runs in results.values() for r in runs for m in r.test
           if m.startswith(("hr@", "ndcg@"))}
  metrics = list(table.metrics) + sorted(found - set(table.metrics), key=_metric_key)
  extra_sources = [s for s in table.sources if s != "published"]
  records = []
  for row in table.rows:
    config = row_config(table, row, 0, dataset=dataset)
    runs = results.get(row.name, [])
    datasets = sorted({r.config.get("dataset", "?") for r in runs}) or [config.dataset]
    per_row = {"row": row.name}
    per_row.update({f"ref_{s}": None for s in extra_sources})
    per_row.update(
        epochs=_mean_std([r.test["epochs"] for r in runs if "epochs" in r.test])[0],
        best_epoch=_mean_std([r.test["best_epoch"] for r in runs if "best_epoch" in r.test])[0],
        train_time_s=_mean_std([r.test["train_time"] for r in runs if "train_time" in r.test])[0],
        dataset="+".join(datasets), seeds=" ".join(str(r.seed) for r in runs))
    for metric in metrics:
      values = [float(r.test[metric]) for r in runs if metric in r.test]
      mean, std = _mean_std(values)
      model = (("", row.baseline, "") if row.baseline
               else (config.encoder, config.head, config.loss))
      record = {**dict(zip(("encoder", "head", "loss"), model)),
                "metric": metric, "mean": mean, "std": std, "n_seeds": len(values),
                "published": row.references.get("published", {}).get(metric), **per_row}
      for s in extra_sources:
        record[f"ref_{s}"] = row.references.get(s, {}).get(metric)
      records.append(record)
  return records


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
  columns = list(CSV_COLUMNS) + [k for k in records[0] if k not in CSV_COLUMNS]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for record in records:
      writer.writerow({k: "" if record[k] is None else record[k] for k in columns})


# ----------------------------------------------------------------------------- figures


def write_figures(table: Table, results: Mapping[str, Sequence[RunRecord]], out_dir: Path,
                  log: Log = print) -> list[Path]:
  """Validation NDCG@10 per epoch and test HR@k against k, one line per row (mean over seeds;
  published HR@k dashed). Returns the PNGs written: none without matplotlib or results."""
  if not any(results.get(row.name) for row in table.rows):
    return []
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    log("warning: matplotlib is not installed, so no figures were drawn; install it with "
        "`pip install -e .` and rerun with --report_only")
    return []
  from matplotlib.lines import Line2D
  from matplotlib.ticker import FuncFormatter, MaxNLocator
  colors = plt.get_cmap("tab10")
  rows = [(i, row) for i, row in enumerate(table.rows) if results.get(row.name)]  # i: colour
  paths = []

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, row in rows:
    runs = results[row.name]
    if row.baseline:  # not trained: its validation value as a level line
      level = [r.test[f"valid_{VALID_METRIC}"] for r in runs if f"valid_{VALID_METRIC}" in r.test]
      if level:
        ax.axhline(float(np.mean(level)), color=colors(i % 10), ls=":", label=row.label)
      continue
    epochs = sorted({e for r in runs for e in r.valid})
    means = [np.mean([r.valid[e] for r in runs if e in r.valid]) for e in epochs]
    ax.plot(epochs, means, color=colors(i % 10), label=f"{row.label} ({len(runs)} seeds)")
  ax.set(xlabel="epoch", ylabel=f"validation {VALID_METRIC.upper()} (mean over seeds)",
         title=table.name)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  paths.append(out_dir / f"{table.name}_valid_{VALID_METRIC.replace('@', '')}.png")
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(7, 4.5))
  has_published = False
  for i, row in rows:
    runs = results[row.name]
    ks = sorted({_metric_key(m)[1] for r in runs for m in r.test if m.startswith("hr@")})
    values = [[r.test[f"hr@{k}"] for r in runs if f"hr@{k}" in r.test] for k in ks]
    ax.errorbar(ks, [np.mean(v) for v in values], yerr=[_mean_std(v)[1] or 0.0 for v in values],
                color=colors(i % 10), marker="o", capsize=2, label=row.label)
    published = row.references.get("published", {})
    pub_ks = sorted(_metric_key(m)[1] for m in published if m.startswith("hr@"))
    if pub_ks:
      has_published = True
      ax.plot(pub_ks, [published[f"hr@{k}"] for k in pub_ks], color=colors(i % 10), ls="--",
              marker="o", mfc="none")
  handles, _ = ax.get_legend_handles_labels()
  if has_published:
    handles.append(Line2D([], [], color="black", ls="--", marker="o", mfc="none",
                          label=table.sources["published"][0]))
  ax.set_xscale("log")
  ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
  ax.set(xlabel="k", ylabel="test HR@k", title=f"{table.name} (bars: std over seeds)")
  ax.grid(alpha=0.3, which="both")
  ax.legend(handles=handles, fontsize=7)
  paths.append(out_dir / f"{table.name}_hr_at_k.png")
  fig.tight_layout()
  fig.savefig(paths[-1], dpi=120)
  plt.close(fig)
  return paths


# ----------------------------------------------------------------------------- markdown


def _fmt_value(mean: float | None, std: float | None) -> str:
  if mean is None:
    return "—"
  return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _fmt_ref(value: float | None) -> str:
  return "" if value is None else f"{value:.4f}"


def _fmt_duration(seconds: float | None) -> str:
  if seconds is None:
    return "—"
  if seconds < 120:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def _fmt_epochs(epochs: float | None, best: float | None) -> str:
  if epochs is None:
    return "—"
  return f"{epochs:.3g} ({best:.3g})" if best is not None else f"{epochs:.3g}"


def render_markdown(table: Table, records: Sequence[Mapping[str, Any]],
                    results: Mapping[str, Sequence[RunRecord]], figures: Sequence[Path],
                    command: str = "") -> str:
  """The table as Markdown: ours (mean ± std) beside each reference, epochs and time per row,
  then the dataset, hardware and the commands that trained the runs (else `command`). Figure
  links are relative to the md file."""
  by_row = {}
  for r in records:
    by_row.setdefault(r["row"], {})[r["metric"]] = r
  head = ["Model"]
  for metric in table.metrics:
    head.append(metric.upper())
    head += [f"{metric.upper()} ({tag})" for s, (tag, _) in table.sources.items()
             if any(metric in row.references.get(s, {}) for row in table.rows)]
  head += ["seeds", "epochs (best)", "train time / seed"]
  lines = [f"### {table.title}", "", f"`{table.name}`. {table.note}", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in table.rows:
    cells = [row.label]
    rec = by_row[row.name]
    for metric in table.metrics:
      cells.append(_fmt_value(rec[metric]["mean"], rec[metric]["std"]))
      cells += [_fmt_ref(row.references.get(s, {}).get(metric)) for s in table.sources
                if any(metric in r.references.get(s, {}) for r in table.rows)]
    first = rec[table.metrics[0]]
    n_runs = len(results.get(row.name, []))
    cells += ["—" if row.baseline else str(n_runs), _fmt_epochs(first["epochs"],
                                                               first["best_epoch"]),
              _fmt_duration(first["train_time_s"])]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  notes = ["Ours: test split, mean ± sample std (ddof=1) over the finished seeds, each from "
           "the checkpoint with the best validation NDCG@10; — = no finished seed."]
  if any(row.baseline == "popularity" and results.get(row.name) for row in table.rows):
    notes.append("Item popularity: every item scored by its count in the training part, "
                 "evaluated the same way (ties count against the target), not trained.")
  notes += [f"({tag}): {text}." for tag, text in table.sources.values()]
  datasets = sorted({r.config.get("dataset", "?") for runs in results.values() for r in runs})
  protocols = sorted({r.config.get("protocol", "?") for runs in results.values() for r in runs})
  sessions = [s for runs in results.values() for r in runs for s in r.sessions]
  if datasets:
    notes.append(f"Dataset: {', '.join(f'`{d}`' for d in datasets)}; protocol "
                 f"{', '.join(f'`{p}`' for p in protocols)}.")
  else:
    defaults = sorted({r["dataset"] for r in records})
    notes.append(f"No finished runs yet (dataset {', '.join(f'`{d}`' for d in defaults)}).")
  devices = sorted({s["hardware"] for s in sessions})
  if devices:
    notes.append(f"Hardware: {'; '.join(devices)}.")
  commands = sorted({s["command"] for s in sessions if s.get("command")})
  if commands:
    notes.append("Trained by: " + "; ".join(f"`{c}`" for c in commands) + ".")
  elif command:
    notes.append(f"Command: `{command}`.")
  lines += [" ".join(notes), ""]
  if figures:
    lines += [" ".join(f"![{p.stem}]({p.name})" for p in figures), ""]
  return "\n".join(lines)


def write_reports(table: Table, workdir_root: str | Path, out_dir: str | Path, *,
                  dataset: str | None = None, command: str = "", readme: str | Path | None = None,
                  log: Log = print) -> list[Path]:
  """Rebuilds <out_dir>/<table>.csv, .md and PNGs from the finished runs, then the README
  block. Returns the files written."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  results = collect(table, workdir_root)
  records = summarize(table, results, dataset)
  csv_path, md_path = out_dir / f"{table.name}.csv", out_dir / f"{table.name}.md"
  write_csv(records, csv_path)
  figures = write_figures(table, results, out_dir, log)
  md_path.write_text(render_markdown(table, records, results, figures, command))
  written = [csv_path, md_path, *figures]
  if readme and update_readme(Path(readme), table.name, md_path, log):
    written.append(Path(readme))
  return written


# ----------------------------------------------------------------------------- README


def readme_markers(table_name: str) -> tuple[str, str]:
  return f"<!-- reproduce:{table_name}:begin -->", f"<!-- reproduce:{table_name}:end -->"


def replace_block(text: str, table_name: str, block: str) -> str | None:
  """`text` with the lines between the table's markers replaced by `block`; None without
  both markers. Everything outside the markers is kept byte for byte."""
  begin, end = readme_markers(table_name)
  start = text.find(begin)
  stop = text.find(end, start + len(begin)) if start >= 0 else -1
  if start < 0 or stop < 0:
    return None
  inner = "\n" + block.strip("\n") + "\n" if block.strip() else "\n"
  return text[:start + len(begin)] + inner + text[stop:]


def update_readme(readme: Path, table_name: str, md_path: Path, log: Log = print) -> bool:
  """Fills the README's block for the table with <out_dir>/<table>.md, links made relative to
  the README. Skipped (False) if the README lacks the markers or the md lies outside the
  README's folder (a smoke run in /tmp must not fill the repository's README)."""
  if not readme.exists():
    log(f"{readme} not found; README not updated")
    return False
  rel = Path(os.path.relpath(md_path.resolve().parent, readme.resolve().parent))
  if rel.parts and rel.parts[0] == "..":
    log(f"README not updated: {md_path} is outside {readme.parent}")
    return False
  block = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", lambda m: f"]({(rel / m.group(1)).as_posix()})",
                 md_path.read_text())
  text = readme.read_text()
  new = replace_block(text, table_name, block)
  if new is None:
    begin, end = readme_markers(table_name)
    log(f"README not updated: {readme} has no `{begin}` ... `{end}` block")
    return False
  if new != text:
    readme.write_text(new)
  return True


# ----------------------------------------------------------------------------- command line


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so tests can import the module
  next to others (experiments.run) that define flags of the same names."""
  flags.DEFINE_string("table", None, f"Table to reproduce: {', '.join(sorted(TABLES))}.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds to train per row.")
  flags.DEFINE_list("rows", None, "Rows to train (default all); the report lists every row.")
  flags.DEFINE_string("dataset", None, "Dataset for every row (default: the row's, "
                      "ml-1m-half or amazon-beauty); e.g. ml-1m for the full MovieLens-1M.")
  flags.DEFINE_string("data_dir", None, "Folder of datasets (default $JAXRET_DATA_DIR, else "
                      "./data).")
  flags.DEFINE_string("workdir_root", "workdirs/reproduce",
                      "Runs go to <workdir_root>/<table>/<row>/s<seed>.")
  flags.DEFINE_string("out_dir", "results", "Where <table>.csv, <table>.md and the PNGs go.")
  flags.DEFINE_string("readme", str(REPO / "README.md"), "README whose reproduce block is "
                      "refilled from <out_dir>/<table>.md ('' = none).")
  flags.DEFINE_bool("report_only", False, "Only rebuild the reports from existing workdirs.")
  flags.DEFINE_integer("epochs", None, "Maximum epochs per run (smoke runs).")
  flags.mark_flag_as_required("table")
  try:  # config_flags reads the --config.FIELD=VALUE overrides now: a misspelt one raises
    config_flags.DEFINE_config_dict(
        "config", default.get_config(), "Overrides for every row's config (smoke runs), e.g. "
        "--config.sasrec.dim=16; only the fields given are applied.", lock_config=True)
  except (AttributeError, KeyError) as e:
    field = str(e).strip("\"'")
    print(f"error: unknown config field {field!r}; run with --helpshort to list the flags",
          file=sys.stderr)
    sys.exit(2)


def _parse_seeds(values: Sequence[str]) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    seeds = []
  if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
    raise ConfigError(f"--seeds must be distinct non-negative integers, e.g. 0,1,2; got "
                      f"{','.join(values)!r}")
  return seeds


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments {' '.join(argv[1:])!r}; flags look like --table=...")
  FLAGS = flags.FLAGS
  table = get_table(FLAGS.table)
  seeds = _parse_seeds(FLAGS.seeds)
  select_rows(table, FLAGS.rows)  # an unknown row fails before anything runs
  command = shlex.join(["python", "-m", "experiments.reproduce", *sys.argv[1:]])
  summary = None
  if not FLAGS.report_only:
    overrides = config_flags.get_override_values(FLAGS["config"])
    summary = sweep(table, seeds, workdir_root=FLAGS.workdir_root, rows=FLAGS.rows,
                    dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, epochs=FLAGS.epochs,
                    overrides=overrides, command=command)
  for path in write_reports(table, FLAGS.workdir_root, FLAGS.out_dir, dataset=FLAGS.dataset,
                            command=command, readme=FLAGS.readme or None):
    print(f"wrote {path}")
  if summary and summary.failed:
    raise JaxretError(f"{len(summary.failed)} run(s) stopped with an error: "
                      f"{', '.join(summary.failed)}; their seeds are missing from the report "
                      f"(see the messages above)")


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
