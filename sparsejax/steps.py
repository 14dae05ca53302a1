"""What runs on the devices: the train state, the jitted train and eval steps, and evaluation over a split.

The step is traced and compiled once per run: mask updates happen inside the `sparsify` optimizer update under
`lax.cond`, and the step's inputs keep their shapes and shardings. `TRACES` counts traces so tests can assert it.
Cross-entropy with optional label smoothing; BatchNorm statistics update in train mode; dropout keys are
fold_in(rng, step), so a resumed run draws the same keys. Language models (logits (N, T, V), labels (N, T)) go through
the same steps: loss and accuracy are means over tokens, and evaluation adds the perplexity.
"""
from __future__ import annotations

import collections
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from sparsejax import parallel, transform

# How many times each step function has been traced in this process; a second trace of the train step in one run
# means a recompile, which tests catch.
TRACES: collections.Counter = collections.Counter()
_MAX_LOG_PERPLEXITY = 700.0  # exp of more overflows a float64; a loss that large is a diverged model anyway


class TrainState(struct.PyTreeNode):
  """Everything that changes during training; a checkpoint of it resumes a run exactly.

  Attributes:
    step: completed optimizer steps (int32 scalar); the data position, since batches are a function of the step.
    params: the model's "params" collection (pruned entries exactly 0).
    batch_stats: the "batch_stats" collection; {} for models without BatchNorm.
    opt_state: the `sparsify` optimizer state; holds the masks (see `sparsejax.get_masks`).
    rng: PRNG key data; the key of step t is fold_in(rng, t), so no key needs carrying between steps.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


def init_state(model: nn.Module, tx: optax.GradientTransformation, input_shape: Sequence[int],
               rng: jax.Array) -> TrainState:
  """A fresh TrainState from a dummy batch of one example (not jitted; `train.create_train_state` jits it)."""
  params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
  dummy = jnp.zeros((1, *input_shape), jnp.float32)
  variables = model.init({"params": params_rng, "dropout": dropout_rng}, dummy, train=False)
  # Pruners that start sparse (random, set, rigl, sparse granet) draw masks in tx.init: step 0 starts masked.
  params, opt_state = transform.sparse_init(tx, variables["params"])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=opt_state, rng=state_rng)


def _variables(state: TrainState) -> dict:
  if state.batch_stats:
    return {"params": state.params, "batch_stats": state.batch_stats}
  return {"params": state.params}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels, with optional label smoothing (Szegedy et al. 2016)."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(model: nn.Module, tx: optax.GradientTransformation, label_smoothing: float, state: TrainState,
               batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on one batch (not jitted; see `make_train_step`). Returns (state, {"loss", "accuracy"})."""
  TRACES["train_step"] += 1
  has_bn = bool(state.batch_stats)
  rngs = {"dropout": jax.random.fold_in(state.rng, state.step)}

  def loss_fn(params):
    variables = dict(_variables(state), params=params)
    if has_bn:
      logits, updated = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"], rngs=rngs)
      batch_stats = updated["batch_stats"]
    else:
      logits, batch_stats = model.apply(variables, batch["image"], train=True, rngs=rngs), state.batch_stats
    loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return new_state, {"loss": loss, "accuracy": accuracy}


def under_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` called (and so traced) under `jax.set_mesh(mesh)`: selection then runs per layer where the shards are, and
  a failed check raises on every device (see `sparsejax.select.per_layer`, `sparsejax.transform`)."""
  if mesh.devices.size == 1:
    return fn

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with jax.set_mesh(mesh):
      return fn(*args, **kwargs)

  return call


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh, label_smoothing: float = 0.0,
                    state_sharding: Any = None) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """`train_step` jitted over `mesh`: batch split over the batch axes, state donated and kept in `state_sharding`
  (a sharding per leaf, from `train.create_train_state`'s state; None: replicated)."""
  rep = parallel.replicated(mesh)
  state_sharding = rep if state_sharding is None else state_sharding
  return under_mesh(jax.jit(functools.partial(train_step, model, tx, label_smoothing),
                            in_shardings=(state_sharding, parallel.data_sharding(mesh)),
                            out_shardings=(state_sharding, rep), donate_argnums=0), mesh)


def eval_step(model: nn.Module, state: TrainState, batch: dict) -> dict:
  """Sums of loss and correct predictions over the real (mask True) examples of a padded batch; with labels (N, T)
  (a language model's next tokens) over every token of those examples, "count" counting tokens."""
  TRACES["eval_step"] += 1
  logits = model.apply(_variables(state), batch["image"], train=False)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  correct = jnp.argmax(logits, -1) == batch["label"]
  mask = jnp.broadcast_to(batch["mask"].reshape(batch["mask"].shape + (1,) * (loss.ndim - 1)), loss.shape)
  return {"loss": jnp.sum(jnp.where(mask, loss, 0.0)), "correct": jnp.sum(correct & mask, dtype=jnp.int32),
          "count": jnp.sum(mask, dtype=jnp.int32)}


def make_eval_step(model: nn.Module, mesh: Mesh, state_sharding: Any = None) -> Callable[[TrainState, dict], dict]:
  """`eval_step` jitted over `mesh`: batch split over the batch axes, the sums replicated (the state is not
  donated); `state_sharding` as in `make_train_step`."""
  rep = parallel.replicated(mesh)
  return under_mesh(jax.jit(functools.partial(eval_step, model),
                            in_shardings=(rep if state_sharding is None else state_sharding,
                                          parallel.data_sharding(mesh)), out_shardings=rep), mesh)


def evaluate(eval_fn: Callable, state: TrainState, dataset, split: str, batch_size: int, mesh: Mesh) -> dict:
  """{"loss", "accuracy"} over every example of `split` (the padding of the last batch excluded by its mask). For a
  language model (labels (N, T)) both are means over tokens, and "perplexity" = exp(mean token loss) is added."""
  sync = parallel.needs_host_sync(mesh)
  totals = None
  per_token = False
  rows = parallel.process_rows(mesh, batch_size)
  for batch in dataset.eval_batches(split, batch_size, rows):
    per_token = np.ndim(batch["label"]) > 1
    sums = eval_fn(state, parallel.global_batch(lambda _, b=batch: b, batch_size, mesh))
    if sync:
      jax.block_until_ready(sums)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError(f"split {split!r} of dataset {dataset.name} is empty")
  totals = jax.device_get(totals)
  count = max(int(totals["count"]), 1)
  out = {"loss": float(totals["loss"]) / count, "accuracy": int(totals["correct"]) / count}
  if per_token:
    out["perplexity"] = math.exp(min(out["loss"], _MAX_LOG_PERPLEXITY))
  return out
