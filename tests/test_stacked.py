"""Stacked layers are layers (issue 11): each slice of an nn.scan-stacked leaf is pruned, counted and reported as the
layer it is, so a scanned model gets exactly the masks of its unscanned twin with the same weights."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import validation
from sparsejax.pruners import base

DEPTH, D, HEADS, HD = 3, 16, 4, 4


def _twins(seed=0):
  """The same weights twice: blocks unrolled (block_i/...) and stacked along axis 0 (blocks/...)."""
  rng = np.random.default_rng(seed)
  block = lambda: {  # noqa: E731
      "attn": {"query": {"kernel": rng.normal(size=(D, HEADS, HD)), "bias": rng.normal(size=(HEADS, HD))},
               "out": {"kernel": rng.normal(size=(HEADS, HD, D))}},
      "mlp": {"fc1": {"kernel": rng.normal(size=(D, 4 * D)), "bias": rng.normal(size=(4 * D,))},
              "fc2": {"kernel": rng.normal(size=(4 * D, D))}},
      "ln": {"scale": rng.normal(size=(D,))},
  }
  blocks = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), block()) for _ in range(DEPTH)]
  head = {"kernel": jnp.asarray(rng.normal(size=(D, 10)), jnp.float32)}
  unrolled = {**{f"block_{i}": b for i, b in enumerate(blocks)}, "head": head}
  stacked = {"blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks), "head": head}
  return unrolled, stacked


CASES = [
    dict(distribution="uniform"),
    dict(distribution="erk"),
    dict(distribution="global"),
    dict(distribution="global", min_density=0.02, target=0.97),
    dict(distribution="uniform", granularity="2:4", target=0.5),
    dict(distribution="uniform", granularity="block:2x2"),
    dict(distribution="erk", granularity="channel"),
    dict(distribution="uniform", overrides={"fc2": 0.5}),
]


# Every case under the packed selection in `make test`; under per_layer, one there and the rest in `make test-slow`.
_PER_LAYER_FAST = (6,)  # channel
_CASES = [pytest.param(c, sel, marks=() if sel == "packed" or i in _PER_LAYER_FAST else pytest.mark.slow,
                       id="-".join(f"{v}" for v in c.values()) + f"-{sel}")
          for sel in ("packed", "per_layer") for i, c in enumerate(CASES)]


@pytest.mark.parametrize("case,selection", _CASES)
def test_a_scanned_model_gets_the_masks_of_its_unscanned_twin(case, selection):
  unrolled, stacked = _twins()
  cfg = {"algorithm": "oneshot", "target": 0.8, "selection": selection, **case}
  a = sj.create_pruner(cfg)
  b = sj.create_pruner({**cfg, "stacked": validation.STACKED_BLOCKS})
  mb = jax.jit(lambda p: b.update(p, p, b.init(p), jnp.int32(0)))(stacked).masks
  ma = jax.jit(lambda p: a.update(p, p, a.init(p), jnp.int32(0)))(unrolled).masks
  assert mb["blocks"]["ln"]["scale"] is None and mb["blocks"]["attn"]["query"]["bias"] is None  # slices are 1-D
  for i in range(DEPTH):
    for path in (("attn", "query", "kernel"), ("attn", "out", "kernel"), ("mlp", "fc1", "kernel"),
                 ("mlp", "fc2", "kernel")):
      x, y = ma[f"block_{i}"], mb["blocks"]
      for k in path:
        x, y = x[k], y[k]
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y[i]), err_msg=f"{case} block {i} {path}")
  np.testing.assert_array_equal(np.asarray(ma["head"]["kernel"]), np.asarray(mb["head"]["kernel"]))
  # The summary counts the same layers, slice by slice, with the same totals.
  sa, sb = sj.summary(ma), sj.summary(mb, stacked=validation.STACKED_BLOCKS)
  assert sa["total"] == sb["total"]
  for i in range(DEPTH):
    assert sb["layers"][f"blocks/mlp/fc1/kernel[{i}]"] == sa["layers"][f"block_{i}/mlp/fc1/kernel"]
  assert len(sb["layers"]) == len(sa["layers"]) == 4 * DEPTH + 1


def test_without_the_stacked_field_a_scanned_leaf_is_one_layer():
  """The negative control: per-layer uniform pruning of the whole (L, ...) leaf differs from slice by slice (the
  slices' magnitudes differ by design here), so the test above can fail."""
  unrolled, stacked = _twins()
  stacked["blocks"]["mlp"]["fc1"]["kernel"] *= jnp.asarray([1.0, 3.0, 9.0])[:, None, None]
  cfg = {"algorithm": "oneshot", "target": 0.8}
  p = sj.create_pruner(cfg)
  m = jax.jit(lambda x: p.update(x, x, p.init(x), jnp.int32(0)))(stacked).masks["blocks"]["mlp"]["fc1"]["kernel"]
  kept = np.asarray(m).sum(axis=(1, 2))
  assert kept[0] < kept[2]  # one threshold over the stack: the large slice keeps more
  q = sj.create_pruner({**cfg, "stacked": validation.STACKED_BLOCKS})
  m = jax.jit(lambda x: q.update(x, x, q.init(x), jnp.int32(0)))(stacked).masks["blocks"]["mlp"]["fc1"]["kernel"]
  np.testing.assert_array_equal(np.asarray(m).sum(axis=(1, 2)), [round(0.2 * D * 4 * D)] * DEPTH)


@pytest.mark.parametrize("algorithm", ["gmp", "rigl"] + [pytest.param(a, marks=pytest.mark.slow)
                                                          for a in ("set", "granet", "movement")])
def test_sparsify_trains_a_stacked_model_and_keeps_pruned_weights_zero(algorithm):
  _, stacked = _twins()
  cfg = {"algorithm": algorithm, "target": 0.75, "begin_step": 0, "end_step": 4, "update_every": 2,
         "stacked": validation.STACKED_BLOCKS}
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner(cfg))
  params, state = sj.sparse_init(tx, stacked)

  @jax.jit
  def step(params, state):
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.1, params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(5):
    params, state = step(params, state)
  masks = sj.get_masks(state)
  s = sj.summary(masks, params, stacked=validation.STACKED_BLOCKS)
  for i in range(DEPTH):  # uniform by default: every slice at the target, counted from the weights
    assert s["layers"][f"blocks/mlp/fc1/kernel[{i}]"]["nnz"] == round(0.25 * D * 4 * D)
  kept_params = jax.tree.map(lambda m, p: None if m is None else p, masks, params, is_leaf=lambda x: x is None)
  for m, p in zip(jax.tree.leaves(masks), jax.tree.leaves(kept_params)):
    assert not np.any(np.asarray(p)[~np.asarray(m)])


def test_the_default_prunable_rule_looks_at_a_slice_and_bad_stacked_values_are_refused():
  _, stacked = _twins()
  leaves = sj.masks.prunable_paths(stacked, None, validation.STACKED_BLOCKS)
  assert "blocks/ln/scale" not in leaves and "blocks/mlp/fc1/bias" not in leaves  # (L, d): a vector per layer
  assert "blocks/ln/scale" in sj.masks.prunable_paths(stacked)  # without the field, (3, 16) looks like a matrix
  with pytest.raises(ValueError, match="config.sparsity.stacked"):
    sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 4, "stacked": ["("]})
  with pytest.raises(ValueError, match="config.sparsity.stacked"):
    sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 4, "stacked": [3]})
  with pytest.raises(ValueError, match="stacked leaf needs"):
    base.make_plan({"blocks": {"w": jnp.ones((3,))}}, {**sj.config.DEFAULTS, "prunable": ["w"],
                                                       "stacked": ["blocks/"], "target": 0.5})
