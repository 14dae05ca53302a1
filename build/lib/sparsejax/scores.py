"""Saliency scores for pruning: magnitude, random, SNIP, GraSP, SynFlow, and the per-step terms of RigL and movement.

Every score follows one convention: a higher score means "keep". A score function returns a tree shaped like params
with float32 scores on the prunable leaves (those where `prunable`, a mask tree, holds an array) and None elsewhere,
ready for `pruners.base.select_masks`. The data-dependent scores are written against a loss `loss_fn(params, batch)`, and the
helper `cross_entropy(apply_fn)` builds one from any `apply_fn(params, x) -> logits`; SynFlow needs only `apply_fn`.
Nothing here knows the model code: a Flax caller passes `lambda p, x: model.apply({"params": p, **state}, x,
train=False)`, with BatchNorm statistics closed over (eval mode).

>>> import jax.numpy as jnp
>>> params = {"w": jnp.array([[1.0, -2.0]]), "b": jnp.zeros(2)}
>>> prunable = {"w": jnp.ones((1, 2), bool), "b": None}
>>> magnitude(params, prunable)["w"].tolist(), magnitude(params, prunable)["b"]
([[1.0, 2.0]], None)
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from sparsejax import masks as masks_lib

PyTree = Any


def _on_prunable(fn, prunable: PyTree, *trees) -> PyTree:
  """fn(*leaves) as float32 where `prunable` holds an array, None elsewhere."""
  return jax.tree.map(lambda m, *xs: None if m is None else fn(*xs).astype(jnp.float32), prunable, *trees,
                      is_leaf=masks_lib.is_none)


def _zeros_off_prunable(tree: PyTree, prunable: PyTree) -> PyTree:
  """tree with every leaf that is not prunable replaced by zeros (a tangent or cotangent restricted to the weights)."""
  return jax.tree.map(lambda m, x: jnp.zeros_like(x) if m is None else x, prunable, tree, is_leaf=masks_lib.is_none)


def cross_entropy(apply_fn: Callable, temperature: float = 1.0) -> Callable:
  """loss_fn(params, (x, y)): mean softmax cross-entropy of apply_fn(params, x) / temperature against int labels y."""

  def loss_fn(params, batch):
    x, y = batch
    logits = apply_fn(params, x) / temperature
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return loss_fn


def magnitude(params: PyTree, prunable: PyTree) -> PyTree:
  """|w|."""
  return _on_prunable(jnp.abs, prunable, params)


def uniform_noise(key: jax.Array, shapes) -> list[jax.Array]:
  """Uniform noise in [0, 1) of each shape, an independent key per array (split from `key` in order)."""
  keys = jax.random.split(key, max(len(shapes), 1))
  return [jax.random.uniform(k, tuple(s)) for k, s in zip(keys, shapes)]


def random(params: PyTree, prunable: PyTree, key: jax.Array) -> PyTree:
  """Uniform noise on the prunable leaves, in tree order (the random-pruning control)."""
  paths = masks_lib.mask_paths(prunable)
  leaves = dict(masks_lib.flatten_with_paths(params))
  noise = dict(zip(paths, uniform_noise(key, [jnp.shape(leaves[p]) for p in paths])))
  return masks_lib.map_prunable(lambda p, _: noise[p], params, paths)


def gradient(grads: PyTree, prunable: PyTree) -> PyTree:
  """|dL/dw| of the dense gradient: RigL's growth criterion (Evci et al. 2020)."""
  return _on_prunable(jnp.abs, prunable, grads)


def movement_increment(params: PyTree, grads: PyTree, prunable: PyTree) -> PyTree:
  """-w * dL/dw: one step's term of the movement importance of Sanh et al. 2020 (weights moving away from 0 gain)."""
  return _on_prunable(lambda w, g: -(w * g), prunable, params, grads)


def mean_gradient(loss_fn: Callable, params: PyTree, batches: Sequence) -> PyTree:
  """Gradient of loss_fn averaged over batches (one jitted gradient, called per batch)."""
  if not batches:
    raise ValueError("scores: at least one batch is needed")
  grad_fn = jax.jit(jax.grad(loss_fn))
  total = grad_fn(params, batches[0])
  for batch in batches[1:]:
    total = jax.tree.map(jnp.add, total, grad_fn(params, batch))
  return jax.tree.map(lambda g: g / len(batches), total)


def snip(loss_fn: Callable, params: PyTree, batches: Sequence, prunable: PyTree) -> PyTree:
  """Connection sensitivity |g * w| (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity"), with g the gradient averaged over the batches. The paper's normalisation by the sum of all scores is
  one positive constant and does not change which weights are kept, so it is left out."""
  g = mean_gradient(loss_fn, params, batches)
  return _on_prunable(lambda w, gw: jnp.abs(gw * w), prunable, params, g)


def hessian_gradient(loss_fn: Callable, params: PyTree, batches: Sequence, prunable: PyTree) -> PyTree:
  """H g over the prunable weights: the gradient of g^T stop_gradient(g), computed as a forward-over-reverse
  Hessian-vector product (jax.jvp of the gradient) in the direction of g restricted to the prunable weights, averaged
  over the batches. Returns a full tree (zeros where not prunable are never used)."""
  g = _zeros_off_prunable(mean_gradient(loss_fn, params, batches), prunable)

  @jax.jit
  def hvp(p, batch):
    return jax.jvp(lambda q: jax.grad(loss_fn)(q, batch), (p,), (g,))[1]

  total = hvp(params, batches[0])
  for batch in batches[1:]:
    total = jax.tree.map(jnp.add, total, hvp(params, batch))
  return jax.tree.map(lambda h: h / len(batches), total)


def grasp(loss_fn: Callable, params: PyTree, batches: Sequence, prunable: PyTree) -> PyTree:
  """GraSP keep-score w * (H g) (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving Gradient
  Flow"); build `loss_fn` with `cross_entropy(apply_fn, temperature)` (the paper's code divides logits by 200).

  Sign convention. The paper scores S(-w) = -w * (H g), the first-order change of the gradient norm ||g||^2 (up to a
  factor 2) when a weight is removed, and removes the weights with the HIGHEST S: their removal reduces gradient flow
  least, or even increases it. The reference code (alecwangcq/GraSP) does the same: it keeps S <= the threshold of the
  top fraction to remove, after dividing by |sum S|, a positive constant. This function returns -S = w * (H g) so that,
  like every score here, the highest scores are kept; the masks are those of the paper and the reference code.
  """
  hg = hessian_gradient(loss_fn, params, batches, prunable)
  return _on_prunable(lambda w, h: w * h, prunable, params, hg)


def synflow(apply_fn: Callable, params: PyTree, masks: PyTree, input_shape: Sequence[int]) -> PyTree:
  """One round of SynFlow (Tanaka et al. 2020, "Pruning neural network without any data by iteratively conserving
  synaptic flow"): every param replaced by its absolute value, pruned entries (False in `masks`) set to 0, one all-ones
  input of shape (1, *input_shape), R = sum of the outputs, score |dR/dw * w|. Data-free: only the input shape is
  used. BatchNorm must be in eval mode inside `apply_fn`. Scores of pruned entries are 0.

  In float32 R grows like the product of the layers' weight norms; a very deep network can overflow it, as in the
  reference code (which also runs in float32).
  """
  linear = masks_lib.apply_masks(jax.tree.map(jnp.abs, params), masks)
  x = jnp.ones((1,) + tuple(input_shape), jnp.float32)
  dr = jax.grad(lambda p: jnp.sum(apply_fn(p, x)))(linear)
  return _on_prunable(lambda d, w: jnp.abs(d * w), masks, dr, linear)
