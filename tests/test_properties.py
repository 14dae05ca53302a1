"""Property-based tests (hypothesis) of the core: masks, sparsify, summary, top-k selection and keep counts.

Random param trees (nested dicts and lists, a bare array, None leaves; float32 / bfloat16 / float16 / int32 leaves of
ndim 1-3) are pruned by `sparsify(optax.sgd(0.1), pruner)` (oneshot and gmp; uniform, erk and global distributions;
unstructured and channel granularity) and checked against counts computed with numpy: exact per-layer (or global) keep
counts after the final mask update, pruned weights exactly 0 after every step, kept weights and unmasked leaves
updated as plain sgd updates them, masks that change only at update steps and only ever lose weights, int leaves never
masked nor changed, and `summary` equal to counts from the arrays. Example counts and shapes are small (the file runs
in under a minute on 2 CPU cores); no example database is written. Run with `--hypothesis-show-statistics` to see what
the drawn examples covered (the `event`s).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings, strategies as st

import sparsejax as sj

SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# Every sparsify example compiles its own step (~0.5 s): shrinking a failure would take minutes, so that test reports
# the failing example as drawn.
NO_SHRINK = dict(SETTINGS, phases=[Phase.explicit, Phase.generate])

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
DTYPES = FLOAT_DTYPES + (jnp.int32,)
TARGETS = (0.75, 0.9, 0.5, 0.25, 0.0)  # the first is Hypothesis's simplest draw
LR = 0.1


# ----------------------------------------------------------------------------------------------------------------------
# Param trees
# ----------------------------------------------------------------------------------------------------------------------

def _is_float(x) -> bool:
  return jnp.issubdtype(x.dtype, jnp.floating)


def _prunable(x, path="") -> bool:
  """The default rule: floating point, ndim >= 2, not a bias (last key 'bias'), not an embedding (a key with 'embed')."""
  parts = path.lower().split("/")
  return (x is not None and _is_float(x) and x.ndim >= 2 and parts[-1] != "bias"
          and not any("embed" in q for q in parts))


def _path(keypath) -> str:
  """'a/0/b' from a key path (independent of sparsejax.masks.path_str)."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    else:
      raise AssertionError(f"unexpected key {k!r}")
  return "/".join(parts)


