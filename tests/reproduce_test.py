"""experiments.reproduce: sweeps rows × seeds, skips finished runs, resumes interrupted ones,
aggregates seeds into the table files and refills the README block."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from experiments import reproduce
from jaxret import baselines, train
from jaxret.errors import ConfigError
from train_test import REPO, SUBPROCESS_XLA_FLAGS, write_tiny_ml

TABLE = reproduce.SEED_ML1M
ROWS = ("svd_dot_bce", "svd_fm_bce")  # the cheapest rows to compile
SEEDS = (0, 1)
EPOCHS = 2
# Tiny-model overrides of every row's config (as `--config.FIELD=VALUE` on the command line).
TINY = {"min_interactions": 0, "max_len": 8, "svd.dim": 8, "fm.factor_dim": 8,
        "num_negatives": 8, "train.batch_size": 16, "eval.batch_size": 16,
        "train.learning_rate": 1e-2, "train.num_devices": 1, "eval.ks": (1, 10),
        "eval.chunk_size": 16, "eval.patience": 0}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_ml(tmp_path_factory.mktemp("data"))


def sweep_kwargs(tiny_dir, root, logs, **changes):
  return {"workdir_root": root, "rows": ROWS, "dataset": "ml-1m", "data_dir": str(tiny_dir),
          "epochs": EPOCHS, "overrides": TINY, "log": logs.append, **changes}


@pytest.fixture(scope="module")
def swept(tiny_dir, tmp_path_factory):
  """A finished sweep of 2 rows × 2 seeds (read-only: tests that change it copy it)."""
  root = tmp_path_factory.mktemp("workdirs")
  logs = []
  summary = reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, logs))
  return root, summary, logs


def run_files(root):
  """(bytes, mtime) of every run's metrics.jsonl and test_metrics.json, by path."""
  return {p.relative_to(root): (p.read_bytes(), p.stat().st_mtime_ns)
          for name in ("metrics.jsonl", "test_metrics.json") for p in root.rglob(name)}


def test_sweep_writes_mean_and_std_over_seeds(swept, tmp_path):
  root, summary, logs = swept
  assert sorted(summary.trained) == sorted(f"{r}/s{s}" for r in ROWS for s in SEEDS)
  assert not summary.skipped and not summary.failed
  assert any("[4/4] seed_ml1m/svd_fm_bce s1: training" in line for line in logs), logs

  written = reproduce.write_reports(TABLE, root, tmp_path, log=lambda s: None)
  assert {p.name for p in written} == {"seed_ml1m.csv", "seed_ml1m.md",
                                       "seed_ml1m_valid_ndcg10.png", "seed_ml1m_hr_at_k.png"}
  with open(tmp_path / "seed_ml1m.csv") as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames[:8]) == reproduce.CSV_COLUMNS
    records = {(r["row"], r["metric"]): r for r in reader}
  for row in TABLE.rows:
    if row.baseline:
      continue
    published = row.references["published"]
    for metric in TABLE.metrics:
      record = records[(row.name, metric)]
      assert float(record["published"]) == published[metric]
      if row.name in ROWS and metric in ("hr@1", "hr@10", "mrr"):
        values = [json.loads((root / TABLE.name / row.name / f"s{s}" / "test_metrics.json")
                             .read_text())[metric] for s in SEEDS]
        assert (record["encoder"], record["head"], record["loss"]) == tuple(row.name.split("_"))
        assert int(record["n_seeds"]) == 2
        assert float(record["mean"]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(record["std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
      else:  # not trained, or HR@50/500 beyond the 30-item catalog: missing, not zero
        assert (record["mean"], record["std"], record["n_seeds"]) == ("", "", "0")

  md = (tmp_path / "seed_ml1m.md").read_text()
  assert "| SVD Dot+BCE | " in md and "| 0.0044 |" in md  # ours beside the published value
  assert "| SASRec MLP+BCE | — | 0.0644 | — | 0.3467 |" in md  # no finished seed
  assert "| HR@1 | HR@1 (published, ML-1M) | HR@10 |" in md
  assert "![seed_ml1m_hr_at_k](seed_ml1m_hr_at_k.png)" in md


def test_second_sweep_skips_finished_runs(swept, tiny_dir):
  root, _, _ = swept
  before = run_files(root)
  logs = []
  summary = reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, logs))
  assert len(summary.skipped) == 4 and not summary.trained, logs
  assert "4 finished (skipped), 0 to train" in logs[0]
  assert run_files(root) == before


def test_interrupted_sweep_resumes_only_that_run(swept, tiny_dir, tmp_path):
  root = tmp_path / "workdirs"
  shutil.copytree(swept[0], root)
  # A run killed after epoch 1's checkpoint: trained for 1 epoch, no test_metrics.json.
  row = reproduce.select_rows(TABLE, ["svd_dot_bce"])[0]
  killed = reproduce.run_dir(root, TABLE, row, 1)
  shutil.rmtree(killed)
  config = reproduce.row_config(TABLE, row, 1, dataset="ml-1m", data_dir=str(tiny_dir),
                                epochs=1, overrides=TINY)
  train.train_and_evaluate(config, killed, log=lambda s: None)
  (killed / "test_metrics.json").unlink()
  others = {p: v for p, v in run_files(root).items() if not str(p).startswith(
      str(killed.relative_to(root)))}

  logs = []
  summary = reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, logs))
  assert summary.trained == ["svd_dot_bce/s1"] and len(summary.skipped) == 3, logs
  assert any("resumed from" in line and "at epoch 1" in line for line in logs), logs
  assert json.loads((killed / "test_metrics.json").read_text())["epochs"] == EPOCHS
  assert {p: v for p, v in run_files(root).items() if p in others} == others


