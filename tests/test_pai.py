"""Pruning at initialisation: SNIP, GraSP and SynFlow scores against numpy by hand, masks, distributions, sparsify."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import scores

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(3, 4)).astype(np.float32)
W2 = RNG.normal(size=(4, 3)).astype(np.float32)
B2 = np.array([0.1, -0.2, 0.3], np.float32)
BATCHES = [(RNG.normal(size=(6, 3)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2], np.int32)),
           (RNG.normal(size=(6, 3)).astype(np.float32), np.array([2, 2, 1, 0, 0, 1], np.int32))]
PARAMS = {"w1": jnp.asarray(W1), "w2": jnp.asarray(W2), "b2": jnp.asarray(B2)}
PRUNABLE = {"w1": jnp.ones((3, 4), bool), "w2": jnp.ones((4, 3), bool), "b2": None}


def apply_fn(p, x):
  return x @ p["w1"] @ p["w2"] + p["b2"][None, :]


def np_grads(w1, w2, x, y, temperature=1.0):
  """dL/dw1, dL/dw2 of the mean cross-entropy of (x w1 w2 + b2) / T, by the chain rule in float64."""
  h = x @ w1
  z = (h @ w2 + B2) / temperature
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  dz = (p - np.eye(3)[y]) / (len(y) * temperature)
  return x.T @ (dz @ w2.T), h.T @ dz


def np_mean_grads(w1, w2, temperature=1.0):
  g = [np_grads(w1.astype(np.float64), w2.astype(np.float64), x, y, temperature) for x, y in BATCHES]
  return [sum(gi[k] for gi in g) / len(g) for k in range(2)]


def test_snip_scores_equal_hand_computed():
  g1, g2 = np_mean_grads(W1, W2)
  got = scores.snip(scores.cross_entropy(apply_fn), PARAMS, BATCHES, PRUNABLE)
  np.testing.assert_allclose(got["w1"], np.abs(g1 * W1), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(got["w2"], np.abs(g2 * W2), rtol=1e-4, atol=1e-7)
  assert got["b2"] is None


def np_hessian_gradient(temperature):
  """H g by central differences of the hand gradient along g, per batch, averaged (float64)."""
  g1, g2 = np_mean_grads(W1, W2, temperature)
  eps, out = 1e-4, [0.0, 0.0]
  for x, y in BATCHES:
    plus = np_grads(W1 + eps * g1, W2 + eps * g2, x, y, temperature)
    minus = np_grads(W1 - eps * g1, W2 - eps * g2, x, y, temperature)
    out = [o + (p - m) / (2 * eps) / len(BATCHES) for o, p, m in zip(out, plus, minus)]
  return out


def test_grasp_scores_equal_hand_computed():
  h1, h2 = np_hessian_gradient(2.0)
  got = scores.grasp(scores.cross_entropy(apply_fn, 2.0), PARAMS, BATCHES, PRUNABLE)
  np.testing.assert_allclose(got["w1"], W1 * h1, rtol=2e-3, atol=1e-6)
  np.testing.assert_allclose(got["w2"], W2 * h2, rtol=2e-3, atol=1e-6)


def test_grasp_removes_the_weights_whose_removal_keeps_gradient_flow():
  """The paper removes the highest S = -w * Hg ~ half the change of ||g||^2 when the weight is removed."""
  pruner = sj.create_pruner({"algorithm": "grasp", "target": 0.5, "distribution": "global", "temperature": 2.0,
                             "num_batches": 2})
  masks = sj.prune_at_init(pruner, apply_fn, PARAMS, [{"image": x, "label": y} for x, y in BATCHES])
  kept = np.concatenate([np.asarray(masks["w1"]).ravel(), np.asarray(masks["w2"]).ravel()])
  base = sum(np.sum(g ** 2) for g in np_mean_grads(W1, W2, 2.0))
  change = []
  for layer in range(2):
    for idx in np.ndindex((3, 4) if layer == 0 else (4, 3)):
      w = [W1.copy(), W2.copy()]
      w[layer][idx] = 0.0
      change.append(sum(np.sum(g ** 2) for g in np_mean_grads(*w, 2.0)) - base)
  change = np.array(change)
  assert kept.sum() == 12
  assert not kept[np.argmax(change)] and kept[np.argmin(change)]
  assert change[~kept].mean() > change[kept].mean()


def test_synflow_scores_equal_hand_computed():
  a1, a2 = np.abs(W1), np.abs(W2)
  got = scores.synflow(apply_fn, PARAMS, PRUNABLE, (3,))
  # R = 1^T |W1| |W2| 1 + sum |b2|: dR/dW1_ij = sum_k |W2|_jk, dR/dW2_jk = sum_i |W1|_ij.
  np.testing.assert_allclose(got["w1"], a1 * a2.sum(axis=1)[None, :], rtol=1e-5)
  np.testing.assert_allclose(got["w2"], a1.sum(axis=0)[:, None] * a2, rtol=1e-5)
  masked = {**PRUNABLE, "w1": jnp.asarray(np.arange(12).reshape(3, 4) != 5)}  # W1[1, 1] pruned
  got = scores.synflow(apply_fn, PARAMS, masked, (3,))
  m1 = np.where(np.arange(12).reshape(3, 4) != 5, a1, 0.0)
  np.testing.assert_allclose(got["w1"], m1 * a2.sum(axis=1)[None, :], rtol=1e-5)
  np.testing.assert_allclose(got["w2"], m1.sum(axis=0)[:, None] * a2, rtol=1e-5)


def test_iterative_synflow_matches_numpy_rounds():
  pruner = sj.create_pruner({"algorithm": "synflow", "target": 0.5, "distribution": "global", "iterations": 3})
  masks = sj.prune_at_init(pruner, apply_fn, PARAMS, [{"image": BATCHES[0][0]}])
  m1, m2 = np.ones((3, 4), bool), np.ones((4, 3), bool)
  for r, k in zip((1, 2, 3), (19, 15, 12)):  # round(0.5 ** (r / 3) * 24)
    assert k == round(0.5 ** (r / 3) * 24)
    a1, a2 = np.where(m1, np.abs(W1), 0), np.where(m2, np.abs(W2), 0)
    s = np.concatenate([(a1 * a2.sum(axis=1)[None, :]).ravel(), (a1.sum(axis=0)[:, None] * a2).ravel()])
    keep = np.zeros(24, bool)
    keep[np.argsort(-s, kind="stable")[:k]] = True
    m1, m2 = keep[:12].reshape(3, 4), keep[12:].reshape(4, 3)
  np.testing.assert_array_equal(masks["w1"], m1)
  np.testing.assert_array_equal(masks["w2"], m2)


def test_synflow_does_not_depend_on_the_data():
  pruner = sj.create_pruner({"algorithm": "synflow", "target": 0.7, "iterations": 5})
  a = sj.prune_at_init(pruner, apply_fn, PARAMS, [{"image": BATCHES[0][0], "label": BATCHES[0][1]}])
  b = sj.prune_at_init(pruner, apply_fn, PARAMS, [(100 * np.ones((2, 3), np.float32), np.zeros(2, np.int32))])
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _mlp():
  k = jax.random.split(jax.random.key(3), 4)
  params = {"l0": {"kernel": jax.random.normal(k[0], (20, 30)) * 0.3, "bias": jnp.zeros(30)},
            "l1": {"kernel": jax.random.normal(k[1], (30, 30)) * 0.2, "bias": jnp.zeros(30)},
            "l2": {"kernel": jax.random.normal(k[2], (30, 5)) * 0.2, "bias": jnp.zeros(5)}}

  def fn(p, x):
    h = jax.nn.relu(x @ p["l0"]["kernel"] + p["l0"]["bias"][None, :])
    h = jax.nn.relu(h @ p["l1"]["kernel"] + p["l1"]["bias"][None, :])
    return h @ p["l2"]["kernel"] + p["l2"]["bias"][None, :]

  x = jax.random.normal(k[3], (16, 20))
  return params, fn, [{"image": x, "label": jnp.arange(16) % 5}]


SHAPES = {"l0/kernel": (20, 30), "l1/kernel": (30, 30), "l2/kernel": (30, 5)}


@pytest.mark.parametrize("algorithm,distribution", [("random", "uniform"), ("snip", "erk"), ("grasp", "er"),
                                                    ("synflow", "erk"), ("oneshot", "uniform")])
def test_per_layer_distributions_give_exact_counts(algorithm, distribution):
  params, fn, batches = _mlp()
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.8, "distribution": distribution, "iterations": 4})
  layers = sj.summary(sj.prune_at_init(pruner, fn, params, batches))["layers"]
  sparsities = sj.distributions.layer_sparsities(distribution, SHAPES, 0.8)
  for path, shape in SHAPES.items():
    assert layers[path]["nnz"] == round((1 - sparsities[path]) * math.prod(shape)), path


@pytest.mark.parametrize("algorithm", ["snip", "grasp", "synflow"])
def test_global_keeps_the_total_and_the_min_density_floor(algorithm):
  params, fn, batches = _mlp()
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.9, "distribution": "global", "min_density": 0.04,
                             "iterations": 4})
  masks = sj.prune_at_init(pruner, fn, params, batches)
  summary = sj.summary(masks)
  assert summary["total"]["nnz"] == 165  # 10% of 1650
  for path, shape in SHAPES.items():
    assert summary["layers"][path]["nnz"] >= math.ceil(0.04 * math.prod(shape)), path
  assert sj.layer_collapse(masks, 0.04) == []


def test_layer_collapse_lists_empty_and_under_floor_layers():
  masks = {"a": jnp.zeros((10, 10), bool), "b": jnp.asarray(np.arange(100).reshape(10, 10) < 4),
           "c": jnp.asarray(np.arange(100).reshape(10, 10) < 5), "bias": None}
  assert sj.layer_collapse(masks) == ["a"]
  assert sj.layer_collapse(masks, min_density=0.05) == ["a", "b"]


def test_random_pruner_starts_from_the_prune_at_init_masks():
  params, _, _ = _mlp()
  pruner = sj.create_pruner({"algorithm": "random", "target": 0.6, "seed": 7})
  jax.tree.map(np.testing.assert_array_equal, pruner.init(params).masks, sj.prune_at_init(pruner, None, params, None))
  other = sj.prune_at_init(pruner, None, params, None, rng=jax.random.PRNGKey(8))
  assert not np.array_equal(other["l1"]["kernel"], pruner.init(params).masks["l1"]["kernel"])


@pytest.mark.parametrize("algorithm", ["random", "snip", "grasp", "synflow"])
def test_masks_stay_fixed_through_sparsify_with_adam(algorithm):
  params, fn, batches = _mlp()
  pruner = sj.create_pruner({"algorithm": algorithm, "target": 0.9, "distribution": "erk", "iterations": 4})
  masks = sj.prune_at_init(pruner, fn, params, batches)
  tx = sj.sparsify(optax.adam(1e-2), pruner)
  state, params, traces = sj.set_masks(tx.init(params), masks), sj.apply_masks(params, masks), []
  x, y = batches[0]["image"], batches[0]["label"]

  @jax.jit
  def step(params, state):
    traces.append(1)
    grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(fn(p, x), y).mean())(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(4):
    params, state = step(params, state)
    jax.tree.map(np.testing.assert_array_equal, sj.get_masks(state), masks)
  summary = sj.summary(masks, params)
  assert summary["total"]["nnz"] == sj.summary(masks)["total"]["nnz"]  # every pruned weight is exactly 0
  assert len(traces) == 1


def test_prune_at_init_errors_name_the_problem():
  params, fn, batches = _mlp()
  with pytest.raises(ValueError, match="algorithm.*prune_at_init supports"):
    sj.prune_at_init(sj.create_pruner({"algorithm": "gmp", "target": 0.5, "end_step": 10}), fn, params, batches)
  with pytest.raises(ValueError, match="num_batches=2"):
    sj.prune_at_init(sj.create_pruner({"algorithm": "snip", "target": 0.5, "num_batches": 2}), fn, params, batches)
  with pytest.raises(ValueError, match="'grasp' needs labelled batches"):
    sj.prune_at_init(sj.create_pruner({"algorithm": "grasp", "target": 0.5}), fn, params, [{"image": np.ones((2, 20))}])
  with pytest.raises(ValueError, match="needs batches"):
    sj.prune_at_init(sj.create_pruner({"algorithm": "synflow", "target": 0.5}), fn, params, None)


@pytest.mark.slow  # compiling ResNet-20 on CPU
def test_engine_scores_batchnorm_models_with_batch_statistics():
  """SNIP on ResNet-20 through the engine must score in train mode (batch statistics), as the reference SNIP and GraSP
  code does: with the initial running statistics (eval mode) BatchNorm is the identity and the logits saturate."""
  from sparsejax import train
  from sparsejax.config_validation import validate
  from tiny_dataset import TinyDataset
  config = validate({"model": {"name": "resnet20"}, "data": {"name": "tiny"},
                     "training": {"num_steps": 2, "batch_size": 16},
                     "sparsity": {"algorithm": "snip", "target": 0.9, "distribution": "global"}})
  data = TinyDataset(input_shape=(8, 8, 3))
  model = train.create_model("resnet20", 10)
  dense = train.create_train_state(config, model, data, jax.random.PRNGKey(0), prune_at_init=False)
  state = train.create_train_state(config, model, data, jax.random.PRNGKey(0))
  batch = data.train_batch(0, 16)
  variables = {"params": dense.params, "batch_stats": dense.batch_stats}

  def train_mode(p, x):
    return model.apply(dict(variables, params=p), x, train=True, mutable=["batch_stats"])[0]

  def eval_mode(p, x):
    return model.apply(dict(variables, params=p), x, train=False)

  assert float(jnp.std(eval_mode(dense.params, batch["image"]))) > 5 * float(jnp.std(train_mode(dense.params,
                                                                                               batch["image"])))
  pruner = sj.create_pruner(config.sparsity)
  want = sj.prune_at_init(pruner, train_mode, dense.params, [batch])
  not_want = sj.prune_at_init(pruner, eval_mode, dense.params, [batch])
  got = sj.get_masks(state.opt_state)
  for g, w in zip(sj.masks.mask_leaves(got), sj.masks.mask_leaves(want)):
    np.testing.assert_array_equal(g, w)
  assert any(np.any(np.asarray(g) != np.asarray(n)) for g, n in
             zip(sj.masks.mask_leaves(got), sj.masks.mask_leaves(not_want)))
