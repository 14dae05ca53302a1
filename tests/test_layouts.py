"""Kernel layouts (flax (in, out) and torch (out, in)) for channel and n:m, and the default prunable leaves."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from sparsejax.pruners import base


def _masks(params, **cfg):
  cfg = sj.config.validate({"algorithm": "oneshot", **cfg}, tuple(sj.pruners.REGISTRY))
  plan = base.make_plan(params, cfg)
  scores = [jnp.abs(w) for w in base.leaves_at(params, plan.paths)]
  return dict(zip(plan.paths, jax.jit(lambda s: base.select_masks(plan, s, jnp.float32(cfg["target"])))(scores)))


def _weights(*shapes):
  return {f"l{i}": {"weight": jax.random.normal(jax.random.key(i), s)} for i, s in enumerate(shapes)}


@pytest.mark.slow
def test_torch_channel_prunes_whole_output_rows_like_flax_on_the_transpose():
  torch_params = _weights((8, 12), (6, 4, 3, 3))  # Linear (out, in), Conv (out, in, kh, kw)
  flax_params = {"l0": {"weight": torch_params["l0"]["weight"].T},
                 "l1": {"weight": jnp.transpose(torch_params["l1"]["weight"], (2, 3, 1, 0))}}
  t = _masks(torch_params, target=0.5, granularity="channel", layout="torch")
  f = _masks(flax_params, target=0.5, granularity="channel")
  np.testing.assert_array_equal(np.asarray(t["l0/weight"]), np.asarray(f["l0/weight"]).T)
  np.testing.assert_array_equal(np.asarray(t["l1/weight"]), np.transpose(np.asarray(f["l1/weight"]), (3, 2, 0, 1)))
  rows = np.asarray(t["l1/weight"]).reshape(6, -1).sum(1)  # each output channel kept or pruned whole
  assert sorted(set(rows.tolist())) == [0, 36] and int((rows > 0).sum()) == 3


@pytest.mark.parametrize("layout,axis", [("torch", 1), ("flax", 0)])
def test_nm_groups_run_along_the_layouts_input_axis(layout, axis):
  params = _weights((8, 16))
  m = np.asarray(_masks(params, target=0.5, granularity="2:4", layout=layout)["l0/weight"])
  groups = np.moveaxis(m, axis, -1).reshape(-1, 4).sum(-1)
  assert set(groups.tolist()) == {2}
  # and not along the other axis in general (the weights are random)
  other = np.moveaxis(m, 1 - axis, -1).reshape(-1, 4).sum(-1)
  assert set(other.tolist()) != {2}


def test_an_explicit_axis_overrides_the_layout():
  params = _weights((8, 16))
  by_axis = _masks(params, target=0.5, granularity="2:4", layout="torch", nm_axis=0)["l0/weight"]
  flax = _masks(params, target=0.5, granularity="2:4")["l0/weight"]
  np.testing.assert_array_equal(np.asarray(by_axis), np.asarray(flax))
  ch = np.asarray(_masks(params, target=0.75, granularity="channel", channel_axis=0)["l0/weight"])
  assert set(ch.sum(1).tolist()) == {0, 16} and int(ch.any(1).sum()) == 2


@pytest.mark.parametrize("field,value,message", [
    ("layout", "jax", "config.sparsity.layout: got 'jax'"),
    ("channel_axis", 2, "config.sparsity.channel_axis=2 on layer l0/weight of shape (8, 16)"),
    ("channel_axis", "x", "config.sparsity.channel_axis: got 'x'")])
def test_bad_layout_fields_are_refused(field, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    sj.sparsify(__import__("optax").sgd(0.1), sj.create_pruner(
        {"algorithm": "oneshot", "target": 0.5, "granularity": "channel", field: value})).init(_weights((8, 16)))


class _Block(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(50, 16, name="wte")(tokens)
    x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, tokens.shape[1], 16))
    x = nn.MultiHeadDotProductAttention(num_heads=2, name="attention")(x, x)
    return nn.Dense(50, name="head")(nn.LayerNorm()(x))


def _transformer_params():
  return _Block().init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]


def test_default_prunable_leaves_of_a_transformer():
  paths = sj.masks.prunable_paths(_transformer_params())
  assert paths == ["attention/key/kernel", "attention/out/kernel", "attention/query/kernel", "attention/value/kernel",
                   "head/kernel"]


def test_attention_projections_group_nm_along_the_input_and_channel_per_head_unit():
  params = _transformer_params()
  assert params["attention"]["query"]["kernel"].shape == (16, 2, 8)
  m = _masks(params, target=0.5, granularity="2:4")
  q = np.asarray(m["attention/query/kernel"])
  assert set(np.moveaxis(q, 0, -1).reshape(-1, 4).sum(-1).tolist()) == {2}
  out = np.asarray(m["attention/out/kernel"])  # (heads, head_dim, features): along head_dim (ndim - 2)
  assert set(np.moveaxis(out, 1, -1).reshape(-1, 4).sum(-1).tolist()) == {2}
  c = np.asarray(_masks(params, target=0.5, granularity="channel")["attention/value/kernel"])
  per_unit = c.sum(0)  # one (head, head_dim) output unit: its whole input column kept or pruned
  assert set(per_unit.ravel().tolist()) == {0, 16} and int((per_unit > 0).sum()) == 8
