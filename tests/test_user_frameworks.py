"""Flax NNX and Equinox in a user's own loop: gmp, rigl and pruning at init, summaries, regexes and checkpoints.

The same promises as for linen: masks mirror the user's tree (None where not prunable), pruned weights are exactly 0
after every step, the sparsity counted from the weights equals the target, `prunable` regexes match the paths the
user sees (NNX `l1/kernel`, Equinox `layers/0/weight`), and an orbax checkpoint of the optimizer state with its masks
restores into a fresh model and trains on identically.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import sparsejax as sj
from sparsejax import checkpoint

nnx = pytest.importorskip("flax.nnx")
eqx = pytest.importorskip("equinox")

X = jax.random.normal(jax.random.key(1), (32, 8))
Y = jnp.arange(32) % 4
CONFIGS = {  # 128 + 64 prunable weights: 75% is an exact count in every layer
    "gmp": {"algorithm": "gmp", "target": 0.75, "begin_step": 0, "end_step": 4, "update_every": 2},
    "rigl": {"algorithm": "rigl", "target": 0.75, "distribution": "uniform", "begin_step": 0, "end_step": 4,
             "update_every": 2},
    "snip": {"algorithm": "snip", "target": 0.75},
}


def _loss(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def _check_step(masks, params):
  """Masks mirror params (a bool array or None at each leaf); pruned weights are exactly 0."""
  flat_m = sj.masks.flatten_with_paths(masks, is_leaf=sj.masks.is_none)
  flat_p = sj.masks.flatten_with_paths(sj.masks.pure(params), is_leaf=sj.masks.is_none)
  assert [p for p, _ in flat_m] == [p for p, _ in flat_p]
  for (path, m), (_, w) in zip(flat_m, flat_p):
    assert (m is None) == (w is None or path.endswith("bias")), path  # None: Equinox's filtered-out fields
    if m is not None:
      assert m.shape == w.shape and not np.asarray(w)[~np.asarray(m)].any(), path


def _check_end(masks, params, paths):
  summary = sj.summary(masks, params)  # counted from the weights
  assert list(summary["layers"]) == paths
  assert summary["total"]["sparsity"] == 0.75 and summary["total"]["nnz"] == 48


# -- Flax NNX ------------------------------------------------------------------------------------------------------
class _Net(nnx.Module):
  def __init__(self, rngs):
    self.l1 = nnx.Linear(8, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.l2(jax.nn.relu(self.l1(x)))


@nnx.jit
def _nnx_step(model, optimizer):
  optimizer.update(model, nnx.grad(lambda m: _loss(m(X)))(model))


@functools.lru_cache(None)
def _nnx_tx(algorithm):  # one transformation per algorithm: the optimizers' graphs match and _nnx_step compiles once
  return sj.sparsify(optax.adam(1e-2), sj.create_pruner(CONFIGS[algorithm]))


def _nnx_start(algorithm, seed=0):
  """A model and its nnx.Optimizer, the model's weights pruned to the masks it starts from."""
  model = _Net(nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, _nnx_tx(algorithm), wrt=nnx.Param)
  masks = sj.get_masks(optimizer.opt_state)
  if algorithm == "snip":  # with the user's own loss function
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = sj.prune_at_init(sj.create_pruner(CONFIGS["snip"]), None, params, [(X, Y)],
                             loss_fn=lambda p, batch: _loss(nnx.merge(graphdef, p, rest)(batch[0])))
    assert sj.set_masks(optimizer.opt_state, masks) is optimizer.opt_state  # NNX Variables: set in place
  nnx.update(model, sj.apply_masks(nnx.state(model, nnx.Param), masks))
  return model, optimizer


@pytest.mark.parametrize("algorithm", ["gmp", "rigl", "snip"])
def test_nnx_optimizer_trains_sparse(algorithm):
  model, optimizer = _nnx_start(algorithm)
  for _ in range(6):
    _nnx_step(model, optimizer)
    _check_step(sj.get_masks(optimizer.opt_state), nnx.state(model, nnx.Param))
  _check_end(sj.get_masks(optimizer.opt_state), nnx.state(model, nnx.Param), ["l1/kernel", "l2/kernel"])
  assert int(sj.get_step(optimizer.opt_state)) == 6


def test_nnx_checkpoint_restores_masks_and_trains_on(tmp_path):
  model, optimizer = _nnx_start("rigl")
  for _ in range(3):
    _nnx_step(model, optimizer)
  saver = ocp.StandardCheckpointer()
  saver.save(tmp_path / "ckpt", {"model": nnx.state(model), "optimizer": nnx.state(optimizer)})
  saver.wait_until_finished()
  other, other_opt = _nnx_start("rigl", seed=7)  # other weights, other masks
  restored = saver.restore(tmp_path / "ckpt", {"model": nnx.state(other), "optimizer": nnx.state(other_opt)})
  nnx.update(other, restored["model"])
  nnx.update(other_opt, restored["optimizer"])
  for a, b in zip(*(sj.masks.mask_leaves(sj.get_masks(o.opt_state)) for o in (optimizer, other_opt))):
    np.testing.assert_array_equal(a, b)
  assert int(sj.get_step(other_opt.opt_state)) == 3
  _nnx_step(model, optimizer)  # step 4 updates the masks (rigl): both runs the same
  _nnx_step(other, other_opt)
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(other, nnx.Param))):
    np.testing.assert_array_equal(a, b)
  masks = sj.get_masks(saver.restore(tmp_path / "ckpt"), like=nnx.state(model, nnx.Param))  # restored untargeted
  assert masks["l1"]["bias"] is None and masks["l2"]["kernel"].shape == (16, 4)


