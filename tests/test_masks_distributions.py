"""Mask trees, per-layer counts for every distribution and granularity, ERK by hand, schedules by formula."""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from sparsejax import distributions, schedules
from sparsejax.pruners import base


def _params(frozen=False):
  p = {"enc": {"dense_0": {"kernel": jnp.ones((8, 16)), "bias": jnp.ones(16)},
               "conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)}},
       "head": {"kernel": jnp.ones((16, 4)), "bias": jnp.ones(4)}}
  return flax.core.freeze(p) if frozen else p


@pytest.mark.parametrize("frozen", [False, True])
def test_masks_mirror_params(frozen):
  params = _params(frozen)
  masks = sj.create_masks(params)
  assert type(masks) is type(params)
  assert jax.tree.structure(masks, is_leaf=lambda x: x is None) == jax.tree.structure(
      jax.tree.map(lambda x: None if x.ndim < 2 else x, params), is_leaf=lambda x: x is None)
  assert masks["enc"]["dense_0"]["bias"] is None and masks["head"]["kernel"].dtype == jnp.bool_
  assert sj.masks.mask_paths(masks) == ["enc/conv/kernel", "enc/dense_0/kernel", "head/kernel"]


def test_prunable_regexes_first_match_wins():
  params = _params()
  assert sj.masks.prunable_paths(params, ["!head", "kernel"]) == ["enc/conv/kernel", "enc/dense_0/kernel"]
  assert sj.masks.prunable_paths(params, ["head/kernel", "!kernel", "bias"]) == [
      "enc/conv/bias", "enc/dense_0/bias", "head/bias", "head/kernel"]
  with pytest.raises(ValueError, match="prunable.*matches no floating-point param"):
    sj.masks.prunable_paths(params, ["kernel", "nothing_here"])


def test_apply_and_summary_count_from_arrays():
  params = {"a": {"kernel": jnp.arange(1.0, 7.0).reshape(2, 3)}, "b": jnp.ones(3)}
  masks = {"a": {"kernel": jnp.array([[True, False, True], [False, False, True]])}, "b": None}
  pruned = sj.apply_masks(params, masks)
  assert pruned["a"]["kernel"].tolist() == [[1.0, 0.0, 3.0], [0.0, 0.0, 6.0]]
  s = sj.summary(masks)
  assert s["layers"]["a/kernel"] == {"shape": [2, 3], "size": 6, "nnz": 3, "sparsity": 0.5}
  assert s["total"] == {"prunable_params": 6, "nnz": 3, "sparsity": 0.5}
  # counted from the params: a kept weight that happens to be 0 counts as zero
  params["a"]["kernel"] = params["a"]["kernel"].at[0, 0].set(0.0)
  assert sj.summary(masks, sj.apply_masks(params, masks))["total"]["nnz"] == 2
  assert "a/kernel" in str(s) and "total" in str(s)


def test_erk_by_hand_with_a_dense_layer():
  shapes = {"a": (4, 4), "b": (100, 100), "c": (100, 50)}
  sp = distributions.layer_sparsities("erk", shapes, 0.9)
  # raw densities 8/16, 200/10000, 150/5000; budget 0.1 * 15016 = 1501.6.
  # eps = 1501.6 / 358 makes a's density 2.097 > 1, so a is dense; then eps = (1501.6 - 16) / 350.
  eps = (1501.6 - 16) / 350
  assert sp["a"] == 0.0
  assert sp["b"] == pytest.approx(1 - eps * 0.02, abs=1e-12)
  assert sp["c"] == pytest.approx(1 - eps * 0.03, abs=1e-12)
  er = distributions.layer_sparsities("er", {"x": (3, 3, 10, 20), "y": (20, 10)}, 0.5)
  # ER ignores kernel dims: raw (10+20)/200 for both; budget 0.5 * 2000 = 1000
  eps_er = 1000 / (0.15 * 1800 + 0.15 * 200)
  assert er["x"] == pytest.approx(1 - eps_er * 0.15) and er["y"] == pytest.approx(1 - eps_er * 0.15)


def test_overrides_fix_a_layer():
  sp = distributions.layer_sparsities("uniform", {"a": (10, 10), "head": (10, 2)}, 0.8, {"head": 0.1})
  assert sp == {"a": 0.8, "head": 0.1}
  with pytest.raises(ValueError, match="overrides.*matches no"):
    distributions.layer_sparsities("uniform", {"a": (10, 10)}, 0.8, {"zzz": 0.1})


def _final_masks(params, **cfg):
  cfg = sj.config.validate({"algorithm": "oneshot", **cfg}, ["oneshot"])
  plan = base.make_plan(params, cfg)
  scores = [jax.random.uniform(jax.random.key(i), s) for i, s in enumerate(plan.shapes)]
  return plan, jax.jit(lambda sc: base.select_masks(plan, sc, jnp.float32(cfg["target"])))(scores)


@pytest.mark.parametrize("distribution", ["uniform", "er", "erk"])
@pytest.mark.parametrize("gran", ["unstructured", "block:4x4", "channel"])
def test_exact_per_layer_counts(distribution, gran):
  params = _params()
  plan, masks = _final_masks(params, target=0.75, distribution=distribution, granularity=gran)
  for path, shape, s_l, m, g in zip(plan.paths, plan.shapes, plan.sparsities, masks, plan.grans):
    groups = g.num_groups(shape)
    expected = round((1 - s_l) * groups) * (math.prod(shape) // groups)
    assert int(m.sum()) == expected, (path, gran)
    if gran == "channel":  # whole output channels
      per_channel = np.asarray(m).reshape(-1, shape[-1]).sum(0)
      assert set(per_channel.tolist()) <= {0, math.prod(shape[:-1])}
    if gran == "block:4x4":
      rows = np.asarray(m).reshape(-1, shape[-1])
      blocks = rows.reshape(rows.shape[0] // 4, 4, shape[-1] // 4, 4).sum((1, 3))
      assert set(blocks.ravel().tolist()) <= {0, 16}


def test_nm_keeps_n_of_every_m():
  params = _params()
  plan, masks = _final_masks(params, target=0.5, granularity="2:4")
  for shape, m in zip(plan.shapes, masks):
    groups = np.moveaxis(np.asarray(m), len(shape) - 2, -1).reshape(-1, 4)
    assert (groups.sum(-1) == 2).all()


def test_global_counts_and_floor():
  params = {"a": {"kernel": 1e-3 * jax.random.normal(jax.random.key(0), (20, 20))},
            "b": {"kernel": jax.random.normal(jax.random.key(1), (40, 40))}}
  for floor in (0.0, 0.05):
    cfg = sj.config.validate({"algorithm": "oneshot", "target": 0.9, "distribution": "global",
                              "min_density": floor}, ["oneshot"])
    plan = base.make_plan(params, cfg)
    scores = [jnp.abs(params["a"]["kernel"]), jnp.abs(params["b"]["kernel"])]
    ma, mb = base.select_masks(plan, scores, jnp.float32(0.9))
    assert int(ma.sum()) + int(mb.sum()) == round(0.1 * 2000)
    if floor:
      assert int(ma.sum()) >= math.ceil(0.05 * 400)
    else:
      assert int(ma.sum()) == 0  # layer collapse without the floor


def test_cubic_schedule_equals_formula_at_every_update():
  s_i, s_f, t0, dt, n = 0.1, 0.9, 50, 25, 8
  sched = schedules.polynomial(s_i, s_f, t0, t0 + n * dt, dt)
  f = jax.jit(sched.sparsity)
  for j in range(n + 1):
    t = t0 + j * dt
    assert bool(sched.is_update(t))
    assert float(f(t)) == pytest.approx(s_f + (s_i - s_f) * (1 - j / n) ** 3, abs=1e-6)
    if j < n:
      assert not bool(sched.is_update(t + 1)) and float(f(t + 1)) == pytest.approx(float(f(t)))
  assert float(f(0)) == pytest.approx(s_i) and float(f(10_000)) == pytest.approx(s_f)
  assert not bool(sched.is_update(t0 - 1)) and not bool(sched.is_update(t0 + n * dt + dt))


def test_drop_fraction_schedules():
  cos = schedules.drop_fraction("cosine", 0.3, 1000)
  assert float(cos(0)) == pytest.approx(0.3) and float(cos(500)) == pytest.approx(0.15)
  assert float(cos(1000)) == pytest.approx(0.0, abs=1e-7)
  assert float(schedules.drop_fraction("linear", 0.3, 1000)(250)) == pytest.approx(0.225)
  assert float(schedules.drop_fraction("constant", 0.3, 1000)(999)) == pytest.approx(0.3)
