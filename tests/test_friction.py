"""What users' own code needs: prune_at_init with their loss and batches, a clear error when masks that come from
outside were never installed, masks found in any form of the state, and the inner optimizer's hyperparameters."""
import flax.linen as nn
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import sparsejax as sj


class _MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


def _setup():
  model = _MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8)))["params"]
  x = jax.random.normal(jax.random.key(1), (32, 8))
  y = jax.random.randint(jax.random.key(2), (32,), 0, 3)
  return model, params, x, y


def _same(a, b):
  same = jax.tree.map(lambda u, v: (u is None and v is None) or bool((u == v).all()), a, b,
                      is_leaf=lambda z: z is None)
  return all(jax.tree.leaves(same))


@pytest.mark.parametrize("algorithm", ["snip", "grasp"])
def test_prune_at_init_takes_the_users_loss_and_batch_format(algorithm):
  model, params, x, y = _setup()
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.7})
  apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)  # noqa: E731
  builtin = sj.prune_at_init(pruner, apply_fn, params, [{"image": x, "label": y}])
  temperature = 200.0 if algorithm == "grasp" else 1.0

  def loss_fn(p, batch):  # the user's own format and an aux output
    logits = apply_fn(p, batch["features"]) / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), {"n": 32}

  mine = sj.prune_at_init(pruner, None, params, [{"features": x, "targets": y}], loss_fn=loss_fn)
  assert _same(builtin, mine)
  assert sj.masks.sparsity(mine) == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize("algorithm", ["snip", "synflow"])
def test_apply_fn_with_extra_outputs_counts_by_its_first(algorithm):
  model, params, x, y = _setup()
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.7, "iterations": 5})
  plain = lambda p, inputs: model.apply({"params": p}, inputs)  # noqa: E731
  extra = lambda p, inputs: (plain(p, inputs), {"aux": jnp.ones(3)})  # noqa: E731
  batches = [(x, y)]
  assert _same(sj.prune_at_init(pruner, plain, params, batches), sj.prune_at_init(pruner, extra, params, batches))


def test_synflow_takes_an_input_shape_instead_of_batches():
  model, params, x, _ = _setup()
  pruner = sj.create_pruner({"algorithm": "synflow", "target": 0.7, "iterations": 5})
  apply_fn = lambda p, inputs: model.apply({"params": p}, inputs)  # noqa: E731
  assert _same(sj.prune_at_init(pruner, apply_fn, params, None, input_shape=(8,)),
               sj.prune_at_init(pruner, apply_fn, params, [(x, None)]))


@pytest.mark.parametrize("algorithm", ["snip", "grasp", "synflow", "imp"])
def test_masks_from_outside_must_be_installed(algorithm):
  _, params, _, _ = _setup()
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": algorithm, "target": 0.5, "levels": 1}))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  with pytest.raises(Exception, match=f"algorithm '{algorithm}' computes its masks outside the optimizer"):
    jax.block_until_ready(jax.jit(tx.update)(grads, state, params))
  recorded = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": algorithm, "target": 0.5, "levels": 1}),
                         check="record")
  _, bad = jax.jit(recorded.update)(grads, recorded.init(params), params)
  with pytest.raises(ValueError, match="computes its masks outside the optimizer, and none were installed"):
    sj.check_pruned(bad)
  masks = sj.get_masks(state)  # installed (all True here, as IMP's dense level 0): the update runs
  state = sj.set_masks(state, masks)
  updates, state = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_allclose(updates["Dense_1"]["kernel"], np.full((8, 16), -0.1))
  jax.block_until_ready(jax.jit(tx.update)(grads, state, params))  # later steps need nothing more


def test_random_and_schedules_need_no_installed_masks():
  _, params, _, _ = _setup()
  for cfg in ({"algorithm": "random", "target": 0.5}, {"algorithm": "gmp", "target": 0.5, "end_step": 10}):
    tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner(cfg))
    p, state = sj.sparse_init(tx, params)
    jax.block_until_ready(jax.jit(tx.update)(jax.tree.map(jnp.ones_like, p), state, p))


def test_get_masks_from_nnx_state_and_from_a_restore_without_target(tmp_path):
  class M(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(4, 8, rngs=rngs)
      self.l2 = nnx.Linear(8, 2, rngs=rngs)

  tx = sj.sparsify(optax.adam(1e-3), sj.create_pruner({"algorithm": "random", "target": 0.5}))
  model = M(nnx.Rngs(0))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  direct = sj.get_masks(opt.opt_state)
  from_state = sj.get_masks(nnx.state(opt))
  assert set(from_state) == {"l1", "l2"} and "bias" not in from_state["l1"]
  np.testing.assert_array_equal(from_state["l1"]["kernel"], direct["l1"]["kernel"])
  params = nnx.state(model, nnx.Param).to_pure_dict()
  full = sj.get_masks(nnx.state(opt), like=params)
  assert full["l1"]["bias"] is None and bool((full["l2"]["kernel"] == direct["l2"]["kernel"]).all())

  p = {"w": jnp.arange(16.0).reshape(4, 4), "b": jnp.zeros(4)}
  tx2 = sj.sparsify(optax.sgd(0.1, momentum=0.9), sj.create_pruner({"algorithm": "random", "target": 0.5}))
  p, state = sj.sparse_init(tx2, p)
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(tmp_path / "ckpt", {"opt_state": state})
  ckpt.wait_until_finished()
  restored = ckpt.restore(tmp_path / "ckpt")
  assert not isinstance(restored["opt_state"], sj.SparseState)
  np.testing.assert_array_equal(sj.get_masks(restored, like=p)["w"], sj.get_masks(state)["w"])
  assert sj.get_masks(restored, like=p)["b"] is None and int(sj.get_step(restored)) == 0
  with pytest.raises(ValueError, match=r"masks at \['w'\] have no param"):
    sj.get_masks(restored, like={"v": p["w"]})


def test_hyperparams_of_the_inner_optimizer_are_one_call_away():
  params = {"w": jnp.ones((2, 2))}
  tx = sj.sparsify(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), sj.create_pruner({}))
  params, state = sj.sparse_init(tx, params)
  step = jax.jit(tx.update)
  grads = {"w": jnp.ones((2, 2))}
  u1, state = step(grads, state, params)
  sj.hyperparams(state)["learning_rate"] = jnp.asarray(0.01)
  u2, state = step(grads, state, params)
  np.testing.assert_allclose(u1["w"], -0.1)
  np.testing.assert_allclose(u2["w"], -0.01)
  with pytest.raises(ValueError, match="holds 0 optax.inject_hyperparams states"):
    sj.hyperparams(sj.sparsify(optax.sgd(0.1), sj.create_pruner({})).init(params))
