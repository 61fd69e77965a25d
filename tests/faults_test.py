"""Faults: a run SIGKILLed at many moments (mid-step, mid-checkpoint-save) resumes to the
uninterrupted run's exact results."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_test import REPO, SUBPROCESS_XLA_FLAGS, cli_args, write_tiny_ml

EPOCHS = 40
KILL_PLAN = ["save", "random"] * 5  # 10 kill points


def _env(cache_dir: Path) -> dict[str, str]:
  # The persistent compilation cache makes each restart cost an import, not a compile
  # (conftest's session-wide one when it is set).
  cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir)
  return {**os.environ, "XLA_FLAGS": SUBPROCESS_XLA_FLAGS, "JAX_PLATFORMS": "cpu",
          "JAX_COMPILATION_CACHE_DIR": cache_dir,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _checkpoint_entries(workdir: Path) -> tuple[int, set[str]]:
  """(newest completed 'latest' step or -1, names of in-progress orbax temp dirs)."""
  newest, temps = -1, set()
  for kind in ("latest", "best"):
    folder = workdir / "checkpoints" / kind
    try:
      names = [e.name for e in os.scandir(folder)]
    except FileNotFoundError:
      continue
    for name in names:
      if "tmp" in name:
        temps.add(f"{kind}/{name}")
      elif kind == "latest" and name.isdigit():
        newest = max(newest, int(name))
  return newest, temps


def _records(workdir: Path) -> list[dict]:
  out = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    record.pop("wall_time", None)
    out.append(record)
  return out


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
  return write_tiny_ml(tmp_path_factory.mktemp("data"))


def test_sigkill_at_ten_moments_resumes_to_identical_results(fault_dir, tmp_path,
                                                             record_property):
  """Kills a training run 10 times with SIGKILL — 5 times the moment a checkpoint save has
  started (its temp dir exists), 5 times at a random moment after some progress — and
  restarts it each time; the finished run's metrics.jsonl and test_metrics.json equal an
  uninterrupted run's (wall times aside)."""
  record_property("category", "fault")
  env = _env(tmp_path / "jax_cache")
  args = [sys.executable, "-m", *cli_args(fault_dir, tmp_path / "ref", epochs=EPOCHS)]
  r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  reference = json.loads((tmp_path / "ref" / "test_metrics.json").read_text())

  workdir = tmp_path / "killed"
  args = [sys.executable, "-m", *cli_args(fault_dir, workdir, epochs=EPOCHS)]
  rng = random.Random(0)
  seen_temps: set[str] = set()
  mid_save, resumes = 0, 0
  for i, trigger in enumerate(KILL_PLAN):
    log = tmp_path / f"segment{i}.log"
    with open(log, "w") as f:
      proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    start_step, _ = _checkpoint_entries(workdir)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
      step, temps = _checkpoint_entries(workdir)
      progressed = step > start_step
      if trigger == "save" and progressed and temps - seen_temps:
        break
      if trigger == "random" and progressed:
        time.sleep(rng.uniform(0.0, 0.15))
        break
      seen_temps |= temps if not progressed else set()
      time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"kill {i} ({trigger}) came too late: the run had exited with {proc.returncode}; "
        f"raise EPOCHS\n{log.read_text()[-2000:]}")
    _, temps = _checkpoint_entries(workdir)
    mid_save += bool(temps - seen_temps)
    seen_temps |= temps
    if i > 0:
      assert "resumed from" in log.read_text(), log.read_text()[-2000:]
      resumes += 1
    assert not (workdir / "test_metrics.json").exists()

  r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "resumed from" in r.stdout + r.stderr
  resumes += 1
  resumed = json.loads((workdir / "test_metrics.json").read_text())
  for k, v in reference.items():
    if k != "train_time":
      assert resumed[k] == v, k
  # The replayed epochs replace what the killed segments logged after their last checkpoint.
  assert _records(workdir) == _records(tmp_path / "ref")
  assert mid_save >= 3, f"only {mid_save} of the kills landed during a checkpoint save"

  record_property("case", f"SIGKILL at {len(KILL_PLAN)} moments ({mid_save} during a "
                          "checkpoint save), restarted each time")
  record_property("kill_points", len(KILL_PLAN))
  record_property("resumes_verified", resumes)
