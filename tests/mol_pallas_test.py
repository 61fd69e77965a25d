"""The fused Pallas MoL scorer equals MoLHead.score_sides (CPU: Pallas interpret mode)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxret.kernels import mol_pallas
from jaxret.models.heads import MoLHead


def _sides(head, b=3, n=70, dim=12, seed=0):
  kq, ki, kp = jax.random.split(jax.random.key(seed), 3)
  queries = jax.random.normal(kq, (b, dim))
  items = jax.random.normal(ki, (n, dim))
  params = head.init(kp, queries, items[None].repeat(b, 0))["params"]
  leaves, tree = jax.tree.flatten(params)   # biases start at zero: move every weight off it
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  q_side = head.apply({"params": params}, queries, method=MoLHead.query_side)
  i_side = head.apply({"params": params}, items, method=MoLHead.item_side)
  return params, q_side, i_side


@pytest.mark.parametrize("p_q,p_x,d", [(2, 2, 8), (4, 2, 16), (3, 4, 8)])
def test_pallas_scores_equal_score_sides(p_q, p_x, d):
  head = MoLHead(num_query_components=p_q, num_item_components=p_x, component_dim=d,
                 gating_hidden=16, query_hidden=0)
  params, q_side, i_side = _sides(head)
  want = jax.vmap(lambda qc, qg: head.apply(
      {"params": params},
      type(q_side)(qc[None], qg[None]),
      type(i_side)(i_side.components[None], i_side.gate[None]),
      method=MoLHead.score_sides)[0])(q_side.components, q_side.gate)      # (B, N)
  got = mol_pallas.mol_scores(head, params, q_side, i_side, block_items=32, interpret=True)
  assert got.shape == want.shape == (3, 70)            # 70 items: padded to 96 inside
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)


def test_block_diagonal_queries_give_molheads_logit_order():
  head = MoLHead(num_query_components=3, num_item_components=2, component_dim=4,
                 gating_hidden=8, query_hidden=0)
  params, q_side, i_side = _sides(head, b=2, n=5)
  big = mol_pallas.block_diagonal_queries(q_side.components, 2)          # (B, P_X d, P)
  got = jnp.einsum("nk,bkp->bnp", i_side.components.reshape(5, -1), big)
  want = jnp.einsum("bqd,nxd->bnqx", q_side.components, i_side.components).reshape(2, 5, 6)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_pallas_scores_reject_an_ungated_head_and_batched_items():
  head = MoLHead(num_query_components=2, num_item_components=2, component_dim=4,
                 gating_hidden=8, query_hidden=0)
  params, q_side, i_side = _sides(head, b=2, n=5)
  with pytest.raises(ValueError, match="needs a gated MoLHead"):
    mol_pallas.mol_scores(head.clone(gating=False), params, q_side, i_side)
  batched = type(i_side)(i_side.components[None], i_side.gate[None])
  with pytest.raises(ValueError, match=r"item components \(N, P_X, d\)"):
    mol_pallas.mol_scores(head, params, q_side, batched)


def test_bench_mol_kernel_script_checks_and_records(tmp_path):
  import importlib.util
  import json
  from pathlib import Path
  path = Path(__file__).resolve().parents[1] / "scripts" / "bench_mol_kernel.py"
  spec = importlib.util.spec_from_file_location("bench_mol_kernel", path)
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  out = tmp_path / "kernel.json"
  bench.main(["--batch=2", "--pool=256", "--chunk=128", "--block_items=64", "--repeats=1",
              f"--out={out}"])
  record = json.loads(out.read_text())
  assert record["pool"] == 256 and record["interpret"] is True
  assert record["max_abs_diff"] <= 1e-3 and record["xla_s"] > 0 and record["pallas_s"] > 0
  with pytest.raises(SystemExit):
    bench.main(["--pool=300", "--chunk=128", f"--out={out}"])
