"""sparsify with every optax optimizer and every way users compose it (gmp and rigl, under jit).

For each optimizer: pruned weights are exactly 0 after every step, and after every mask update the optimizer state of
each weight that is not kept (pruned, or grown at that step) equals what `tx.init` gives, leaf by leaf, found by path
and shape. Compositions that cannot keep pruned weights at 0 are refused with a message that says why.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import transform

STEPS = 12


def _problem(bare=False):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"dense": {"kernel": jax.random.normal(k1, (12, 16)), "bias": jnp.zeros(16)},
            "head": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)}}
  x = jax.random.normal(k3, (32, 12))
  y = jnp.arange(32) % 4

  def loss(p):
    h = jax.nn.relu(x @ p["dense"]["kernel"] + p["dense"]["bias"][None, :])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["head"]["kernel"] + p["head"]["bias"][None, :],
                                                           y).mean()

  if bare:
    return params["dense"]["kernel"], lambda w: jnp.mean((jax.nn.relu(x @ w) - 0.5) ** 2)
  return params, loss


def _labels(params):
  return jax.tree.map(lambda x: "adam" if x.ndim >= 2 else "sgd", params)


def _trainable(params):
  return jax.tree.map(lambda x: x.ndim >= 2, params)


# name -> (inner optimizer factory, wrap(sparsified) -> what the user trains with)
OUTERMOST = lambda tx: tx  # noqa: E731
OPTIMIZERS = {
    "sgd": (lambda: optax.sgd(0.05), OUTERMOST),
    "momentum": (lambda: optax.sgd(0.05, momentum=0.9), OUTERMOST),
    "nesterov": (lambda: optax.sgd(0.05, momentum=0.9, nesterov=True), OUTERMOST),
    "adam": (lambda: optax.adam(1e-2), OUTERMOST),
    "adamw": (lambda: optax.adamw(1e-2, weight_decay=0.1), OUTERMOST),
    "lion": (lambda: optax.lion(1e-3), OUTERMOST),
    "adagrad": (lambda: optax.adagrad(0.05), OUTERMOST),  # its accumulator starts at 0.1, not 0
    "rmsprop": (lambda: optax.rmsprop(1e-2, initial_scale=0.5, momentum=0.9), OUTERMOST),
    "lamb": (lambda: optax.lamb(1e-2), OUTERMOST),
    "adafactor": (lambda: optax.adafactor(1e-2, min_dim_size_to_factor=8), OUTERMOST),  # factored moments
    "multi_transform": (lambda: optax.multi_transform({"adam": optax.adam(1e-2), "sgd": optax.sgd(0.05)}, _labels),
                        OUTERMOST),
    "masked": (lambda: optax.masked(optax.adam(1e-2), _trainable), OUTERMOST),
    "chain_clip_adamw": (lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-2)),
                         OUTERMOST),
    "inject_hyperparams": (lambda: optax.inject_hyperparams(optax.adam)(learning_rate=1e-2), OUTERMOST),
    "multisteps_outside": (lambda: optax.adam(1e-2), lambda tx: optax.MultiSteps(tx, every_k_schedule=2)),
    "multisteps_inside": (lambda: optax.MultiSteps(optax.adam(1e-2), every_k_schedule=2), OUTERMOST),
    "reduce_on_plateau": (lambda: optax.chain(optax.adam(1e-2), optax.contrib.reduce_on_plateau()), OUTERMOST),
    "lbfgs": (lambda: optax.lbfgs(), OUTERMOST),
}
PRUNERS = {
    "gmp": {"algorithm": "gmp", "target": 0.75, "begin_step": 1, "end_step": 9, "update_every": 2},
    "rigl": {"algorithm": "rigl", "target": 0.75, "begin_step": 1, "end_step": 11, "update_every": 2,
             "drop_fraction": 0.5, "drop_schedule": "constant"},
}


def _kernels(tree, bare):
  return [tree] if bare else [tree["dense"]["kernel"], tree["head"]["kernel"]]


def _sparse_state(opt_state):
  return transform._find(opt_state)


def _per_weight_leaves(state, masks):
  """(leaf index, mask) for every state leaf whose path ends with a prunable param's path and whose shape ends with
  its shape; written here independently of `transform.state_slots`."""
  layers = {tuple(p.split("/")): m for p, m in zip(sj.masks.mask_paths(masks), sj.masks.mask_leaves(masks))}
  out = []
  for j, (kp, x) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
    keys = sj.masks.path_keys(kp)
    for s in range(len(keys)):
      m = layers.get(keys[s:])
      if m is not None and np.shape(x)[np.ndim(x) - m.ndim:] == m.shape:
        out.append((j, m))
        break
  return out


def _reset(state, fresh_state, reset_masks):
  leaves, treedef = jax.tree.flatten(state)
  fresh = jax.tree.leaves(fresh_state)
  for j, m in _per_weight_leaves(state, reset_masks):
    leaves[j] = jnp.where(m, fresh[j], leaves[j]).astype(leaves[j].dtype)
  return treedef.unflatten(leaves)


def _and_not(a, b):
  return jax.tree.map(lambda x, y: None if x is None else x & ~y, a, b, is_leaf=lambda x: x is None)


# Optimizers whose state moves under zero gradients (rmsprop's initial_scale decays, adafactor adds eps, L-BFGS stores
# the params): for them the state of a weight not kept drifts from tx.init's between mask updates (it is set again
# before the weight's first real update if the weight is grown).
EVOLVING = ("rmsprop", "adafactor", "lbfgs")


@pytest.mark.parametrize("algorithm", sorted(PRUNERS))
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "lbfgs" else n
                                  for n in sorted(OPTIMIZERS)])
def test_optimizer_matrix(name, algorithm):
  """At every real update that changes masks the inner optimizer must see its own state with the weights not kept at
  this step, and at the next one the weights grown then (their first real update), set to exactly tx.init's values;
  at every real update, the gradients masked to the weights kept (a weight grown now waits one step). The test replays each update with the inner
  optimizer alone and compares the whole state. Tolerance: the replay is compiled separately, so XLA may order the
  few reductions (global norms, L-BFGS dot products) differently; a stale moment would differ by orders of magnitude
  more. For optimizers whose state does not move under zero gradients, the state of every weight not kept is
  compared exactly with tx.init's."""
  make_inner, wrap = OPTIMIZERS[name]
  params, loss = _problem()
  inner_tx = optax.with_extra_args_support(make_inner())
  pruner = sj.create_pruner(PRUNERS[algorithm])
  tx = wrap(sj.sparsify(make_inner(), pruner))
  params, state = sj.sparse_init(tx, params)
  traces = []

  def grads_and_extra(params):
    value, grads = jax.value_and_grad(loss)(params)
    return grads, {"value": value, "grad": grads, "value_fn": loss}

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads, extra = grads_and_extra(params)
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def replay(inner, params, keep, reset_masks):
    grads, extra = grads_and_extra(params)
    inner = _reset(inner, inner_tx.init(params), reset_masks)
    return inner_tx.update(sj.apply_masks(grads, keep), inner, params, **extra)[1]

  grown_total, checked = 0, 0
  for _ in range(STEPS * (2 if name == "multisteps_outside" else 1)):
    before = _sparse_state(state)
    real = name != "multisteps_outside" or int(state.mini_step) == 1  # MultiSteps: the micro-step that updates
    new_params, state = step(params, state)
    after = _sparse_state(state)
    for w, m in zip(_kernels(new_params, False), _kernels(sj.get_masks(state), False)):
      assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0), "a pruned weight is not exactly 0"
    if real:
      keep = jax.tree.map(lambda a, b: None if a is None else a & b, before.pruner.masks, after.pruner.masks,
                          is_leaf=lambda x: x is None)
      not_kept = jax.tree.map(lambda k: None if k is None else ~k, keep, is_leaf=lambda x: x is None)
      count = int(before.count)
      first_real = (count > 0 and bool(pruner.is_update(count - 1))) or bool(before.pending)
      changing = bool(pruner.is_update(count)) or first_real  # the steps at which sparsify resets state
      reset_masks = jax.tree.map(lambda n, f: None if n is None else (n | (f & first_real)) & changing, not_kept,
                                 before.fresh, is_leaf=lambda x: x is None)
      if name != "multisteps_outside":  # the replay needs the accumulated gradient there; the zeros check suffices
        expected = replay(before.inner, params, keep, reset_masks)
        for a, b in zip(jax.tree.leaves(after.inner), jax.tree.leaves(expected)):
          np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-7)
        checked += 1
      grown = _and_not(after.pruner.masks, before.pruner.masks)
      grown_total += sum(int(np.sum(np.asarray(g))) for g in sj.masks.mask_leaves(grown))
      fresh = jax.tree.leaves(inner_tx.init(params))
      leaves = jax.tree.leaves(after.inner)
      for j, m in _per_weight_leaves(after.inner, not_kept if name not in EVOLVING else {}):
        unkept = np.broadcast_to(np.asarray(m), np.shape(leaves[j]))
        np.testing.assert_array_equal(np.asarray(leaves[j])[unkept], np.asarray(fresh[j])[unkept])
    params = new_params
    assert bool(jnp.isfinite(loss(params)))
  assert len(traces) == 1
  assert sj.summary(sj.get_masks(state), params)["total"]["sparsity"] >= 0.75 - 1e-9
  assert int(sj.get_step(state)) == STEPS  # MultiSteps outside: the schedule counted real updates
  assert checked == STEPS or name == "multisteps_outside"
  if algorithm == "rigl":
    assert grown_total > 0