def test_a_workdir_of_another_config_is_an_error(swept, tiny_dir):
  root, _, _ = swept
  before = run_files(root)
  with pytest.raises(ConfigError, match=r"svd_fm_bce/s0 holds a run with svd.dim=8 \(this "
                                        r"command: 4\); pass another --workdir_root"):
    reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, [], rows=["svd_fm_bce"],
                                                 overrides={**TINY, "svd.dim": 4}))
  with pytest.raises(ConfigError, match="unknown row 'nope' of table seed_ml1m"):
    reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, [], rows=["nope"]))
  assert run_files(root) == before


def test_popularity_row_is_evaluated_once_and_reported(tiny_dir, tmp_path):
  root = tmp_path / "workdirs"
  logs = []
  summary = reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, logs,
                                                         rows=["popularity"]))
  assert summary.trained == ["popularity/s0"], logs  # deterministic: once, whatever the seeds
  row = reproduce.select_rows(TABLE, ["popularity"])[0]
  config = reproduce.row_config(TABLE, row, 0, dataset="ml-1m", data_dir=str(tiny_dir),
                                overrides=TINY)
  assert (config.protocol, config.ratio_targets) == ("ratio", "first")  # sasrec_dot_bce's
  direct = baselines.evaluate_popularity(config)
  stored = json.loads((root / "seed_ml1m" / "popularity" / "s0" / "test_metrics.json")
                      .read_text())
  assert stored["hr@10"] == direct["test"]["hr@10"] and stored["mrr"] == direct["test"]["mrr"]
  assert stored["valid_ndcg@10"] == direct["valid"]["ndcg@10"]
  assert reproduce.sweep(TABLE, SEEDS, **sweep_kwargs(tiny_dir, root, [],
                                                      rows=["popularity"])).skipped

  reproduce.write_reports(TABLE, root, tmp_path, log=lambda s: None)
  with open(tmp_path / "seed_ml1m.csv") as f:
    records = {(r["row"], r["metric"]): r for r in csv.DictReader(f)}
  record = records[("popularity", "hr@10")]
  assert (record["encoder"], record["head"], record["loss"]) == ("", "popularity", "")
  assert float(record["mean"]) == pytest.approx(direct["test"]["hr@10"], rel=1e-12)
  assert record["published"] == ""
  md = (tmp_path / "seed_ml1m.md").read_text()
  assert (f"| Item popularity (no training) | {direct['test']['hr@1']:.4f} |  | "
          f"{direct['test']['hr@10']:.4f} |") in md
  assert "Item popularity: every item scored by its count in the training part" in md


