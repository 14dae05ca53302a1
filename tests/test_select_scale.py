"""Selection at scale: the radix select against a stable sort where digits collide, counts past 2**31 (traced with
jax.eval_shape, no memory) and the unsigned count arithmetic used past 2**31 without x64 (forced on small arrays)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

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


@pytest.mark.parametrize("mode,row_split,blocks,wide_digits", [
    ("packed", False, False, False), ("packed", True, False, False), ("packed", False, True, False),
    ("packed", True, True, False), ("packed", False, False, True), ("packed", True, True, True),
    ("per_layer", False, False, False)])
def test_radix_matches_stable_sort_with_colliding_digits(monkeypatch, mode, row_split, blocks, wide_digits):
  if row_split:  # ties split by _Packed.lowest (used past 2**22 entries) instead of the binary search
    monkeypatch.setattr(select, "_LOWEST_BITS", 0)
  if wide_digits:  # 2 passes of 16-bit digits (used from 2**20 entries per array)
    monkeypatch.setattr(select, "_ENTRIES_PER_BIN", 0)
  if blocks:  # packed passes over blocks of 3 rows (of 1024 here; 4 rows: the last block overlaps the first)
    monkeypatch.setattr(select, "_BLOCK", 3 * 1024)
  rng = np.random.default_rng(0)
  xs = [_colliding(rng, s) for s in [(37, 5), (300,), (4, 4, 4)] + ([(2, 300)] if blocks else [])]
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


def test_global_gmp_traces_past_2_32_without_x64():
  """3 x (50000 x 50000) = 7.5e9 weights: the pruner's k counts in two words (the engine path, not only select)."""
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.9, "distribution": "global", "begin_step": 0,
                             "end_step": 10, "update_every": 1})
  tx = sj.sparsify(optax.sgd(0.1), pruner)
  params = {f"l{i}": {"kernel": jax.ShapeDtypeStruct((50000, 50000), jnp.float32)} for i in range(3)}
  state = jax.eval_shape(tx.init, params)
  _, state = jax.eval_shape(tx.update, params, state, params)
  assert [m.shape for m in jax.tree.leaves(sj.get_masks(state))] == [(50000, 50000)] * 3


def test_global_gmp_with_min_density_traces_past_2_32_without_x64():
  """The per-layer floor's counts past 2**32 without x64 (they raised: counts up to ... need 64-bit integers)."""
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.9, "distribution": "global", "min_density": 0.01,
                             "begin_step": 0, "end_step": 10, "update_every": 1})
  tx = sj.sparsify(optax.sgd(0.1), pruner)
  params = {f"l{i}": {"kernel": jax.ShapeDtypeStruct((50000, 50000), jnp.float32)} for i in range(3)}
  state = jax.eval_shape(tx.init, params)
  _, state = jax.eval_shape(tx.update, params, state, params)
  assert [m.shape for m in jax.tree.leaves(sj.get_masks(state))] == [(50000, 50000)] * 3


@pytest.mark.parametrize("min_density", [0.0, 0.08])
@pytest.mark.parametrize("step", [3, 10])  # mid-schedule (a traced float32 count) and at the target (exact)
def test_global_gmp_counts_in_two_words_give_the_one_word_masks(monkeypatch, step, min_density):
  """The pruner's two-word k (forced on small layers by lowering the word size) keeps what one word keeps, with and
  without a per-layer floor (0.08 binds: the largest layer would keep under 8% by the global threshold alone)."""
  cfg = {"algorithm": "gmp", "target": 0.9, "distribution": "global", "begin_step": 0, "end_step": 10,
         "update_every": 1, "min_density": min_density}
  rng = np.random.default_rng(0)
  # l0's weights are 10x smaller: the global threshold alone keeps almost none of them, so the floor binds there
  params = {f"l{i}": jnp.asarray(rng.normal(size=(40, 25 + 10 * i)) * (0.1 if i == 0 else 1.0), jnp.float32)
            for i in range(3)}

  def masks():
    p = sj.create_pruner(cfg)
    return jax.jit(lambda x: p.update(x, x, p.init(x), jnp.int32(step)))(params).masks

  one = masks()
  if min_density:
    assert int(np.asarray(one["l0"]).sum()) == 80  # ceil(0.08 * 1000): the floor
  monkeypatch.setattr(select, "_WORD", 2**10)  # 4200 weights now "past a word"
  assert select.needs_two_words(4200)
  two = masks()
  for k in one:
    np.testing.assert_array_equal(np.asarray(one[k]), np.asarray(two[k]), err_msg=k)
  kept = sum(int(np.asarray(m).sum()) for m in one.values())
  want = round(0.1 * 4200) if step == 10 else None
  assert want is None or kept == want