def test_adagrad_regrown_accumulator_is_its_initial_value():
  """Found by path and shape and reset to tx.init's 0.1, not 0 (which adagrad would divide by)."""
  params, loss = _problem()
  tx = sj.sparsify(optax.adagrad(0.05, initial_accumulator_value=0.1), sj.create_pruner(PRUNERS["rigl"]))
  params, state = sj.sparse_init(tx, params)
  update = jax.jit(tx.update)
  for _ in range(4):
    updates, state = update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  nu = state.inner[0].sum_of_squares["dense"]["kernel"]
  pruned = ~np.asarray(sj.get_masks(state)["dense"]["kernel"])
  np.testing.assert_array_equal(np.asarray(nu)[pruned], np.float32(0.1))


@pytest.mark.parametrize("algorithm", sorted(PRUNERS))
def test_params_that_are_one_bare_array(algorithm):
  w, loss = _problem(bare=True)
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner(PRUNERS[algorithm]))
  w, state = sj.sparse_init(tx, w)
  step = jax.jit(lambda w, s: (lambda u_s: (optax.apply_updates(w, u_s[0]), u_s[1]))(
      tx.update(jax.grad(loss)(w), s, w)))
  for _ in range(STEPS):
    w, state = step(w, state)
    m = np.asarray(sj.get_masks(state))
    assert np.all(np.asarray(w)[~m] == 0)
    mu, nu = state.inner[0].mu, state.inner[0].nu
    assert np.all(np.asarray(mu)[~m] == 0) and np.all(np.asarray(nu)[~m] == 0)
  assert m.mean() == pytest.approx(0.25)