def _leaves_with_none(tree):
  """[(path, leaf or None)] in tree order, None leaves included."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)
  return [(_path(kp), x) for kp, x in flat]


def _prunable_layers(params):
  """[(path, shape)] of the leaves sparsejax prunes by default (`_prunable`), in tree order."""
  return [(p, tuple(x.shape)) for p, x in _leaves_with_none(params) if _prunable(x, p)]


def _make_array(rng, shape, dtype, values):
  if dtype == jnp.int32:
    return jnp.asarray(rng.integers(-5, 6, size=shape).astype(np.int32))
  if values == "normal":
    x = rng.normal(size=shape)
  elif values == "ties":  # few distinct values: many ties, exact zeros
    x = rng.integers(-2, 3, size=shape).astype(np.float64) / 2
  else:  # 'zeros': mostly exact zeros, which tie with each other at every mask update
    x = np.where(rng.random(size=shape) < 0.7, 0.0, rng.normal(size=shape))
  return jnp.asarray(x.astype(np.float32)).astype(dtype)


shapes = st.integers(1, 3).flatmap(lambda nd: st.tuples(*[st.integers(1, 8 if nd < 3 else 4)] * nd))
# 2-D floating leaves of size >= 4: always prunable, and big enough for the targets to prune something.
big_2d = st.tuples(st.integers(2, 8), st.integers(2, 8))
leaf_specs = st.one_of(st.tuples(big_2d, st.sampled_from(FLOAT_DTYPES)), st.none(),
                       st.tuples(shapes, st.sampled_from(DTYPES)))
keys = st.sampled_from(["a", "b", "kernel", "bias", "w_1"])
tree_specs = st.recursive(
    leaf_specs,
    lambda children: st.one_of(st.dictionaries(keys, children, min_size=1, max_size=3),
                               st.lists(children, min_size=1, max_size=3)),
    max_leaves=4)


@st.composite
def param_trees(draw):
  """A params tree with at least one prunable leaf (sparsejax refuses a tree with none).

  Hypothesis starts from its simplest draws (0, False, the first choice), so the simplest tree is already a nested
  one with a None leaf, an int matrix and a float vector; a bare array is the rarer draw.
  """
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  values = draw(st.sampled_from(["normal", "ties", "zeros"]))
  make = lambda spec: None if spec is None else _make_array(rng, spec[0], spec[1], values)  # noqa: E731
  if draw(st.integers(0, 4)) == 4:  # a bare array
    return make((draw(big_2d), draw(st.sampled_from(FLOAT_DTYPES))))
  specs = [(draw(big_2d), draw(st.sampled_from(FLOAT_DTYPES)))]
  specs += [draw(tree_specs) for _ in range(draw(st.integers(1, 3)))]
  if not draw(st.booleans()):
    specs += [None, ((draw(st.integers(1, 4)), draw(st.integers(1, 4))), jnp.int32),
              ((draw(st.integers(1, 8)),), draw(st.sampled_from(FLOAT_DTYPES)))]
  order = draw(st.permutations(range(len(specs))))
  specs = [specs[i] for i in order]
  if not draw(st.booleans()):
    specs = dict(zip(["layer", "x", "y", "z", "w", "head", "out"], specs))
  return jax.tree.map(make, specs, is_leaf=lambda x: x is None or isinstance(x, tuple))


# (algorithm, distribution, granularity): 'channel' with 'uniform' only.
CONFIGS = [(a, d, g) for a in ("oneshot", "gmp")
           for d, g in (("uniform", "unstructured"), ("uniform", "channel"), ("erk", "unstructured"),
                        ("global", "unstructured"))]


@st.composite
def pruner_configs(draw, algorithm, distribution, granularity):
  cfg = {"algorithm": algorithm, "target": draw(st.sampled_from(TARGETS)), "distribution": distribution,
         "granularity": granularity, "begin_step": draw(st.integers(0, 2))}
  if algorithm == "gmp":
    cfg["update_every"] = draw(st.integers(1, 3))
    cfg["end_step"] = cfg["begin_step"] + draw(st.integers(1, 5))
  return cfg


def _grads(rng, params, mode="normal"):
  """Random normal for float leaves (their dtype), zeros for int leaves, None for None (jax.grad has no int grads).

  mode 'sparse' zeroes about half of the float gradients and 'zeros' all of them, so that weights that are exactly 0
  stay 0 and tie with the pruned ones at the next mask update.
  """
  def g(x):
    if not _is_float(x):
      return jnp.zeros_like(x)
    v = rng.normal(size=x.shape)
    if mode == "sparse":
      v = np.where(rng.random(size=x.shape) < 0.5, v, 0.0)
    elif mode == "zeros":
      v = np.zeros(x.shape)
    return jnp.asarray(v.astype(np.float32)).astype(x.dtype)
  return jax.tree.map(g, params)


def _np(tree):
  return jax.tree.map(lambda x: np.asarray(x.astype(jnp.float32)) if _is_float(x) else np.asarray(x),
                      jax.device_get(tree))


def _mask_dict(masks):
  return {p: np.asarray(m) for p, m in _leaves_with_none(masks) if m is not None}


# ----------------------------------------------------------------------------------------------------------------------
# Masks of a tree
# ----------------------------------------------------------------------------------------------------------------------

@settings(max_examples=25, **SETTINGS)
@given(params=param_trees())
def test_create_masks_marks_only_the_default_prunable_leaves(params):
  masks = sj.create_masks(params)
  got = _leaves_with_none(masks)
  want = _leaves_with_none(params)
  assert [p for p, _ in got] == [p for p, _ in want]
  for (path, m), (_, x) in zip(got, want):
    if _prunable(x, path):
      assert m is not None and m.dtype == jnp.bool_ and m.shape == x.shape and bool(jnp.all(m)), path
    else:
      assert m is None, path  # None leaves, vectors and every int leaf
  assert sj.masks.mask_paths(masks) == [p for p, _ in _prunable_layers(params)]


# ----------------------------------------------------------------------------------------------------------------------
# sparsify end to end
# ----------------------------------------------------------------------------------------------------------------------

def _expected_final_counts(cfg, layers):
  """{path: kept} (per-layer distributions) or {'total': kept} ('global') after the final mask update."""
  target = cfg["target"]
  if cfg["distribution"] == "global":
    return {"total": round((1 - target) * sum(math.prod(s) for _, s in layers))}
  if cfg["distribution"] == "uniform":
    sp = {p: target for p, _ in layers}
  else:
    sp = sj.distributions.layer_sparsities(cfg["distribution"], dict(layers), target)
  if cfg["granularity"] == "channel":  # whole output channels (last axis) are kept
    return {p: round((1 - sp[p]) * s[-1]) * (math.prod(s) // s[-1]) for p, s in layers}
  return {p: round((1 - sp[p]) * math.prod(s)) for p, s in layers}


def _check_summary(masks, params, layers):
  m = _mask_dict(masks)
  p_np = dict(_leaves_with_none(_np(params)))
  for counted, s in (("masks", sj.summary(masks)), ("params", sj.summary(masks, params))):
    assert list(s["layers"]) == [p for p, _ in layers]
    total_nnz = total_size = 0
    for path, shape in layers:
      nnz = int(np.count_nonzero(m[path] if counted == "masks" else p_np[path]))
      size = math.prod(shape)
      d = s["layers"][path]
      assert (tuple(d["shape"]), d["size"], d["nnz"]) == (shape, size, nnz), (counted, path)
      assert d["sparsity"] == pytest.approx(1 - nnz / size, abs=1e-12)
      total_nnz += nnz
      total_size += size
    t = s["total"]
    assert (t["prunable_params"], t["nnz"]) == (total_size, total_nnz), counted
    assert t["sparsity"] == pytest.approx(1 - total_nnz / total_size, abs=1e-12)


@pytest.mark.parametrize("algorithm,distribution,granularity",
                         [pytest.param(*c, marks=pytest.mark.slow) if c[2] == "channel" else c for c in CONFIGS])
@settings(max_examples=4, **NO_SHRINK)
@given(data=st.data(), params=param_trees(), seed=st.integers(0, 2**16),
       grad_mode=st.sampled_from(["normal", "sparse", "zeros"]))
def test_sparsify_properties(algorithm, distribution, granularity, data, params, seed, grad_mode):
  cfg = data.draw(pruner_configs(algorithm, distribution, granularity), label="cfg")
  rng = np.random.default_rng(seed)
  layers = _prunable_layers(params)
  leaves = _leaves_with_none(params)
  event(f"target {cfg['target']}")
  event(f"bare array: {not isinstance(params, (dict, list))}")
  event(f"None leaf: {any(x is None for _, x in leaves)}")
  event(f"int leaf: {any(x is not None and not _is_float(x) for _, x in leaves)}")
  event(f"dtypes: {sorted({str(x.dtype) for _, x in leaves if x is not None})}")
  pruner = sj.create_pruner(cfg)
  tx = sj.sparsify(optax.sgd(LR), pruner)
  params, state = sj.sparse_init(tx, params)
  ints = [(p, np.asarray(x)) for p, x in _leaves_with_none(params) if x is not None and not _is_float(x)]

  # Masks start all True on exactly the prunable leaves (None on int leaves, vectors and None leaves).
  masks0 = sj.get_masks(state)
  assert [p for p, m in _leaves_with_none(masks0) if m is not None] == [p for p, _ in layers]
  assert all(m.all() for m in _mask_dict(masks0).values())
  _check_summary(masks0, params, layers)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    plain = optax.apply_updates(params, jax.tree.map(lambda g: -LR * g, grads))  # what optax.sgd alone gives
    return optax.apply_updates(params, updates), state, plain

  last = cfg.get("end_step", cfg["begin_step"])
  old = _mask_dict(masks0)
  for t in range(last + 2):
    params, state, plain = step(params, state, _grads(rng, params, grad_mode))
    masks = sj.get_masks(state)
    new = _mask_dict(masks)
    p_np = dict(_leaves_with_none(_np(params)))
    for path, x in _leaves_with_none(_np(plain)):  # kept weights and unmasked leaves move as plain sgd moves them
      if x is not None:
        want = np.where(new[path], x, 0.0) if path in new else x
        np.testing.assert_allclose(p_np[path], want, rtol=2**-7, atol=0, err_msg=f"step {t} {path}")
    for path, _ in layers:
      assert not np.any(p_np[path][~new[path]]), (t, path)         # (b) pruned weights exactly 0
      assert not np.any(new[path] & ~old[path]), (t, path)         # (d) monotone: nothing pruned comes back
      if not bool(pruner.is_update(jnp.int32(t))):                 # (c) masks change only at update steps
        np.testing.assert_array_equal(new[path], old[path], err_msg=f"step {t} {path}")
    for path, x in ints:                                           # int leaves are never masked nor changed
      np.testing.assert_array_equal(p_np[path], x)
      assert dict(_leaves_with_none(params))[path].dtype == jnp.int32
    old = new

  # (a) exact counts after the final mask update.
  assert int(sj.get_step(state)) == last + 2
  want = _expected_final_counts(cfg, layers)
  if cfg["distribution"] == "global":
    assert sum(int(m.sum()) for m in old.values()) == want["total"]
  else:
    assert {p: int(m.sum()) for p, m in old.items()} == want
  if cfg["granularity"] == "channel":  # a mask is constant along every axis but the last
    for path, m in old.items():
      flat = m.reshape(-1, m.shape[-1])
      assert np.all(flat == flat[:1]), path
  if cfg["distribution"] == "erk":  # ERK splits the target so that the total is kept up to per-layer rounding
    total = sum(math.prod(s) for _, s in layers)
    assert abs(sum(int(m.sum()) for m in old.values()) - (1 - cfg["target"]) * total) <= len(layers) / 2 + 1e-6

  # (e) summary equals counts from the arrays.
  _check_summary(masks, params, layers)


# ----------------------------------------------------------------------------------------------------------------------
# Top-k selection and keep counts
# ----------------------------------------------------------------------------------------------------------------------

SPECIAL = [0.0, -0.0, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.0, -1.0, 0.5, 3.4028235e38, -3.4028235e38,
           float("inf"), float("-inf")]
score_values = st.one_of(st.sampled_from(SPECIAL), st.floats(width=32, allow_nan=False))
TOPK_SHAPES = [(1,), (2,), (5,), (9,), (16,), (3, 4)]
_topk = jax.jit(sj.select.topk_mask)


def _topk_reference(scores: np.ndarray, k: int) -> np.ndarray:
  """Stable sort by descending score (ties: lower flat index first), in float64 so float32 denormals are ordinary
  numbers whatever the FPU's flush-to-zero setting; -0.0 and 0.0 compare equal."""
  flat = scores.ravel().astype(np.float64)
  order = np.argsort(-flat, kind="stable")
  out = np.zeros(flat.size, bool)
  out[order[:min(max(k, 0), flat.size)]] = True
  return out.reshape(scores.shape)


