"""Multi-host on one machine: two OS processes (gloo CPU collectives, coordinator on 127.0.0.1)
train the tiny config and agree with each other and with one process holding both devices."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jaxret import distributed
from jaxret.errors import ConfigError
from train_test import SUBPROCESS_XLA_FLAGS, write_tiny_ml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _args(data_dir: Path, workdir: Path) -> list[str]:
  return [sys.executable, "-m", "experiments.run", "--dataset=ml-1m", f"--data_dir={data_dir}",
          "--min_interactions=0", f"--workdir={workdir}", "--epochs=2", "--head=dot",
          "--loss=ss", "--config.max_len=8", "--config.sasrec.dim=16",
          "--config.sasrec.num_blocks=1", "--config.num_negatives=8",  # dropout stays on
          "--config.train.batch_size=16", "--config.eval.batch_size=16",
          "--config.eval.ks=(1,5,10)", "--config.eval.patience=0"]


def _start(args: list[str], devices: int) -> subprocess.Popen:
  flags = f"{SUBPROCESS_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
  env.pop("JAX_COORDINATOR_ADDRESS", None)
  return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
  """Waits for every process (killing all if one hangs); returns their stdouts."""
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      assert p.returncode == 0, f"process exited with {p.returncode}:\n{err[-3000:]}"
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return outs


def _result(stdout: str) -> dict:
  """The result JSON that experiments.run prints (indented, between '{' and '}' lines)."""
  lines = stdout.splitlines()
  start, end = lines.index("{"), lines.index("}")
  return json.loads("\n".join(lines[start:end + 1]))


def _records(workdir: Path) -> list[dict]:
  rows = [json.loads(ln) for ln in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in rows:
    r.pop("wall_time")
  return rows


def test_two_processes_train_like_one(tmp_path):
  data_dir = write_tiny_ml(tmp_path / "data")
  port = _free_port()
  multi, single = tmp_path / "multi", tmp_path / "single"
  procs = [_start(_args(data_dir, multi) + [f"--coordinator_address=127.0.0.1:{port}",
                                            "--num_processes=2", f"--process_id={i}"], 1)
           for i in range(2)]
  procs.append(_start(_args(data_dir, single), 2))
  out0, out1, out_single = _finish(procs)

  for out in (out0, out1, out_single):
    assert "; 2 device(s)" in out, out[-2000:]
  # Both processes compute one global program, so they report the same metrics...
  r0, r1, ref = _result(out0), _result(out1), _result(out_single)
  for r in (r0, r1, ref):
    r.pop("train_time")
  assert r0 == r1
  # ...process 0 alone wrote one copy of each record, and the training losses, validation
  # and test metrics equal those of a single process holding both devices.
  multi_rows, single_rows = _records(multi), _records(single)
  assert [r["split"] for r in multi_rows] == ["train", "valid", "train", "valid", "test"]
  assert len(multi_rows) == len(single_rows)
  for got, want in zip(multi_rows, single_rows):
    assert got.keys() == want.keys()
    for k, v in want.items():
      assert got[k] == (v if isinstance(v, str) else pytest.approx(v, rel=1e-5, abs=1e-7)), k
  assert json.loads((multi / "test_metrics.json").read_text()).keys() == ref.keys() | {
      "train_time"}
  for k, v in ref.items():
    assert r0[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
  # Orbax wrote (and at the end restored) the checkpoints across the two processes.
  for kind in ("latest", "best"):
    assert [p.name for p in (multi / "checkpoints" / kind).iterdir()] == ["6"], kind
  assert not list(multi.glob(".write_test*"))


def test_one_process_needs_no_initialization(monkeypatch):
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  assert distributed.maybe_initialize() is False
  with pytest.raises(ConfigError, match=r"--process_id must be in \[0, 2\), got 2"):
    distributed.maybe_initialize("127.0.0.1:1", 2, 2)