def test_set_masks_with_none_leaves_in_params():
  params, loss = _problem()
  params = {**params, "frozen": None}
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner({"algorithm": "dense"}))
  state = tx.init(params)
  masks = sj.get_masks(state)
  masks = jax.tree.map(lambda m: m, masks, is_leaf=lambda x: x is None)
  masks["dense"]["kernel"] = masks["dense"]["kernel"].at[:6].set(False)
  state = sj.set_masks(state, masks)
  grads = jax.grad(lambda p: loss({k: v for k, v in p.items() if k != "frozen"}))(params)
  params = sj.apply_masks(params, masks)
  updates, state = jax.jit(tx.update)(grads, state, params)
  params = optax.apply_updates(params, updates)
  assert np.all(np.asarray(params["dense"]["kernel"])[:6] == 0) and params["frozen"] is None


def test_adafactor_factored_moments_are_left_as_shared_statistics():
  params, _ = _problem()
  inner = optax.adafactor(1e-2, min_dim_size_to_factor=8)
  tx = sj.sparsify(inner, sj.create_pruner(PRUNERS["gmp"]))
  state = tx.init(params)
  slots = transform.state_slots(state.inner, sj.get_masks(state))
  shapes = {np.shape(jax.tree.leaves(state.inner)[s.leaf]) for s in slots}
  # (12, 16) is factored into row and column statistics (no per-weight leaf of its shape); (16, 4) has a dimension
  # under 8, so it keeps a full second moment, which is per-weight.
  assert (12, 16) not in shapes and (16, 4) in shapes


def _sgd_step(tx, loss):
  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state
  return step


@pytest.mark.parametrize("check", ["raise", "record"])
@pytest.mark.parametrize("compose", ["chain_after", "lookahead"])
def test_compositions_after_sparsify_are_refused(compose, check):
  params, loss = _problem()
  sparse = sj.sparsify(optax.sgd(0.05), sj.create_pruner({"algorithm": "oneshot", "target": 0.5, "begin_step": 1}),
                       check=check)
  if compose == "chain_after":
    tx = optax.chain(sparse, optax.scale(0.5))
    init = params
  else:
    tx = optax.lookahead(sparse, sync_period=2, slow_step_size=0.5)
    init = optax.LookaheadParams.init_synced(params)
  state = tx.init(init)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params.fast if compose == "lookahead" else params), state, params)
    return optax.apply_updates(params, updates), state

  with pytest.raises(Exception, match="nonzero at pruned weights.*outermost|nonzero at pruned weights"):
    for _ in range(6):
      init, state = step(init, state)
      jax.block_until_ready(init)
    sj.check_pruned(state)  # check="record": the steps ran, and the host check raises what they found


