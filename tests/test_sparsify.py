"""sparsify(): one call per step, pruned weights exactly 0 with every optimizer, no re-trace, config validation."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj

OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.05),
    "momentum": lambda: optax.sgd(0.05, momentum=0.9),
    "adam": lambda: optax.adam(1e-2),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-3),
                                 optax.sgd(0.05, momentum=0.9, nesterov=True)),
}


def _problem():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"dense_0": {"kernel": jax.random.normal(k1, (12, 16)), "bias": jnp.zeros(16)},
            "head": {"kernel": jax.random.normal(k2, (16, 3)), "bias": jnp.zeros(3)}}
  x = jax.random.normal(k3, (32, 12))
  y = jnp.arange(32) % 3

  def loss(p):
    h = jax.nn.relu(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"][None, :])
    logits = h @ p["head"]["kernel"] + p["head"]["bias"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return params, loss


def _make_step(tx, loss, traces):
  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _assert_pruned_zero(params, masks):
  for m, p in zip(sj.masks.mask_leaves(masks), [params["dense_0"]["kernel"], params["head"]["kernel"]]):
    assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
@pytest.mark.parametrize("algorithm", ["oneshot", "gmp"])
def test_pruned_weights_exactly_zero_every_step(opt, algorithm):
  params, loss = _problem()
  cfg = {"algorithm": algorithm, "target": 0.8, "begin_step": 2, "end_step": 12, "update_every": 2}
  tx = sj.sparsify(OPTIMIZERS[opt](), sj.create_pruner(cfg))
  state, traces = tx.init(params), []
  step = _make_step(tx, loss, traces)
  previous = None
  for t in range(16):
    params, state = step(params, state)
    masks = sj.get_masks(state)
    _assert_pruned_zero(params, masks)
    if previous is not None:  # monotone: nothing pruned comes back
      for old, new in zip(sj.masks.mask_leaves(previous), sj.masks.mask_leaves(masks)):
        assert not np.any(np.asarray(new) & ~np.asarray(old))
    previous = masks
  assert sj.summary(masks, params)["total"]["sparsity"] == pytest.approx(0.8, abs=1 / 240)
  assert len(traces) == 1  # every mask update ran inside the one compiled step
  assert bool(jnp.isfinite(loss(params)))


def test_gmp_counts_follow_the_cubic_schedule():
  params, loss = _problem()
  t0, dt, n, target = 3, 4, 5, 0.9
  pruner = sj.create_pruner({"algorithm": "gmp", "target": target, "begin_step": t0, "end_step": t0 + n * dt,
                             "update_every": dt})
  tx = sj.sparsify(optax.sgd(0.01), pruner)
  state, traces = tx.init(params), []
  step = _make_step(tx, loss, traces)
  for t in range(t0 + n * dt + 3):
    params, state = step(params, state)
    s_t = target + (0 - target) * (1 - min(max((t - t0) // dt, 0), n) / n) ** 3 if t >= t0 else 0.0
    layers = sj.summary(sj.get_masks(state), params)["layers"]
    for path, d in layers.items():
      assert d["nnz"] == round((1 - s_t) * d["size"]), (t, path)
  assert len(traces) == 1


def test_update_after_pruning_keeps_optimizer_moments_zero():
  params, loss = _problem()
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner({"algorithm": "oneshot", "target": 0.5, "begin_step": 3}))
  state = tx.init(params)
  step = _make_step(tx, loss, [])
  for _ in range(6):
    params, state = step(params, state)
  adam = state.inner[0]
  pruned = ~np.asarray(sj.get_masks(state)["dense_0"]["kernel"])
  assert np.all(np.asarray(adam.mu["dense_0"]["kernel"])[pruned] == 0)
  assert np.all(np.asarray(adam.nu["dense_0"]["kernel"])[pruned] == 0)


def test_dense_pruner_is_plain_optax():
  params, loss = _problem()
  ref_tx, tx = optax.adam(1e-2), sj.sparsify(optax.adam(1e-2), sj.create_pruner({"algorithm": "dense"}))
  ref_state, state = ref_tx.init(params), tx.init(params)
  p_ref, p = params, params
  for _ in range(3):
    u, ref_state = ref_tx.update(jax.grad(loss)(p_ref), ref_state, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
    u, state = tx.update(jax.grad(loss)(p), state, p)
    p = optax.apply_updates(p, u)
  jax.tree.map(np.testing.assert_array_equal, p, p_ref)


def test_set_masks_does_not_retrace():
  params, loss = _problem()
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "dense"}))
  state, traces = tx.init(params), []
  step = _make_step(tx, loss, traces)
  params, state = step(params, state)
  masks = jax.tree.map(lambda m: None if m is None else m.at[0].set(False), sj.get_masks(state),
                       is_leaf=lambda x: x is None)
  state = sj.set_masks(state, masks)
  params = sj.apply_masks(params, masks)
  params, state = step(params, state)
  assert len(traces) == 1
  assert float(jnp.abs(params["head"]["kernel"][0]).sum()) == 0.0
  assert int(sj.get_step(state)) == 2


BAD_CONFIGS = [
    ({"algorithm": "magic"}, "algorithm.*not one of"),
    ({"distribution": "normal"}, "distribution.*not one of"),
    ({"granularity": "3-4"}, "granularity.*not one of"),
    ({"granularity": "block:4"}, "granularity.*not one of"),
    ({"granularity": "5:4"}, "granularity"),
    ({"granularity": "2:4", "target": 0.9}, "target.*1 - n/m"),
    ({"target": 1.0}, "target"),
    ({"target": -0.1}, "target"),
    ({"begin_step": 10, "end_step": 5}, "end_step"),
    ({"begin_step": 10, "end_step": 10}, "end_step.*must be > begin_step"),
    ({"update_every": 0}, "update_every"),
    ({"prunable": ["(unclosed"]}, "prunable.*bad regex"),
    ({"tartget": 0.5}, "tartget: unknown field .did you mean target"),
    ({"distribution": "global", "target": 0.9, "min_density": 0.2}, "min_density"),
]


@pytest.mark.parametrize("fields,message", BAD_CONFIGS)
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    sj.create_pruner({"algorithm": "gmp", "end_step": 100, **fields})


def test_errors_that_need_params_come_at_init():
  params, _ = _problem()
  with pytest.raises(ValueError, match="prunable.*matches no floating-point param"):
    sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "prunable": ["nope"]})).init(params)
  with pytest.raises(ValueError, match="nm_axis=2 on layer dense_0/kernel"):
    sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "granularity": "2:4", "target": 0.5,
                                                  "nm_axis": 2})).init(params)
  with pytest.raises(ValueError, match="block:5x5.*dense_0/kernel"):
    sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "granularity": "block:5x5"})).init(params)


def test_config_dict_accepted():
  import ml_collections
  cfg = ml_collections.ConfigDict({"algorithm": "gmp", "target": 0.5, "end_step": 10})
  assert sj.create_pruner(cfg).config["target"] == 0.5


def test_set_masks_resets_the_moments_of_pruned_weights_at_the_next_update():
  params, loss = _problem()
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner({"algorithm": "dense"}))
  state = tx.init(params)
  step = _make_step(tx, loss, [])
  for _ in range(2):
    params, state = step(params, state)
  kernel = np.asarray(sj.get_masks(state)["dense_0"]["kernel"]).copy()
  kernel[0] = False
  masks = jax.tree.map(lambda m: m, sj.get_masks(state), is_leaf=lambda x: x is None)
  masks["dense_0"]["kernel"] = jnp.asarray(kernel)
  state = sj.set_masks(state, masks)
  assert bool(state.pending)
  params, state = step(sj.apply_masks(params, masks), state)
  adam = state.inner[0]
  assert not bool(state.pending)  # the update consumed it
  assert np.all(np.asarray(adam.mu["dense_0"]["kernel"])[0] == 0)
  assert np.all(np.asarray(adam.nu["dense_0"]["kernel"])[0] == 0)
  assert np.all(np.asarray(adam.mu["dense_0"]["kernel"])[1:] != 0)  # kept weights keep their moments
  assert np.all(np.asarray(params["dense_0"]["kernel"])[0] == 0)


@pytest.mark.parametrize("selection", ["auto", "per_layer"])
@pytest.mark.parametrize("algorithm", ["gmp", "movement", "rigl"])
def test_scores_are_computed_only_inside_the_mask_update(algorithm, selection):
  """Between updates a step must not pay for a selection: no uint32 sort keys of a kernel's shape may be computed in
  the top-level program (XLA hoists loop-invariant work out of loops unless it is tied to the loop)."""
  params, loss = _problem()
  cfg = {"algorithm": algorithm, "target": 0.5, "end_step": 10, "update_every": 2, "selection": selection}
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner(cfg))
  hlo = _make_step(tx, loss, []).lower(params, tx.init(params)).compile().as_text()
  entry = _entry(hlo)
  assert max(_sizes("u32", entry), default=0) <= 4  # PRNG keys at most, no sort keys of the weights
  assert max(_sizes("u32", hlo)) >= 12 * 16  # the keys exist, inside the update's sub-computation
  # nor positions or layer ids (int32, built from iotas: loop-invariant, they were once hoisted and built every step)
  assert max(_sizes("s32", entry), default=0) < 12 * 16


def _entry(hlo: str) -> str:
  """The top-level computation of a compiled module's text."""
  entry = hlo[hlo.index("ENTRY"):]
  return entry[:entry.index("\n}\n")]