# ----------------------------------------------------------------------------------------------------------------------
# Two-word counts: global selections whose weighted total reaches 2**32 without x64
# ----------------------------------------------------------------------------------------------------------------------

def _int(w) -> np.ndarray:
  """Python ints of a Wide."""
  return np.vectorize(lambda h, l: (int(h) << 32) | int(l), otypes=[object])(np.asarray(w.hi), np.asarray(w.lo))


def _wide(values) -> "select.Wide":
  """A Wide vector (or scalar, from an int) of Python ints below 2**64."""
  v = np.asarray(values, object)
  return select.Wide(jnp.asarray(np.asarray(v >> 32, np.uint64), jnp.uint32),
                      jnp.asarray(np.asarray(v & 0xFFFFFFFF, np.uint64), jnp.uint32))


_U32 = st.integers(0, 2**32 - 1)
_WIDE = st.integers(0, 2**56)


@settings(deadline=None, database=None, max_examples=60)
@given(st.lists(_U32, min_size=6, max_size=6), st.lists(_WIDE, min_size=6, max_size=6),
       st.lists(_WIDE, min_size=6, max_size=6))
def test_two_word_arithmetic_matches_python_ints(narrow, a, b):
  ops = select.TwoWords()
  wa, wb = _wide(a), _wide(b)
  big, small = _wide([max(x, y) for x, y in zip(a, b)]), _wide([min(x, y) for x, y in zip(a, b)])
  assert list(_int(ops.add(wa, wb))) == [x + y for x, y in zip(a, b)]
  assert list(_int(ops.sub(big, small))) == [abs(x - y) for x, y in zip(a, b)]
  assert np.asarray(ops.ge(wa, wb)).tolist() == [x >= y for x, y in zip(a, b)]
  assert list(_int(ops.min(wa, wb))) == [min(x, y) for x, y in zip(a, b)]
  n = jnp.asarray(narrow, jnp.uint32)
  assert int(_int(ops.sum(n, 0))) == sum(narrow) and int(_int(ops.sum(wa, 0))) == sum(a)
  assert list(_int(ops.cumsum(n, 0))) == list(np.cumsum(np.asarray(narrow, object)))
  assert list(_int(ops.cumsum(wa, -1, reverse=True))) == list(np.cumsum(np.asarray(a[::-1], object)))[::-1]
  two_d = jnp.stack([n, n[::-1]])  # (2, 6): sums over either axis
  assert list(_int(ops.sum(two_d, 0))) == [x + y for x, y in zip(narrow, narrow[::-1])]
  assert int(_int(ops.take(wa, jnp.int32(2)))) == a[2]


@settings(deadline=None, database=None, max_examples=40)
@given(st.integers(-2**40, 2**66), st.integers(0, 2**63))
def test_two_word_clip_of_ints_floats_and_pairs(k, limit):
  ops = select.TwoWords()
  clipped = min(max(k, 0), limit)
  assert int(_int(ops.clip(k, limit))) == clipped
  pair = max(k, 0) % 2**64
  assert int(_int(ops.clip(_wide(pair), limit))) == min(pair, limit)
  f = np.float32(k)  # an integral float: exact in two words
  assert int(_int(ops.clip(jnp.float32(f), limit))) == min(max(int(f), 0), limit)
  if -2**31 <= k < 2**31:
    assert int(_int(ops.clip(jnp.int32(k), limit))) == clipped


def test_two_word_sums_of_many_terms():
  """The 16-bit halves keep sums exact with up to 2**16 - 1 terms of 2**32 - 1."""
  ops = select.TwoWords()
  x = jnp.full((2**16 - 1,), 2**32 - 1, jnp.uint32)
  assert int(_int(ops.sum(x, 0))) == (2**16 - 1) * (2**32 - 1)
  assert int(_int(ops.cumsum(x, 0))[-1]) == (2**16 - 1) * (2**32 - 1)