def test_lookahead_inside_sparsify_is_refused():
  params, _ = _problem()
  tx = sj.sparsify(optax.lookahead(optax.sgd(0.1), 2, 0.5), sj.create_pruner({"algorithm": "gmp", "end_step": 4}))
  with pytest.raises(ValueError, match="cannot wrap optax.lookahead"):
    tx.init(optax.LookaheadParams.init_synced(params))


@pytest.mark.parametrize("algorithm", ["random", pytest.param("set", marks=pytest.mark.slow), "rigl",
                                       pytest.param("granet", marks=pytest.mark.slow)])
def test_a_sparse_start_is_masked_before_the_first_step(algorithm):
  params, loss = _problem()
  cfg = {"algorithm": algorithm, "target": 0.8, "end_step": 10, "update_every": 2}
  if algorithm == "granet":
    cfg.update(initial="sparse", initial_sparsity=0.5, target=0.9)
  tx = sj.sparsify(optax.sgd(0.05), sj.create_pruner(cfg))
  masked, state = sj.sparse_init(tx, params)
  masks = sj.get_masks(state)
  summary = sj.summary(masks, masked)
  assert summary["total"]["sparsity"] == sj.summary(masks)["total"]["sparsity"] > 0.4
  with pytest.raises(Exception, match="nonzero at pruned weights"):  # dense params with sparse masks are refused
    jax.block_until_ready(_sgd_step(tx, loss)(params, state))
  params, state = _sgd_step(tx, loss)(masked, state)  # and the masked start trains


def test_the_engine_starts_sparse_runs_from_masked_params():
  from sparsejax import models, steps
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "rigl", "target": 0.9, "end_step": 10}))
  state = steps.init_state(models.create_model("mlp", 4), tx, (8,), jax.random.key(0))
  summary = sj.summary(sj.get_masks(state.opt_state), state.params)
  assert summary["total"]["sparsity"] == pytest.approx(0.9, abs=0.01)


def test_extra_args_reach_the_inner_optimizer():
  params, loss = _problem()
  tx = sj.sparsify(optax.chain(optax.sgd(0.1), optax.contrib.reduce_on_plateau(patience=1, factor=0.5)),
                   sj.create_pruner({"algorithm": "dense"}))
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  state = tx.init(params)
  for _ in range(4):  # a constant value: no improvement, so the plateau halves the scale
    _, state = tx.update(jax.grad(loss)(params), state, params, value=jnp.float32(1.0))
  assert float(state.inner[1].scale) < 1.0


def test_record_keeps_host_callbacks_out_of_the_step_and_raises_on_the_host():
  params, loss = _problem()
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 4, "update_every": 2})
  steps = {c: _sgd_step(sj.sparsify(optax.sgd(0.05), pruner, check=c), loss) for c in ("raise", "record")}
  tx = sj.sparsify(optax.sgd(0.05), pruner, check="record")
  params, state = sj.sparse_init(tx, params)
  hlo = {c: f.lower(params, state).as_text() for c, f in steps.items()}
  assert "python_cpu_callback" in hlo["raise"] and "callback" not in hlo["record"]
  for _ in range(6):  # pruned by the schedule, every update clean
    params, state = steps["record"](params, state)
  assert sj.check_pruned(state) is None
  assert state.violations.shape == (3,) and not np.asarray(state.violations).any()  # 2 kernels, and "uninstalled"
  # a pruned weight revived behind sparsify's back is found by the next update and named by the host check
  pruned = tuple(np.argwhere(~np.asarray(sj.get_masks(state)["dense"]["kernel"]))[0])
  params["dense"]["kernel"] = params["dense"]["kernel"].at[pruned].set(1.0)
  params, state = steps["record"](params, state)
  assert np.asarray(state.violations).tolist() == [True, False, False]
  with pytest.raises(ValueError, match=r"nonzero at pruned weights in \['dense/kernel'\]"):
    sj.check_pruned(state)


def test_check_must_be_raise_or_record():
  with pytest.raises(ValueError, match="check='warn'; accepted values: 'raise', 'record'"):
    sj.sparsify(optax.sgd(0.1), sj.create_pruner({}), check="warn")