def test_readme_block_is_refilled_in_place(tmp_path):
  results = tmp_path / "results"
  results.mkdir()
  (results / "seed_ml1m.md").write_text("### table\n\n| a |\n\n![curve](seed_ml1m_hr_at_k.png)\n")
  begin, end = reproduce.readme_markers("seed_ml1m")
  other = "\n".join(reproduce.readme_markers("beauty"))
  original = f"# Title\n\ntext before\n{begin}\n{end}\ntext after\n{other}\n"
  readme = tmp_path / "README.md"
  readme.write_text(original)

  assert reproduce.update_readme(readme, "seed_ml1m", results / "seed_ml1m.md", print)
  once = readme.read_text()
  assert once == original.replace(
      f"{begin}\n", f"{begin}\n### table\n\n| a |\n\n![curve](results/seed_ml1m_hr_at_k.png)\n")
  assert reproduce.update_readme(readme, "seed_ml1m", results / "seed_ml1m.md", print)
  assert readme.read_text() == once  # idempotent

  (results / "seed_ml1m.md").write_text("new\n")
  reproduce.update_readme(readme, "seed_ml1m", results / "seed_ml1m.md", print)
  assert readme.read_text() == original.replace(f"{begin}\n", f"{begin}\nnew\n")

  # No block for the table, or results outside the README's folder: left alone.
  assert not reproduce.update_readme(readme, "paper_ml1m", results / "seed_ml1m.md", print)
  outside = tmp_path / "repo" / "README.md"
  outside.parent.mkdir()
  outside.write_text(original)
  assert not reproduce.update_readme(outside, "seed_ml1m", results / "seed_ml1m.md", print)
  assert outside.read_text() == original


def run_cli(*args):
  env = {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=REPO,
                        capture_output=True, text=True, env=env, timeout=300)


def test_cli_skips_finished_runs_and_fills_the_readme(swept, tiny_dir, tmp_path):
  root = tmp_path / "workdirs"
  shutil.copytree(swept[0], root)
  before = run_files(root)
  readme = tmp_path / "README.md"
  begin, end = reproduce.readme_markers("seed_ml1m")
  readme.write_text(f"intro\n{begin}\n{end}\n")
  overrides = [f"--config.{k}={v}".replace(" ", "") for k, v in TINY.items()]
  r = run_cli("--table=seed_ml1m", f"--rows={','.join(ROWS)}", "--seeds=0,1", "--dataset=ml-1m",
              f"--data_dir={tiny_dir}", f"--epochs={EPOCHS}", f"--workdir_root={root}",
              f"--out_dir={tmp_path / 'results'}", f"--readme={readme}", *overrides)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "4 runs (2 rows × 2 seeds)" in r.stdout and "0 trained, 4 skipped" in r.stdout
  assert run_files(root) == before
  assert (tmp_path / "results" / "seed_ml1m.csv").exists()
  text = readme.read_text()
  assert text.startswith(f"intro\n{begin}\n### Seed study") and text.endswith(f"{end}\n")
  assert "(results/seed_ml1m_valid_ndcg10.png)" in text


def test_cli_unknown_table_is_one_line(tmp_path):
  r = run_cli("--table=nope", f"--workdir_root={tmp_path}")
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert lines == ["error: unknown table 'nope'; valid names: beauty, paper_ml1m, seed_ml1m"]


def test_a_larger_patience_continues_a_finished_run_exactly(tiny_dir, tmp_path):
  """A finished run swept again under a larger eval.patience trains on from its checkpoint and
  ends with a fresh run's numbers under that patience; a smaller patience is an error."""
  kwargs = dict(rows=["svd_dot_bce"], epochs=8)
  root, fresh = tmp_path / "continued", tmp_path / "fresh"
  reproduce.sweep(TABLE, [0], **sweep_kwargs(tiny_dir, root, [], overrides={
      **TINY, "eval.patience": 1}, **kwargs))
  first = json.loads((root / TABLE.name / "svd_dot_bce/s0/test_metrics.json").read_text())
  assert first["epochs"] < 8, "the tiny run did not stop early: the test shows nothing"
  logs = []
  summary = reproduce.sweep(TABLE, [0], **sweep_kwargs(tiny_dir, root, logs, overrides={
      **TINY, "eval.patience": 3}, **kwargs))
  assert summary.trained == ["svd_dot_bce/s0"], logs
  assert any("under a larger eval.patience" in line for line in logs), logs
  reproduce.sweep(TABLE, [0], **sweep_kwargs(tiny_dir, fresh, [], overrides={
      **TINY, "eval.patience": 3}, **kwargs))
  runs = [root / TABLE.name / "svd_dot_bce/s0", fresh / TABLE.name / "svd_dot_bce/s0"]
  continued, again = (json.loads((r / "test_metrics.json").read_text()) for r in runs)
  assert continued["epochs"] > first["epochs"]
  assert {k: v for k, v in continued.items() if k != "train_time"} == {
      k: v for k, v in again.items() if k != "train_time"}
  assert json.loads((runs[0] / "config.json").read_text())["eval"]["patience"] == 3
  with pytest.raises(ConfigError, match=r"eval.patience=3 \(this command: 2\)"):
    reproduce.sweep(TABLE, [0], **sweep_kwargs(tiny_dir, root, [], overrides={
        **TINY, "eval.patience": 2}, **kwargs))