def _size(dims: str) -> int:
  return int(np.prod([int(d) for d in dims.split(",") if d]))


def _sizes(dtype: str, text: str) -> list:
  """Element counts of every array of `dtype` named in HLO text."""
  return [_size(dims) for dims in re.findall(dtype + r"\[([\d,]*)\]", text)]


def _entry_copies(tx, params, loss):
  """(dtype, size) of the arrays that the compiled step's top level copies, buffers donated as the launcher does."""
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state
  hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params)).compile().as_text()
  return sorted((dtype, _size(dims)) for dtype, dims in re.findall(r"= (\w+)\[([\d,]*)\]\S* copy\(", _entry(hlo)))


@pytest.mark.parametrize("check", ["raise", "record"])
@pytest.mark.parametrize("algorithm", ["gmp", "rigl", "imp", "random"])
def test_a_step_copies_no_param_or_mask_more_than_the_dense_step(algorithm, check):
  """Buffers donated, XLA updates params, masks and moments in place, unless a read of the old value is not ordered
  before the write: the zero check read params and masks unordered, and XLA copied both at every step (1.10-1.15x
  dense for Adam on an MLP 784-1024-10). Pruners that grow (rigl) still copy the bool masks of the weights grown
  at the last update: the step reads them after the mask update has written the new ones."""
  params, loss = _problem()
  cfg = {"algorithm": algorithm, "target": 0.5, "end_step": 10, "update_every": 2}
  dense = _entry_copies(optax.adam(1e-2), params, loss)
  pruner = sj.create_pruner(cfg)
  sparse = _entry_copies(sj.sparsify(optax.adam(1e-2), pruner, check=check), params, loss)
  big = lambda copies: [c for c in copies if c[1] >= 16 * 3 and not (pruner.grows and c[0] == "pred")]  # noqa: E731
  assert not collections.Counter(big(sparse)) - collections.Counter(big(dense))  # none that the dense step has not
  if pruner.grows:
    assert len([c for c in sparse if c[0] == "pred" and c[1] >= 16 * 3]) <= 4  # two per layer at most
