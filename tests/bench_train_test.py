"""scripts/bench_train.py end to end on a tiny file, with and without length buckets."""
import json
import os
import subprocess
import sys

import numpy as np
from train_test import REPO, SUBPROCESS_XLA_FLAGS

from experiments import cli


def _write_ml(folder, num_users=40, num_items=30):
  """ML-1M-format users with 8 to 30 interactions, each item used by many users."""
  rng = np.random.default_rng(0)
  lines = [f"{u}::{(u + 3 * t) % num_items + 1}::4::{1000 + t}"
           for u in range(1, num_users + 1) for t in range(int(rng.integers(8, 31)))]
  (folder / "ml-1m").mkdir(parents=True)
  (folder / "ml-1m" / "ratings.dat").write_text("\n".join(lines) + "\n")
  return folder


def test_bench_train_records_bucketed_and_full_length_steps(tmp_path):
  data = _write_ml(tmp_path / "data")
  out = tmp_path / "bench.json"
  env = {**os.environ, "JAXRET_DATA_DIR": str(data), "JAXRET_CACHE_DIR": str(tmp_path / "c"),
         "XLA_FLAGS": SUBPROCESS_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
  common = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--dataset=ml-1m",
            "--heads=dot", "--losses=ss", "--steps=2", "--warmup=1", "--batch_size=8",
            f"--out={out}"]
  for extra in ([], ["--length_buckets=10,20,200", "--append"]):
    r = subprocess.run(common + extra, capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
  records = json.loads(out.read_text())
  assert [r["length_buckets"] for r in records] == [[], [10, 20, 200]]
  for r in records:
    assert r["step_ms"] > 0 and r["gflops_per_step"] > 0 and r["compiles_after_first"] == 0


def test_tune_allocator_applies_on_linux_and_can_be_turned_off(monkeypatch):
  monkeypatch.setenv("JAXRET_TUNE_MALLOC", "0")
  assert cli.tune_allocator() is False
  monkeypatch.delenv("JAXRET_TUNE_MALLOC")
  assert cli.tune_allocator() is (sys.platform.startswith("linux"))


def test_bench_train_set_overrides_a_config_field_and_rejects_unknown_ones(tmp_path):
  data = _write_ml(tmp_path / "data")
  env = {**os.environ, "JAXRET_DATA_DIR": str(data), "JAXRET_CACHE_DIR": str(tmp_path / "c"),
         "XLA_FLAGS": SUBPROCESS_XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
  common = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--dataset=ml-1m",
            "--heads=mol", "--losses=ss", "--steps=1", "--warmup=0", "--batch_size=8"]
  flops = []
  for extra in ([], ["--set=mol.gating_hidden=8", "--set=mol.num_query_components=2"]):
    out = tmp_path / f"bench{len(extra)}.json"
    r = subprocess.run(common + extra + [f"--out={out}"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (record,) = json.loads(out.read_text())
    flops.append(record["gflops_per_step"])
  assert record["config_overrides"] == {"mol.gating_hidden": 8, "mol.num_query_components": 2}
  assert flops[1] < 0.5 * flops[0]
  r = subprocess.run(common + ["--set=mol.gating_width=8", f"--out={tmp_path / 'x.json'}"],
                     capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
  assert r.returncode != 0 and "mol.gating_width: no such config field" in r.stderr
