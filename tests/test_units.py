"""Attention heads and MLP neurons as granularities (issue 11 item 3): whole units removed across the layers that
share them, selected by their summed scores, counted from the masks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import models, units, validation

D, HEADS, HD, HIDDEN = 8, 4, 2, 16


def _block(rng):
  f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
  return {"attn": {"query": {"kernel": f(D, HEADS, HD)}, "key": {"kernel": f(D, HEADS, HD)},
                   "value": {"kernel": f(D, HEADS, HD)}, "out": {"kernel": f(HEADS, HD, D)}},
          "mlp": {"fc1": {"kernel": f(D, HIDDEN), "bias": f(HIDDEN)}, "fc2": {"kernel": f(HIDDEN, D)}}}


def _params(seed=0, depth=2):
  rng = np.random.default_rng(seed)
  return {**{f"block_{i}": _block(rng) for i in range(depth)}, "head": {"kernel": jnp.ones((D, 3))}}


def _prune(params, **cfg):
  p = sj.create_pruner({"algorithm": "oneshot", **cfg})
  return jax.jit(lambda x: p.update(x, x, p.init(x), jnp.int32(0)))(params).masks


def test_head_masks_remove_whole_heads_chosen_by_their_summed_magnitude():
  params = _params()
  masks = _prune(params, target=0.5, granularity="head")
  assert masks["head"]["kernel"] is None and masks["block_0"]["mlp"]["fc1"]["kernel"] is None  # only heads prunable
  for i in range(2):
    attn, m = params[f"block_{i}"]["attn"], masks[f"block_{i}"]["attn"]
    # by hand: head h's score is the sum of |w| over its q/k/v columns and its output rows
    score = sum(np.abs(np.asarray(attn[n]["kernel"])).sum(axis=(0, 2)) for n in ("query", "key", "value"))
    score = score + np.abs(np.asarray(attn["out"]["kernel"])).sum(axis=(1, 2))
    kept = np.zeros(HEADS, bool)
    kept[np.argsort(-score)[:HEADS // 2]] = True
    for n in ("query", "key", "value"):
      np.testing.assert_array_equal(np.asarray(m[n]["kernel"]), np.broadcast_to(kept[None, :, None], (D, HEADS, HD)))
    np.testing.assert_array_equal(np.asarray(m["out"]["kernel"]), np.broadcast_to(kept[:, None, None], (HEADS, HD, D)))
  flat = {k: v for k, v in sj.masks.flatten_with_paths(masks) if v is not None}
  counted = units.count(flat, "head")
  assert counted["units"] == 2 * HEADS and counted["kept"] == HEADS and counted["pruned"] == HEADS
  assert counted["modules"]["block_1/attn"] == {"units": HEADS, "kept": HEADS // 2}


def test_neuron_masks_remove_an_input_column_and_its_output_row_together():
  params = _params(1)
  masks = _prune(params, target=0.75, granularity="neuron")
  for i in range(2):
    mlp, m = params[f"block_{i}"]["mlp"], masks[f"block_{i}"]["mlp"]
    score = np.abs(np.asarray(mlp["fc1"]["kernel"])).sum(0) + np.abs(np.asarray(mlp["fc2"]["kernel"])).sum(1)
    kept = np.zeros(HIDDEN, bool)
    kept[np.argsort(-score)[:HIDDEN // 4]] = True
    np.testing.assert_array_equal(np.asarray(m["fc1"]["kernel"]), np.broadcast_to(kept[None], (D, HIDDEN)))
    np.testing.assert_array_equal(np.asarray(m["fc2"]["kernel"]), np.broadcast_to(kept[:, None], (HIDDEN, D)))
    assert m["fc1"]["bias"] is None


def test_global_head_pruning_ranks_heads_of_all_modules_together():
  params = _params(2)
  params["block_1"]["attn"] = jax.tree.map(lambda x: 10 * x, params["block_1"]["attn"])  # block 1's heads all larger
  masks = _prune(params, target=0.5, granularity="head", distribution="global")
  flat = {k: v for k, v in sj.masks.flatten_with_paths(masks) if v is not None}
  counted = units.count(flat, "head")
  assert counted["modules"]["block_0/attn"]["kept"] == 0 and counted["modules"]["block_1/attn"]["kept"] == HEADS


def test_a_scanned_gpt_prunes_the_heads_of_its_unscanned_twin_and_still_runs():
  kw = dict(size="nano", width=16, depth=2, heads=4, context=8)
  a, b = models.create_model("gpt", 31, **kw), models.create_model("gpt", 31, scan=True, **kw)
  x = jnp.zeros((1, 8), jnp.int32)
  pa = jax.jit(a.init)(jax.random.key(0), x)["params"]
  blocks = [pa[f"block_{i}"] for i in range(2)]
  pb = {k: v for k, v in pa.items() if not k.startswith("block_")}
  pb["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
  ma = _prune(pa, target=0.5, granularity="head")
  mb = _prune(pb, target=0.5, granularity="head", stacked=validation.STACKED_BLOCKS)
  for i in range(2):
    for n in ("query", "key", "value", "out"):
      np.testing.assert_array_equal(np.asarray(ma[f"block_{i}"]["attn"][n]["kernel"]),
                                    np.asarray(mb["blocks"]["attn"][n]["kernel"][i]))
  logits = b.apply({"params": sj.apply_masks(pb, mb)}, jnp.arange(8)[None] % 31, train=False)
  assert logits.shape == (1, 8, 31) and bool(jnp.all(jnp.isfinite(logits)))
  s = sj.summary(mb, stacked=validation.STACKED_BLOCKS)
  heads = units.count_tree(mb, "head", validation.STACKED_BLOCKS)
  assert s["total"]["sparsity"] == pytest.approx(0.5) and heads["units"] == 8 and heads["kept"] == 4
  assert heads == units.count_tree(ma, "head") | {"modules": {f"blocks/attn[{i}]": {"units": 4, "kept": 2}
                                                               for i in range(2)}}


def test_gmp_prunes_heads_gradually_inside_sparsify_and_pruned_heads_stay_pruned():
  params = _params(3)
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "gmp", "target": 0.5, "granularity": "head",
                                                     "begin_step": 0, "end_step": 4, "update_every": 2}))
  params, state = sj.sparse_init(tx, params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.tree.map(jnp.cos, params), state, params)
    return optax.apply_updates(params, updates), state

  seen = []
  for _ in range(6):
    params, state = step(params, state)
    flat = {k: v for k, v in sj.masks.flatten_with_paths(sj.get_masks(state)) if v is not None}
    seen.append(units.count(flat, "head")["kept"])
    for k, m in flat.items():
      w = dict(sj.masks.flatten_with_paths(params))[k]
      assert not np.any(np.asarray(w)[~np.asarray(m)]), k  # pruned heads' weights exactly 0
  assert seen == sorted(seen, reverse=True) and seen[-1] == HEADS  # 8 heads -> 4, never regrown


@pytest.mark.parametrize("fields,match", [
    ({"algorithm": "rigl", "end_step": 10}, "not supported by 'rigl'"),
    ({"algorithm": "gmp", "end_step": 10, "distribution": "erk"}, "accepted values with granularity 'head'"),
    ({"algorithm": "gmp", "end_step": 10, "distribution": "global", "min_density": 0.1}, "min_density"),
])
def test_bad_unit_configs_are_refused_naming_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    sj.create_pruner({"target": 0.5, "granularity": "head", **fields})


def test_a_prunable_layer_outside_any_head_is_refused():
  with pytest.raises(ValueError, match="is not part of a head"):
    _prune(_params(), target=0.5, granularity="head", prunable=["kernel$"])


def test_flops_per_token_by_hand():
  params = _params(4, depth=1)
  masks = _prune(params, target=0.5, granularity="head")
  pruned = sj.apply_masks(params, masks)
  f = units.flops_per_token(pruned, context=7, causal=True)
  kernels = 4 * D * HEADS * HD + 2 * D * HIDDEN + D * 3  # q, k, v, out; fc1, fc2; head
  attention = 4 * HD * 4 * HEADS  # (7 + 1) / 2 = 4 positions on average
  assert f["dense"] == 2 * kernels + attention
  assert f["remaining"] == 2 * (kernels - 2 * D * HEADS * HD) + attention / 2  # half the heads: half of q/k/v/out


@pytest.mark.parametrize("method", ["dense", "gmp", "rigl", "nm24", "heads"])
def test_every_text_gpt_method_validates_with_its_blocks_stacked(method):
  from configs import text_gpt  # pylint: disable=g-import-not-at-top
  config = validation.validate(text_gpt.get_config(method))
  assert tuple(config.sparsity.stacked) == validation.STACKED_BLOCKS  # scan=True: each block its own layer
  assert config.sparsity.granularity == {"nm24": "2:4", "heads": "head"}.get(method, "unstructured")
