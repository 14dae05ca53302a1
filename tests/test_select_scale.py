"""Selection at scale: the radix select against a stable sort where digits collide, counts past 2**31 (traced with
jax.eval_shape, no memory) and the unsigned count arithmetic used past 2**31 without x64 (forced on small arrays)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import distributions, select


def _reference(flat, k, weights=None):
  """Stable sort (ties: lower position first); with weights, the smallest prefix whose weighted count reaches k."""
  order = np.lexsort((np.arange(flat.size), -flat))
  w = np.ones(flat.size, np.int64) if weights is None else weights
  reached = np.cumsum(w[order]) >= k
  n = flat.size if k > w.sum() else int(np.argmax(reached)) + 1 if k > 0 else 0
  out = np.zeros(flat.size, bool)
  out[order[:n]] = True
  return out


def _colliding(rng, shape):
  """Scores whose keys share their top 11 and 22 bits in many places (the radix passes' digits) and tie exactly."""
  base = np.float32(1.5)
  bits = base.view(np.uint32) + rng.integers(0, 4, size=shape).astype(np.uint32) * (1 << 9)
  x = bits.view(np.float32) * rng.choice([1, -1], size=shape).astype(np.float32)
  x[rng.random(shape) < 0.1] = 0.0
  return x


@pytest.mark.parametrize("mode,row_split", [("packed", False), ("packed", True), ("per_layer", False)])
def test_radix_matches_stable_sort_with_colliding_digits(monkeypatch, mode, row_split):
  if row_split:  # ties split by _Packed.lowest (used past 2**22 entries) instead of the binary search
    monkeypatch.setattr(select, "_LOWEST_BITS", 0)
  rng = np.random.default_rng(0)
  xs = [_colliding(rng, s) for s in [(37, 5), (300,), (4, 4, 4)]]
  flat = np.concatenate([a.ravel() for a in xs])
  # fresh functions: jit's cache is per function, and _LOWEST_BITS is read while tracing
  glob = jax.jit(lambda xs, k: select.global_topk_masks(xs, k, mode=mode))
  per = jax.jit(lambda xs, ks: select.topk_masks(xs, ks, mode=mode))
  for k in [0, 1, 7, 100, 250, 400, flat.size - 1, flat.size]:
    got = np.concatenate([np.asarray(m).ravel() for m in glob([jnp.asarray(a) for a in xs], k)])
    np.testing.assert_array_equal(got, _reference(flat, k))
    ks = [min(k, a.size) for a in xs]
    for m, a, kk in zip(per([jnp.asarray(a) for a in xs], ks), xs, ks):
      np.testing.assert_array_equal(np.asarray(m).ravel(), _reference(a.ravel(), kk))


def test_count_dtype():
  assert select.count_dtype(2**31 - 1) == jnp.int32
  if not jax.config.jax_enable_x64:
    assert select.count_dtype(2**31) == jnp.uint32 and select.count_dtype(2**32 - 1) == jnp.uint32
    with pytest.raises(ValueError, match="jax_enable_x64"):
      select.count_dtype(2**32)
  with jax.enable_x64(True):
    assert select.count_dtype(2**40) == jnp.int64
    assert int(distributions.keep_count(0.5, 2**40)) == 2**39


def test_keep_count_past_int32():
  k = distributions.keep_count(0.0, 3 * 10**9)
  assert int(k) == 3 * 10**9 and k.dtype == select.count_dtype(3 * 10**9)
  assert int(distributions.keep_count(0.9, 3 * 10**9)) == 3 * 10**8


@pytest.mark.parametrize("mode", ["packed", "per_layer"])
def test_unsigned_counts_are_exact(monkeypatch, mode):
  """The count arithmetic used past 2**31 without x64 (uint32: never below zero), forced on small arrays."""
  if jax.config.jax_enable_x64:
    pytest.skip("x64 counts are int64")
  monkeypatch.setattr(select, "_INT32_MAX", 3)
  rng = np.random.default_rng(1)
  xs = [rng.integers(-2, 3, size=s).astype(np.float32) for s in [(6, 3), (5,), (2, 2)]]
  per = jax.jit(lambda xs, ks: select.topk_masks_and_counts(xs, ks, mode=mode))
  for weights, row_split in [((1, 1, 1), False), ((2, 3, 1), False), ((2, 3, 1), True)]:
    monkeypatch.setattr(select, "_LOWEST_BITS", 0 if row_split else 22)
    glob = jax.jit(lambda xs, k, weights=weights: select.global_topk_masks(xs, k, weights=weights, mode=mode))
    w = np.concatenate([np.full(a.size, wi) for a, wi in zip(xs, weights)])
    flat = np.concatenate([a.ravel() for a in xs])
    for k in range(0, int(w.sum()) + 2):
      got = np.concatenate([np.asarray(m).ravel() for m in glob([jnp.asarray(a) for a in xs], k)])
      np.testing.assert_array_equal(got, _reference(flat, k, w), err_msg=f"k={k} weights={weights}")
  ms, counts = per([jnp.asarray(a) for a in xs], [5, -1, 2])
  assert counts.dtype == jnp.uint32 and counts.tolist() == [18, 5, 4]
  for m, a, kk in zip(ms, xs, [5, 0, 2]):
    np.testing.assert_array_equal(np.asarray(m).ravel(), _reference(a.ravel(), kk))


@pytest.mark.parametrize("selection", ["packed", "per_layer"])
def test_global_gmp_traces_past_int32(selection):
  """3 x (40000 x 25000) = 3e9 weights: init and update trace (they raised OverflowError on 3000000000)."""
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.9, "distribution": "global", "begin_step": 0,
                             "end_step": 10, "update_every": 1, "selection": selection})
  tx = sj.sparsify(optax.sgd(0.1), pruner)
  params = {f"l{i}": {"kernel": jax.ShapeDtypeStruct((40000, 25000), jnp.float32)} for i in range(3)}
  state = jax.eval_shape(tx.init, params)
  updates, state = jax.eval_shape(tx.update, params, state, params)
  assert jax.tree.map(lambda u: u.shape, updates) == jax.tree.map(lambda p: p.shape, params)
  masks = jax.tree.leaves(sj.get_masks(state))
  assert [m.shape for m in masks] == [(40000, 25000)] * 3 and all(m.dtype == jnp.bool_ for m in masks)
