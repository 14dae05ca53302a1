"""SET, RigL, GraNet and movement pruning: hand-computed updates, exact counts, zero-started growth, no re-trace."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj

W = np.array([[0.9, -0.1, 0.0, 0.5],
              [0.0, 0.7, -0.3, 0.0],
              [-0.2, 0.0, 0.8, 0.0],
              [0.0, 0.6, 0.0, 0.0]], np.float32)
# |grad|: the just-dropped (0, 1) is largest, then (2, 3); the kept (1, 1) has a larger one but is not a candidate.
G = np.array([[0.0, 5.0, 0.1, 0.0],
              [-2.0, 9.0, 0.0, 0.3],
              [0.0, 0.2, -0.05, -3.0],
              [1.0, 0.0, 0.0, 0.0]], np.float32)
# Kept before: the 8 nonzeros of W. Drop round(0.25 * 8) = 2 smallest: -0.1 at (0, 1) and -0.2 at (2, 0). Grow 2 by
# |grad| among the 10 others: (0, 1) with 5 and (2, 3) with 3.
RIGL_EXPECTED = np.array([[1, 1, 0, 1],
                          [0, 1, 1, 0],
                          [0, 0, 1, 1],
                          [0, 1, 0, 0]], bool)


def _layer_update(algorithm, **fields):
  cfg = {"algorithm": algorithm, "target": 0.5, "end_step": 100, "update_every": 10, "drop_fraction": 0.25,
         "drop_schedule": "constant", "init_distribution": "uniform", **fields}
  pruner = sj.create_pruner(cfg)
  params = {"layer": {"kernel": jnp.asarray(W), "bias": jnp.ones(4)}}
  grads = {"layer": {"kernel": jnp.asarray(G), "bias": jnp.ones(4)}}
  state = pruner.init(params)._replace(masks={"layer": {"kernel": jnp.asarray(W != 0), "bias": None}})
  assert bool(pruner.is_update(10))
  return jax.jit(pruner.update)(params, grads, state, jnp.int32(10)), state


def test_rigl_update_matches_hand_computation():
  new, _ = _layer_update("rigl")
  np.testing.assert_array_equal(np.asarray(new.masks["layer"]["kernel"]), RIGL_EXPECTED)
  assert new.masks["layer"]["bias"] is None


def test_set_update_keeps_survivors_and_grows_at_random():
  new, old = _layer_update("set")
  mask = np.asarray(new.masks["layer"]["kernel"])
  survivors = (W != 0) & (np.abs(W) > 0.2)
  assert mask.sum() == 8 and np.all(mask[survivors])
  np.testing.assert_array_equal(np.asarray(new.rng), np.asarray(old.rng))  # the key is the seed's, never advanced


def test_set_growth_is_a_function_of_seed_and_step():
  """Issue 10 item 5: every host (and a resumed run) draws SET's growth from fold_in(PRNGKey(seed), step), so the
  same state at the same step grows the same positions, and another step or seed grows others."""
  cfg = {"algorithm": "set", "target": 0.5, "end_step": 1000, "update_every": 10, "drop_fraction": 0.5,
         "drop_schedule": "constant", "init_distribution": "uniform"}
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(64, 64)), jnp.float32)}
  update = {}
  for seed in (0, 1):
    pruner = sj.create_pruner({**cfg, "seed": seed})
    update[seed] = (jax.jit(pruner.update), pruner.init(params))
  masks = lambda seed, step: np.asarray(update[seed][0](params, params, update[seed][1], jnp.int32(step)).masks["w"])
  np.testing.assert_array_equal(masks(0, 20), masks(0, 20))
  assert not np.array_equal(masks(0, 20), masks(0, 30))
  assert not np.array_equal(masks(0, 20), masks(1, 20))
  # By hand: keep the 1024 largest |w| of the current mask, grow the 1024 largest noise values of fold_in(key, 20)
  # among the other positions (the dropped ones included, as the code and RigL's reference do).
  key = jax.random.fold_in(update[0][1].rng, 20)
  noise = np.asarray(sj.scores.uniform_noise(key, [(64, 64)])[0]).ravel()
  current = np.asarray(update[0][1].masks["w"]).ravel()
  w = np.abs(np.asarray(params["w"])).ravel()
  survive = np.zeros(w.size, bool)
  survive[np.argsort(-np.where(current, w, -1.0), kind="stable")[:1024]] = True
  grown = np.zeros(w.size, bool)
  grown[np.argsort(-np.where(survive, -1.0, noise), kind="stable")[:1024]] = True
  np.testing.assert_array_equal(masks(0, 20).ravel(), survive | grown)


@pytest.mark.parametrize("schedule,steps", [("cosine", (0, 30, 70)), ("linear", (40,)), ("constant", (90,))])
def test_drop_count_follows_the_schedule(schedule, steps):
  alpha, end = 0.3, 100
  pruner = sj.create_pruner({"algorithm": "rigl", "target": 0.6, "end_step": end, "update_every": 10,
                             "drop_fraction": alpha, "drop_schedule": schedule, "init_distribution": "uniform"})
  w = jnp.arange(1.0, 101.0).reshape(10, 10)
  state = pruner.init({"w": w})
  kept = np.asarray(state.masks["w"])
  # Gradients only off the mask, all distinct: nothing dropped can come back, so exactly n_drop entries move.
  grads = {"w": jnp.asarray(np.where(kept, 0.0, np.arange(100.0).reshape(10, 10) + 1))}
  update = jax.jit(pruner.update)
  for t in steps:
    frac = {"cosine": alpha / 2 * (1 + math.cos(math.pi * t / end)), "linear": alpha * (1 - t / end),
            "constant": alpha}[schedule]
    new = np.asarray(update({"w": w}, grads, state, jnp.int32(t)).masks["w"])
    assert kept.sum() == 40 and new.sum() == 40
    assert (kept & ~new).sum() == round(frac * 40), t


def _problem():
  k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
  params = {"dense_0": {"kernel": jax.random.normal(k1, (12, 16)), "bias": jnp.zeros(16)},
            "head": {"kernel": jax.random.normal(k2, (16, 4)), "bias": jnp.zeros(4)}}
  x = jax.random.normal(k3, (32, 12))
  y = jnp.arange(32) % 4

  def loss(p):
    h = jax.nn.relu(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"][None, :])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["head"]["kernel"] + p["head"]["bias"][None, :],
                                                           y).mean()
  return params, loss


def _run(cfg, steps, on_step):
  """Train with sparsify(adam); on_step(t, params, state, previous_masks) after every step; returns the trace count."""
  params, loss = _problem()
  tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner(cfg))
  params, state = sj.sparse_init(tx, params)  # a sparse start: step 0 sees the masked weights
  traces = []

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for t in range(steps):
    previous = sj.get_masks(state)
    params, state = step(params, state)
    on_step(t, params, state, previous)
  return len(traces)


def _kernels(tree):
  return [np.asarray(tree["dense_0"]["kernel"]), np.asarray(tree["head"]["kernel"])]


@pytest.mark.parametrize("algorithm", [pytest.param("set", marks=pytest.mark.slow), "rigl"])
def test_dst_counts_exact_grown_weights_and_adam_moments_zero(algorithm):
  cfg = {"algorithm": algorithm, "target": 0.75, "end_step": 12, "update_every": 3, "drop_fraction": 0.5,
         "init_distribution": "uniform"}
  counts, changed = [round(0.25 * 192), round(0.25 * 64)], []

  def check(t, params, state, previous):
    masks, adam = _kernels(sj.get_masks(state)), state.inner[0]
    old = _kernels(previous)
    for m, o, w, mu, nu, n in zip(masks, old, _kernels(params), _kernels(adam.mu), _kernels(adam.nu), counts):
      assert m.sum() == n, (t, "per-layer count changed")
      assert np.all(w[~m] == 0)
      grown = m & ~o
      if t >= 12:
        assert not grown.any() and np.array_equal(m, o), "no updates at or after end_step"
      assert np.all(w[grown] == 0) and np.all(mu[grown] == 0) and np.all(nu[grown] == 0), t
      changed.append(grown.sum())

  assert _run(cfg, 16, check) == 1  # four mask updates, one trace
  assert sum(changed) > 0


def _cubic(t, s_i, s_f, t0, t1, dt):
  if t < t0:
    return s_i
  done = min((t - t0) // dt * dt, t1 - t0) if t < t1 else t1 - t0
  return s_f + (s_i - s_f) * (1 - done / (t1 - t0)) ** 3


@pytest.mark.parametrize("initial,s_i", [("dense", 0.0), ("sparse", 0.5)])
def test_granet_follows_cubic_schedule_and_regrows(initial, s_i):
  cfg = {"algorithm": "granet", "target": 0.9, "initial": initial, "initial_sparsity": s_i, "begin_step": 2,
         "end_step": 14, "update_every": 4, "regrow_end_step": 22, "drop_fraction": 0.5, "distribution": "global",
         "drop_schedule": "constant"}
  total, seen = 192 + 64, {"regrown_after_end": 0}

  def check(t, params, state, previous):
    masks, old = _kernels(sj.get_masks(state)), _kernels(previous)
    nnz = sum(int(m.sum()) for m in masks)
    if t == 0 and initial == "sparse":
      erk = sj.distributions.layer_sparsities("erk", {"a": (12, 16), "b": (16, 4)}, s_i)
      assert [int(m.sum()) for m in masks] == [round((1 - erk["a"]) * 192), round((1 - erk["b"]) * 64)]
    if t >= 6:  # after the first scheduled prune every count is the schedule's
      assert nnz == round((1 - _cubic(t, s_i, 0.9, 2, 14, 4)) * total), t
    if t > 14:
      assert [int(m.sum()) for m in masks] == [int(o.sum()) for o in old]
      seen["regrown_after_end"] += sum(int((m & ~o).sum()) for m, o in zip(masks, old))
    for m, w in zip(masks, _kernels(params)):
      assert np.all(w[~m] == 0)

  assert _run(cfg, 26, check) == 1
  assert seen["regrown_after_end"] > 0  # regeneration continues until regrow_end_step


@pytest.mark.slow
def test_rigl_block_granularity_keeps_whole_blocks():
  cfg = {"algorithm": "rigl", "target": 0.5, "end_step": 9, "update_every": 3, "granularity": "block:4x4",
         "init_distribution": "uniform", "prunable": ["kernel"]}

  def check(t, params, state, previous):
    del params, previous
    for m in _kernels(sj.get_masks(state)):
      blocks = m.reshape(m.shape[0] // 4, 4, m.shape[1] // 4, 4)
      assert np.all(blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3)))
      assert m.sum() == m.size // 2, t

  assert _run(cfg, 10, check) == 1


def test_movement_accumulates_minus_w_g_and_prunes_to_top_k():
  params, loss = _problem()
  cfg = {"algorithm": "movement", "target": 0.5, "begin_step": 3, "end_step": 6, "update_every": 3}
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner(cfg))
  state, expected, update = tx.init(params), [np.zeros((12, 16)), np.zeros((16, 4))], jax.jit(tx.update)
  for t in range(7):
    grads = jax.grad(loss)(params)
    for s, w, g in zip(expected, _kernels(params), _kernels(grads)):  # the step's weights, before its update
      s -= w * g
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    for s, got in zip(expected, _kernels(state.pruner.extra)):
      np.testing.assert_allclose(got, s, rtol=1e-5, atol=1e-6)
  for s, m, w in zip(expected, _kernels(sj.get_masks(state)), _kernels(params)):  # step 6 pruned to the target
    kth = np.sort(s.ravel())[::-1][m.size // 2 - 1]
    assert m.sum() == m.size // 2
    np.testing.assert_array_equal(m, s >= kth)
    assert np.all(w[~m] == 0)


def test_movement_counts_follow_the_schedule_and_are_monotone():
  cfg = {"algorithm": "movement", "target": 0.8, "begin_step": 1, "end_step": 9, "update_every": 2,
         "distribution": "erk"}
  erk = sj.distributions.layer_sparsities("erk", {"a": (12, 16), "b": (16, 4)}, 0.8)

  def check(t, params, state, previous):
    s_t = _cubic(t, 0.0, 0.8, 1, 9, 2)
    for m, o, w, s_l in zip(_kernels(sj.get_masks(state)), _kernels(previous), _kernels(params), erk.values()):
      assert m.sum() == round((1 - s_l * s_t / 0.8) * m.size), t
      assert not np.any(m & ~o) and np.all(w[~m] == 0)

  assert _run(cfg, 12, check) == 1


BAD = [
    ({"algorithm": "rigl", "granularity": "2:4"}, "granularity.*not supported by 'rigl'"),
    ({"algorithm": "set", "distribution": "global"}, "distribution.*'global' does not apply"),
    ({"algorithm": "granet", "initial": "sparse"}, "initial_sparsity must be > 0"),
    ({"algorithm": "granet", "initial_sparsity": 0.95}, "initial_sparsity=0.95 must be <= target"),
    ({"algorithm": "granet", "regrow_end_step": 0}, "regrow_end_step"),
    ({"algorithm": "granet", "initial": "half"}, "initial.*not one of"),
    ({"algorithm": "rigl", "drop_schedule": "exp"}, "drop_schedule.*not one of"),
    ({"algorithm": "movement", "end_step": 0}, "end_step.*must be > begin_step"),
]


@pytest.mark.parametrize("fields,message", BAD)
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    sj.create_pruner({"target": 0.5 if "2:4" in str(fields) else 0.9, "end_step": 100, **fields})
