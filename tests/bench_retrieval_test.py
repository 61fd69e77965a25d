"""scripts/bench_retrieval.py end to end on a tiny random pool: the files it promises, and
relative recall 1 wherever stage 1 keeps the whole pool (k' = N, single-table generators)."""
import csv
import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_script():
  spec = importlib.util.spec_from_file_location("bench_retrieval",
                                                REPO / "scripts" / "bench_retrieval.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _rows(path: Path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_bench_retrieval_tiny_pool(tmp_path):
  bench = _load_script()
  n = 400
  bench.main([f"--pool_sizes={n}", "--ks=10", f"--k_primes=50,{n}", "--batch=8",
              "--quantizations=fp32,int8", "--hindexer_steps=3", "--hindexer_pool=300",
              "--hindexer_teacher_k_prime=100", "--hindexer_hard_negatives=16",
              "--hindexer_refine_steps=2", "--hindexer_refine_queries=64",
              "--hindexer_refine_teacher_k_prime=100", "--repeats=1", f"--out_dir={tmp_path}",
              f"--hindexer_params={tmp_path}/hindexer.msgpack"])
  assert (tmp_path / "hindexer.msgpack").stat().st_size > 0
  recall = _rows(tmp_path / "retrieval_recall.csv")
  assert list(recall[0]) == ["pool", "generator", "quantization", "pool_size", "k", "k_prime",
                             "relative_recall"]
  assert {(r["generator"], r["quantization"]) for r in recall} == {
      (g, q) for g in ("hindexer", "avg", "per_component") for q in ("fp32", "int8")}
  for r in recall:
    assert 0.0 <= float(r["relative_recall"]) <= 1.0
    if int(r["k_prime"]) == n and r["generator"] != "per_component":   # (k'/P per pair)
      assert float(r["relative_recall"]) == 1.0, r
  tput = _rows(tmp_path / "retrieval_throughput.csv")
  methods = {r["method"] for r in tput}
  assert {"exact_mol", "two_stage", "stage1_only"} <= methods
  assert all(float(r["qps"]) > 0 for r in tput)
  info = json.loads((tmp_path / "machine.json").read_text())
  assert info["topk_backend"] and info["stage1_backend_qps"]
  assert info["hindexer_fit"]["hard_negatives"] == 16
  assert info["hindexer_fit"]["refine_steps"] == 2
  assert list(info["hindexer_refine_seconds"]) == [f"synthetic/{n}"]
  block = bench.render(*bench.read_results(tmp_path))
  assert "refined on each pool" in block and f"{n}: " in block
  assert (tmp_path / "fig3a_relative_recall.png").stat().st_size > 0
  assert (tmp_path / "fig3b_throughput.png").stat().st_size > 0


@pytest.mark.parametrize("results_dir,tag", [("results", "retrieval"),
                                              ("results/gpu", "retrieval-gpu")])
def test_readme_retrieval_blocks_are_generated_from_results(results_dir, tag):
  bench = _load_script()
  block = bench.render(*bench.read_results(REPO / results_dir), tag=tag,
                       results_dir=results_dir)
  readme = (REPO / "README.md").read_text()
  begin, end = bench.markers(tag)
  start, stop = readme.index(begin), readme.index(end) + len(end)
  assert readme[start:stop] == block, (
      f"README's {tag} block is stale: python scripts/bench_retrieval.py --report_only "
      f"--out_dir={results_dir} --readme=README.md --readme_tag={tag}")


def test_prefix_queries_come_only_from_the_fit_users():
  bench = _load_script()
  owner = np.repeat(np.arange(5), 4)                      # 5 users x 4 earlier positions
  prefixes = np.stack([owner, np.tile(np.arange(4), 5)], axis=1).astype(np.float32)
  src = bench.Source(None, None, None, None, np.zeros((5, 2), np.float32), None,
                     prefixes, owner)
  rng = np.random.default_rng(0)
  got = bench.prefix_queries(src, np.array([1, 3]), 6, rng)
  assert got.shape == (6, 2)
  assert set(got[:, 0]) <= {1.0, 3.0}
  assert len({tuple(r) for r in got}) == 6                # drawn without replacement
  everything = bench.prefix_queries(src, np.array([1, 3]), 100, rng)
  assert sorted(map(tuple, everything)) == sorted(map(tuple, prefixes[np.isin(owner, [1, 3])]))


def test_readme_block_under_another_tag_leaves_the_default_block_alone(tmp_path):
  bench = _load_script()
  recall, tput, info = bench.read_results(REPO / "results")
  info = {**info, "accelerator": "NVIDIA H200"}
  block = bench.render(recall, tput, info, tag="retrieval-gpu")
  assert block.startswith("<!-- retrieval-gpu:begin -->")
  assert block.endswith("<!-- retrieval-gpu:end -->")
  assert "on NVIDIA H200 (host: " in block
  readme = tmp_path / "README.md"
  readme.write_text("a\n<!-- retrieval:begin -->\nold\n<!-- retrieval:end -->\n"
                    "<!-- retrieval-gpu:begin -->\nold\n<!-- retrieval-gpu:end -->\nb\n")
  bench.write_readme_block(readme, block, tag="retrieval-gpu")
  text = readme.read_text()
  assert "<!-- retrieval:begin -->\nold\n<!-- retrieval:end -->" in text
  assert block in text and text.endswith("\nb\n")
  with pytest.raises(SystemExit, match="lacks the <!-- retrieval-x:begin -->"):
    bench.write_readme_block(readme, block, tag="retrieval-x")


def test_hindexer_params_file_skips_the_second_fit(tmp_path):
  bench = _load_script()
  path, settings, calls = tmp_path / "h" / "params.msgpack", {"hindexer_steps": 3}, []

  def fit():
    calls.append(1)
    return {"item_out": {"kernel": jnp.arange(6.0).reshape(2, 3)}}

  first = bench.load_or_fit(str(path), settings, fit)
  again = bench.load_or_fit(str(path), settings, fit)
  assert len(calls) == 1 and path.exists() and not path.with_name("params.msgpack.tmp").exists()
  np.testing.assert_array_equal(again["item_out"]["kernel"], first["item_out"]["kernel"])
  with pytest.raises(SystemExit, match="fitted with other settings"):
    bench.load_or_fit(str(path), {"hindexer_steps": 4}, fit)
  assert len(calls) == 1