@st.composite
def topk_cases(draw):
  shape = draw(st.sampled_from(TOPK_SHAPES))
  n = math.prod(shape)
  palette = draw(st.lists(score_values, min_size=1, max_size=n))  # a small palette: many ties
  scores = np.array(draw(st.lists(st.sampled_from(palette), min_size=n, max_size=n)), np.float32).reshape(shape)
  return scores, draw(st.integers(-1, n + 1))


def _f32(*xs):
  return np.array(xs, np.float32)


@settings(max_examples=60, **SETTINGS)
@given(case=topk_cases())
@example(case=(_f32(-0.0, 0.0), 1))  # -0.0 ties with 0.0: the lower index wins
@example(case=(_f32(0.0, -0.0), 1))
@example(case=(_f32(0.0, 1e-40), 1))  # a denormal is above 0 (no flush to zero)
@example(case=(_f32(-1e-40, -0.0), 1))
@example(case=(_f32(1.4e-45, 0.0, -1.4e-45, -0.0, 0.0), 3))
@example(case=(_f32(-np.inf, np.inf, 0.0, -3.4028235e38, 3.4028235e38), 3))
@example(case=(_f32(-np.inf, -np.inf, -1.0, -np.inf, -np.inf), 2))
def test_topk_mask_matches_stable_descending_sort(case):
  scores, k = case
  got = np.asarray(_topk(jnp.asarray(scores), k))
  np.testing.assert_array_equal(got, _topk_reference(scores, k), err_msg=f"scores={scores.tolist()!r} k={k}")


@settings(max_examples=200, **SETTINGS)
@given(s=st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.7, 0.75, 0.9, 0.95, 0.99, 1 - 1e-9, 1.0]),
                   st.floats(0.0, 1.0)),
       n=st.one_of(st.sampled_from([0, 1, 2, 3, 10, 999, 10**6, 10**8, 10**9 - 1, 10**9]),
                   st.integers(0, 10**9)))
def test_keep_count_is_python_round(s, n):
  got = sj.distributions.keep_count(s, n)
  assert got.dtype == jnp.int32
  assert int(got) == round((1 - s) * n)


@settings(max_examples=40, **SETTINGS)
@given(n=st.integers(0, 10**6).map(lambda h: 2 * h + 1))
def test_keep_count_ties_round_to_even(n):
  # (1 - 0.5) * n is exactly n / 2 = h + 0.5: kept is the even one of h and h + 1
  assert int(sj.distributions.keep_count(0.5, n)) == (n // 2 if (n // 2) % 2 == 0 else n // 2 + 1)
