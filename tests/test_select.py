"""Exact top-k selection against a numpy reference (stable sort: ties keep the lower position)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import select


def _reference(flat, k):
  order = np.lexsort((np.arange(flat.size), -flat))
  out = np.zeros(flat.size, bool)
  out[order[:k]] = True
  return out


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
@pytest.mark.parametrize("with_ties", [False, True])
def test_topk_matches_stable_sort(n, with_ties):
  rng = np.random.default_rng(n)
  x = rng.normal(size=n).astype(np.float32)
  if with_ties:
    x[rng.integers(0, n, max(n // 3, 1))] = 0.25
    x[: n // 4] = -0.0
  f = jax.jit(select.topk_mask)
  for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
    np.testing.assert_array_equal(np.asarray(f(jnp.asarray(x), k)), _reference(x, k))


def test_k_is_traced_and_clipped():
  x = jnp.arange(10.0)
  f = jax.jit(select.topk_mask)
  assert int(f(x, -3).sum()) == 0 and int(f(x, 99).sum()) == 10
  assert f(x, 3).tolist() == [False] * 7 + [True] * 3


def test_nan_and_infinities():
  x = jnp.array([jnp.nan, 1.0, jnp.inf, -jnp.inf, 0.0])
  assert select.topk_mask(x, 2).tolist() == [False, True, True, False, False]
  # NaN ranks as -inf and ties with it; the lower position wins the tie
  assert select.topk_mask(x, 4).tolist() == [True, True, True, False, True]


def test_global_matches_concatenated_reference():
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=s).astype(np.float32) for s in [(4, 5), (3,), (2, 2, 2)]]
  xs[0][0] = 0.1
  xs[2][0, 0] = 0.1
  flat = np.concatenate([a.ravel() for a in xs])
  f = jax.jit(select.global_topk_masks)
  for k in range(flat.size + 1):
    got = np.concatenate([np.asarray(m).ravel() for m in f([jnp.asarray(a) for a in xs], k)])
    np.testing.assert_array_equal(got, _reference(flat, k))


def test_per_layer_counts_and_eligibility():
  xs = [jnp.arange(12.0).reshape(3, 4), -jnp.arange(5.0)]
  elig = [jnp.arange(12).reshape(3, 4) % 2 == 0, None]
  ms = jax.jit(select.topk_masks)(xs, [3, 2], elig)
  assert ms[0].ravel().tolist() == [i in (6, 8, 10) for i in range(12)]
  assert ms[1].tolist() == [True, True, False, False, False]
  # k above the number of eligible entries keeps only eligible ones
  ms = select.topk_masks(xs, [10, 2], elig)
  assert int(ms[0].sum()) == 6 and not bool((ms[0] & ~elig[0]).any())


def test_weighted_global_keeps_whole_groups():
  # two layers of groups: sizes 4 and 2; k counted in weights
  ms = select.global_topk_masks([jnp.array([3.0, 1.0]), jnp.array([2.0, 0.5, 4.0])], 8, weights=[4, 2])
  assert [m.tolist() for m in ms] == [[True, False], [True, False, True]]


def test_works_on_sharded_scores():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  x = jax.device_put(jax.random.normal(jax.random.key(0), (800,)), sharding)
  got = jax.jit(select.topk_mask)(x, 123)
  np.testing.assert_array_equal(np.asarray(got), _reference(np.asarray(x), 123))


@pytest.mark.parametrize("mode", ["packed", "per_layer"])
def test_sort_layout_matches_the_radix_layouts(mode):
  """'auto' sorts small selections (select.SORT_MAX); every layout keeps the same entries, ties and eligibility and
  weighted global counts included (scores are small integers: many ties)."""
  assert select._sorts([jnp.zeros(10)], [1], "auto") and not select._sorts([jnp.zeros(10)], [1], "packed")
  rng = np.random.default_rng(0)
  shapes, weights = [(5, 6), (1, 3), (4, 4)], [3, 1, 2]
  total = sum(w * int(np.prod(s)) for w, s in zip(weights, shapes))

  def both(fn):
    return [jax.jit(lambda *a, m=m: fn(*a, m)) for m in ("sort", mode)]

  per = both(lambda a, e, k, m: select.topk_masks_and_counts(a, list(k), e, jnp.abs, mode=m))
  glob = both(lambda a, e, k, m: select.global_topk_masks(a, k, e, weights, jnp.abs, mode=m))
  for trial in range(30):
    xs = [jnp.asarray(rng.integers(-3, 4, size=s).astype(np.float32)) for s in shapes]
    elig = [jnp.asarray(rng.random(s) < (1.0 if trial % 3 == 0 else 0.7)) for s in shapes]
    ks = jnp.asarray([int(rng.integers(-1, int(np.prod(s)) + 2)) for s in shapes], jnp.int32)
    (a, ca), (b, cb) = per[0](xs, elig, ks), per[1](xs, elig, ks)
    np.testing.assert_array_equal(np.asarray(ca), np.asarray(cb))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    k = jnp.int32(int(rng.integers(-1, total + 3)))
    for x, y in zip(glob[0](xs, elig, k), glob[1](xs, elig, k)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
