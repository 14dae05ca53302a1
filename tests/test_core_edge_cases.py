"""What is prunable, n:m eligibility, distributions per algorithm, exact numbers and bad numbers (Flax NNX and Equinox
trees: tests/test_user_frameworks.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj


def _step(tx):
  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def test_integer_and_bool_leaves_are_never_masked():
  params = {"table": jnp.arange(24, dtype=jnp.int32).reshape(4, 6), "flags": jnp.ones((4, 6), bool),
            "w": jnp.arange(1.0, 25.0).reshape(4, 6)}
  masks = sj.create_masks(params)
  assert masks["table"] is None and masks["flags"] is None and masks["w"] is not None
  assert sj.masks.prunable_paths(params, ["table|flags|w"]) == ["w"]  # a regex cannot make them prunable
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "target": 0.5}))
  params, state = sj.sparse_init(tx, params)
  grads = {"table": jnp.zeros((4, 6), jnp.int32), "flags": jnp.zeros((4, 6), bool), "w": jnp.zeros((4, 6))}
  update = jax.jit(tx.update)
  updates, state = update(grads, state, params)
  plain, _ = optax.sgd(0.1).update(grads, optax.sgd(0.1).init(params), params)
  for k in ("table", "flags"):  # passed through as plain optax gives them
    np.testing.assert_array_equal(updates[k], plain[k])
  assert int(jnp.sum(sj.get_masks(state)["w"])) == 12


def test_nm_never_gives_a_slot_to_a_pruned_weight():
  """Movement 2:4: scores favour the weights a previous update pruned; each group must still keep 2 of its eligible
  weights, never a pruned one, and a group keeps exactly 2."""
  cfg = {"algorithm": "movement", "target": 0.5, "granularity": "2:4", "begin_step": 0, "end_step": 2,
         "update_every": 1, "nm_axis": 0}
  pruner = sj.create_pruner(cfg)
  w = jnp.asarray(np.random.RandomState(0).randn(8, 3), jnp.float32)
  state = pruner.init({"w": w})
  old = np.ones((8, 3), bool)
  old[1::4] = False  # one of every 4 along axis 0 already pruned
  importance = np.where(old, 0.0, 10.0).astype(np.float32)  # pruned ones score highest
  importance += np.random.RandomState(1).rand(8, 3).astype(np.float32)
  state = state._replace(masks={"w": jnp.asarray(old)}, extra={"w": jnp.asarray(importance)})
  new = np.asarray(jax.jit(pruner.update)({"w": w}, {"w": w}, state, jnp.int32(2)).masks["w"])
  assert not np.any(new & ~old)
  assert np.all(new.reshape(2, 4, 3).sum(axis=1) == 2)


@pytest.mark.parametrize("axis,message", [(7, "nm_axis=7 on layer w"), (-3, "nm_axis=-3 on layer w"),
                                          ("x", "nm_axis: got 'x'"), (True, "nm_axis: got True")])
def test_nm_axis_is_validated(axis, message):
  cfg = {"algorithm": "oneshot", "target": 0.5, "granularity": "2:4", "nm_axis": axis}
  with pytest.raises(ValueError, match=message):
    sj.sparsify(optax.sgd(0.1), sj.create_pruner(cfg)).init({"w": jnp.ones((8, 4))})


@pytest.mark.parametrize("algorithm", ["set", "rigl"])
@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_set_and_rigl_honour_distribution(algorithm, distribution):
  shapes = {"a": (64, 32), "b": (32, 4)}
  params = {k: jnp.ones(s) for k, s in shapes.items()}
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.8, "end_step": 100, "distribution": distribution})
  masks = pruner.init(params).masks
  split = sj.distributions.layer_sparsities(distribution, shapes, 0.8)
  for k, s in shapes.items():
    assert int(jnp.sum(masks[k])) == round((1 - split[k]) * math.prod(s))
  assert pruner.config["init_distribution"] == distribution


def test_set_rigl_refuse_a_different_init_distribution():
  with pytest.raises(ValueError, match="init_distribution: got 'uniform', which differs from distribution='er'"):
    sj.create_pruner({"algorithm": "rigl", "target": 0.8, "end_step": 100, "distribution": "er",
                      "init_distribution": "uniform"})
  # an older config that set only init_distribution gets that split
  assert sj.create_pruner({"algorithm": "rigl", "target": 0.8, "end_step": 100,
                           "init_distribution": "er"}).config["distribution"] == "er"


def test_keep_count_is_exact_at_any_size():
  assert int(sj.distributions.keep_count(0.9, 10**8)) == 10**7
  assert int(sj.distributions.keep_count(0.5, 2**31 - 1)) == round(0.5 * (2**31 - 1))


def test_the_target_count_is_exact_under_jit():
  """A float32 sparsity of 0.9 is 0.899999976; the count at the schedule's end uses the Python target."""
  plan = sj.pruners.base.Plan(("w",), ((10**4, 10**4),), (0.9,), 0.9, sj.granularity.parse("unstructured"), 0.0)
  k = jax.jit(lambda s: sj.pruners.base._count(plan, s, 0.9, plan.layer_sparsities(s)[0], 10**8))(jnp.float32(0.9))
  assert int(k) == 10**7


def test_denormal_scores_rank_as_the_numbers_they_are():
  assert sj.select.topk_mask(jnp.array([0.0, 1e-40]), 1).tolist() == [False, True]
  assert sj.select.topk_mask(jnp.array([-1e-40, -0.0, 0.0]), 1).tolist() == [False, True, False]  # -0 ties +0


@pytest.mark.parametrize("field", ["target", "power", "min_density", "drop_fraction", "prune_fraction",
                                   "temperature", "initial_sparsity"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_refused(field, value):
  with pytest.raises(ValueError, match=f"config.sparsity.{field}"):
    sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 10, field: value})


def test_non_finite_override_is_refused():
  with pytest.raises(ValueError, match="overrides"):
    sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 10, "overrides": {"w": float("nan")}})