# Weights of 2**29 - 2**31 on a few entries: a weighted total of about 7.9e9, so counts carry into the high word.
_CARRY_SHAPES = [(3,), (2, 2), (5,), (1,)]
_CARRY_WEIGHTS = (2**29 + 1, 2**29, 3 * 2**27, 2**31 - 3)


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 counts are int64")
def test_global_selection_with_carries_matches_stable_sort():
  rng = np.random.default_rng(3)
  xs = [rng.integers(-2, 3, size=s).astype(np.float32) for s in _CARRY_SHAPES]
  w = np.concatenate([np.full(a.size, wi, np.int64) for a, wi in zip(xs, _CARRY_WEIGHTS)])
  flat = np.concatenate([a.ravel() for a in xs])
  total = int(w.sum())
  assert total >= 2**32
  assert isinstance(select._layout(xs, _CARRY_WEIGHTS, "auto"), select._Layers)  # packed counts in one word
  with pytest.raises(ValueError, match="per_layer"):
    select._layout(xs, _CARRY_WEIGHTS, "packed")
  glob = jax.jit(lambda xs, k: select.global_topk_masks(xs, k, weights=_CARRY_WEIGHTS))
  order = np.lexsort((np.arange(flat.size), -flat))
  prefix = [int(c) for c in np.cumsum(w[order])]
  ks = sorted({0, 1, 2**32 - 1, 2**32, 2**32 + 1, total + 1} | {p + d for p in prefix for d in (-1, 0, 1)})
  for k in ks:  # traced: one compilation
    got = np.concatenate([np.asarray(m).ravel() for m in glob([jnp.asarray(a) for a in xs], _wide(k))])
    np.testing.assert_array_equal(got, _reference(flat, k, w), err_msg=f"k={k}")
  # k as a Python int (clipped statically) and as an integral float32
  for k in [2**32 + 7, prefix[5]]:
    for kk, exact in [(k, k), (jnp.float32(k), int(np.float32(k)))]:
      got = np.concatenate([np.asarray(m).ravel() for m in select.global_topk_masks(xs, kk, weights=_CARRY_WEIGHTS)])
      np.testing.assert_array_equal(got, _reference(flat, exact, w), err_msg=f"k={kk!r}")


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 counts are int64")
@pytest.mark.parametrize("mode", ["auto", "per_layer"])
def test_two_word_path_gives_the_one_word_masks(monkeypatch, mode):
  """Two-word counts forced on normal sizes (_WORD = 8) keep exactly the masks of the one-word packed path."""
  rng = np.random.default_rng(4)
  xs = [jnp.asarray(_colliding(rng, s)) for s in [(37, 5), (300,), (4, 4, 4)]]
  eligible = [jnp.asarray(rng.random(x.shape) < 0.9) for x in xs]
  weights = (2, 1, 3)
  total = sum(w * x.size for w, x in zip(weights, xs))
  one = jax.jit(lambda xs, e, k: select.global_topk_masks(xs, k, e, weights=weights, mode="packed"))
  ref = {k: one(xs, eligible, k) for k in range(0, total + 2, 37)}
  monkeypatch.setattr(select, "_WORD", 8)
  assert isinstance(select._layout(xs, weights, mode), select._Layers)
  assert isinstance(select._layout(xs, weights, mode).ops, select.TwoWords)
  two = jax.jit(lambda xs, e, k: select.global_topk_masks(xs, k, e, weights=weights, mode=mode))
  for k, want in ref.items():
    for a, b in zip(two(xs, eligible, k), want):
      np.testing.assert_array_equal(a, b, err_msg=f"k={k}")


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 counts are int64")
def test_selection_traces_past_2_32():
  """3 x (50000 x 50000) = 7.5e9 weights (no memory: eval_shape and lowering): global selection counts in two words,
  per-array selection in uint32; 'packed' and arrays of 2**32 entries are refused with the limit named."""
  xs = [jax.ShapeDtypeStruct((50000, 50000), jnp.float32)] * 3
  u32 = jax.ShapeDtypeStruct((), jnp.uint32)
  assert isinstance(select._layout(xs, [1] * 3, "auto").ops, select.TwoWords)
  out = jax.eval_shape(lambda xs, hi, lo: select.global_topk_masks(xs, select.Wide(hi, lo)), xs, u32, u32)
  assert [(m.shape, m.dtype) for m in out] == [((50000, 50000), jnp.bool_)] * 3
  lowered = jax.jit(lambda xs: select.global_topk_masks(xs, 5 * 10**9, score_fn=jnp.abs)).lower(xs)
  assert "tensor<50000x50000xi1>" in lowered.as_text()
  masks, counts = jax.eval_shape(lambda xs: select.topk_masks_and_counts(xs, [3 * 10**9] * 3), xs)
  assert counts.dtype == jnp.uint32 and counts.shape == (3,) and masks[0].shape == (50000, 50000)
  with pytest.raises(ValueError, match="per_layer"):
    jax.eval_shape(lambda xs: select.global_topk_masks(xs, 5 * 10**9, mode="packed"), xs)
  with pytest.raises(ValueError, match=r"2\*\*32"):
    jax.eval_shape(lambda x: select.topk_mask(x, 10), jax.ShapeDtypeStruct((70000, 70000), jnp.float32))