def test_nnx_paths_regexes_and_summary():
  params = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  assert sj.masks.prunable_paths(params) == ["l1/kernel", "l2/kernel"]
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "random", "target": 0.5,
                                                       "prunable": ["^l2/kernel$"]}))
  masks = sj.get_masks(tx.init(params))
  assert masks["l1"]["kernel"] is None and list(sj.summary(masks)["layers"]) == ["l2/kernel"]
  assert sj.summary(masks)["layers"]["l2/kernel"]["nnz"] == 32


# -- Equinox -------------------------------------------------------------------------------------------------------
def _eqx_model(seed=0):
  """layers/0/weight (16, 8) and layers/1/weight (4, 16): Equinox's (out, in)."""
  return eqx.nn.MLP(8, 4, 16, 1, key=jax.random.key(seed))


@functools.lru_cache(None)
def _eqx_step(algorithm):
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner(CONFIGS[algorithm]))
  static = eqx.filter(_eqx_model(), eqx.is_array, inverse=True)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: _loss(jax.vmap(eqx.combine(p, static))(X)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return eqx.apply_updates(params, updates), opt_state

  return tx, static, step


def _eqx_start(algorithm, seed=0):
  tx, static, _ = _eqx_step(algorithm)
  params = eqx.filter(_eqx_model(seed), eqx.is_array)
  if algorithm != "snip":
    return sj.sparse_init(tx, params)
  apply_fn = lambda p, x: jax.vmap(eqx.combine(p, static))(x)  # noqa: E731 (pruning at init with the model's apply)
  masks = sj.prune_at_init(sj.create_pruner(CONFIGS["snip"]), apply_fn, params, [(X, Y)])
  return sj.tickets.rewind(params, tx.init(params), masks)


@pytest.mark.parametrize("algorithm", ["gmp", "rigl", "snip"])
def test_equinox_trains_sparse(algorithm):
  _, static, step = _eqx_step(algorithm)
  params, opt_state = _eqx_start(algorithm)
  assert isinstance(sj.get_masks(opt_state), eqx.nn.MLP)  # the user's own tree type
  for _ in range(6):
    params, opt_state = step(params, opt_state)
    _check_step(sj.get_masks(opt_state), params)
  _check_end(sj.get_masks(opt_state), params, ["layers/0/weight", "layers/1/weight"])
  logits = jax.vmap(eqx.combine(params, static))(X)  # the model with the sparse weights back in
  assert logits.shape == (32, 4) and bool(jnp.isfinite(logits).all())


def test_equinox_checkpoint_with_the_library_helpers(tmp_path):
  _, _, step = _eqx_step("rigl")
  params, opt_state = _eqx_start("rigl")
  for _ in range(3):
    params, opt_state = step(params, opt_state)
  manager = checkpoint.create_manager(str(tmp_path), keep=1)
  checkpoint.save(manager, 3, {"params": params, "opt_state": opt_state})
  target = dict(zip(("params", "opt_state"), _eqx_start("rigl", seed=7)))
  restored_step, restored = checkpoint.restore_latest(manager, target)  # verified against its SHA-256
  manager.close()
  assert restored_step == 3 and isinstance(restored["params"], eqx.nn.MLP)
  for a, b in zip(*(sj.masks.mask_leaves(sj.get_masks(s)) for s in (opt_state, restored["opt_state"]))):
    np.testing.assert_array_equal(a, b)
  again = step(restored["params"], restored["opt_state"])[0]  # step 4 updates the masks (rigl)
  for a, b in zip(jax.tree.leaves(step(params, opt_state)[0]), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  plain = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "3" / "default")  # no target: dicts
  masks = sj.get_masks(plain, like=params)
  assert isinstance(masks, eqx.nn.MLP) and masks.layers[0].bias is None
  np.testing.assert_array_equal(masks.layers[1].weight, sj.get_masks(opt_state).layers[1].weight)


def test_equinox_paths_regexes_and_torch_layout():
  params = eqx.filter(_eqx_model(), eqx.is_array)
  assert sj.masks.prunable_paths(params) == ["layers/0/weight", "layers/1/weight"]
  assert sj.masks.prunable_paths(params, ["!^layers/0/", "weight$"]) == ["layers/1/weight"]
  nm = sj.prune_at_init(sj.create_pruner({"algorithm": "oneshot", "target": 0.5, "granularity": "2:4",
                                          "layout": "torch"}), None, params, None)
  w = np.asarray(nm.layers[0].weight)  # (out 16, in 8): 2 of every 4 consecutive inputs of each output kept
  assert (w.reshape(16, 2, 4).sum(-1) == 2).all()
  rows = sj.prune_at_init(sj.create_pruner({"algorithm": "oneshot", "target": 0.5, "granularity": "channel",
                                            "layout": "torch"}), None, params, None)
  w = np.asarray(rows.layers[1].weight)  # whole output units (rows) kept or pruned
  assert set(w.sum(1).tolist()) == {0, 16} and int(w.sum()) == 32
  assert list(sj.summary(rows)["layers"]) == ["layers/0/weight", "layers/1/weight"]
