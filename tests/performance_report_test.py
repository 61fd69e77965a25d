"""The README's Performance section is generated from the committed results files."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location(
      "performance_report", REPO / "scripts" / "performance_report.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


report_lib = _load_script()


def _write_run(folder: Path, valid: list[float], epochs_limit: int) -> Path:
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps({
      "encoder": "sasrec", "head": "dot", "loss": "ss", "dataset": "ml-1m-half",
      "train": {"batch_size": 64, "position_budget": 0.6, "epochs": epochs_limit},
      "eval": {"patience": 1}}))
  lines = []
  for epoch, value in enumerate(valid, start=1):
    lines.append({"epoch": epoch, "split": "train", "loss": 1.0, "wall_time": 10.0 * epoch})
    lines.append({"epoch": epoch, "split": "valid", "ndcg@10": value,
                  "wall_time": 10.0 * epoch + 2})
  (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  (folder / "test_metrics.json").write_text(json.dumps(
      {"hr@10": 0.2, "ndcg@10": 0.1, "epochs": len(valid), "train_time": 10.0 * len(valid) + 5}))
  return folder


def test_time_to_quality(tmp_path):
  run = _write_run(tmp_path / "r", [0.01, 0.05, 0.096, 0.1, 0.09], epochs_limit=200)
  r = report_lib.time_to_quality(run)
  assert r["best_valid"] == 0.1 and r["best_epoch"] == 4
  assert r["epoch_to_quality"] == 3 and r["time_to_quality_s"] == 32.0  # 0.096 >= 0.095
  assert r["run_time_s"] == 55.0 and r["epochs"] == 5 and r["early_stopped"]
  still_improving = report_lib.time_to_quality(_write_run(tmp_path / "s", [0.05, 0.1], 200))
  assert not still_improving["early_stopped"]


def test_replace_block_only_touches_the_block():
  text = f"intro\n{report_lib.BEGIN}\nold\n{report_lib.END}\noutro\n"
  block = report_lib.render({"runs": [], "bench": [], "notes": ["a note"]})
  out = report_lib.replace_block(text, block)
  assert out.startswith("intro\n") and out.endswith("\noutro\n") and "a note" in out
  assert report_lib.replace_block(out, block) == out
  with pytest.raises(ValueError, match="markers"):
    report_lib.replace_block("no markers", block)


def test_readme_performance_section_matches_results():
  report = json.loads((REPO / "results" / "performance.json").read_text())
  readme = (REPO / "README.md").read_text()
  block = report_lib.render(report)
  assert block in readme, ("README's Performance section is stale: run "
                           "`python scripts/performance_report.py`")
