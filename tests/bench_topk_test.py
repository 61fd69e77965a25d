"""scripts/bench_topk.py on a tiny score matrix: the methods it is asked for, checked results."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location("bench_topk", REPO / "scripts" / "bench_topk.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_bench_topk_times_only_the_methods_asked_for(tmp_path):
  out = tmp_path / "topk.json"
  _load_script().main(["--batch=4", "--pool=512", "--ks=5,40", "--groups=8", "--repeats=1",
                       "--methods=grouped", f"--out={out}"])
  result = json.loads(out.read_text())
  assert {(r["method"], r["group"], r["k"]) for r in result["records"]} == {
      ("lax.top_k", 1, 5), ("grouped_topk", 8, 5), ("lax.top_k", 1, 40), ("grouped_topk", 8, 40)}
  assert all(r["seconds"] >= 0 and r["speedup"] > 0 for r in result["records"])


def test_bench_topk_rejects_an_unknown_method(tmp_path, capsys):
  with pytest.raises(SystemExit):
    _load_script().main(["--methods=grouped,heap", f"--out={tmp_path / 'x.json'}"])
  assert "unknown ['heap']" in capsys.readouterr().err
