"""The train loop: `train_and_evaluate(config, workdir)` and the plain functions it is made of.

Data flows one way: config -> dataset, model, pruner -> one jitted train step (`sparsejax.steps`) -> metrics,
checkpoints, results. The loop knows the pruner only through `sparsejax.sparsify`.

Other drivers (the lottery-ticket driver, notebooks) reuse the pieces:
`build(config)` -> `create_train_state` -> `make_train_step` / `make_eval_step` -> `train_loop(..., hooks)` ->
`evaluate`; `standard_hooks` gives the periodic eval / log / checkpoint callbacks of a run. The drivers that
`train_and_evaluate` hands a config to (IMP, post-training pruning) import this module for those pieces, so it finds
them by name (`DRIVERS`) and never imports them: the package has no import cycle (`tests/test_imports.py`).
"""
from __future__ import annotations

import functools
import importlib
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

import sparsejax as sj
from sparsejax import checkpoint, config_validation, faults, optim, parallel, report, steps, units, validation
from sparsejax.data import create_dataset
from sparsejax.models import create_model, default_sharding_rules
from sparsejax.pruners import pai
from sparsejax.steps import TRACES, TrainState, evaluate, make_eval_step, make_train_step  # noqa: F401 (re-exported)

make_optimizer = optim.make_optimizer
make_lr_schedule = optim.make_lr_schedule
Hook = Callable[[int, TrainState, dict], None]


class Diverged(Exception):
  """Training produced a non-finite loss or parameter; `step` is the first step where it was seen."""

  def __init__(self, step: int, what: str):
    super().__init__(f"training diverged at step {step}: {what}")
    self.step = step


class Preempted(Exception):
  """The run got SIGTERM (a preemption) and saved a checkpoint at `step`; rerunning the same command resumes."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM) after step {step}: checkpoint {step} saved; run the same command again to "
                     "resume from it")
    self.step = step


class PreemptionWatch:
  """Whether a SIGTERM asked the run to stop. One process: a handler sets a flag. Several (jax.distributed): JAX's
  own preemption notice, agreed on by all processes at the same step (`reached_preemption_sync_point`), so that every
  process saves the same step together."""

  def __init__(self):
    self.signalled = False
    self._previous = None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.signalled = True

  def due(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


class Setup(NamedTuple):
  """What `build` makes from a config; nothing here is written or compiled yet."""
  config: ml_collections.ConfigDict
  model: nn.Module
  dataset: Any
  tx: optax.GradientTransformation
  num_steps: int
  mesh: Mesh
  lr_schedule: optax.Schedule
  pruner: sj.Pruner


def build(config, workdir: Optional[str] = None) -> Setup:
  """Validates `config` and creates dataset, model, optimizer and mesh, without writing or compiling anything.

  Every config error surfaces here, as a `validation.ConfigError`: every section and the fields across them before
  the dataset is opened (`validation.validate`), the checks that need its size right after
  (`validation.check_data`), and shape errors (an abstract trace of model and optimizer init).

  Args:
    config: a ConfigDict (or nested dict) laid out as in configs/default.py.
    workdir: checked as well when given (a file, an unwritable directory or '' are refused).

  Returns:
    Setup(config (validated, every default filled in), model, dataset, tx (sparsified), num_steps, mesh,
    lr_schedule, pruner).
  """
  config = validation.validate(config, workdir)
  parallel.initialize_distributed(config.mesh)  # multi-host: before anything touches a device
  sizes = parallel.mesh_shape(config.mesh)
  sparsity = config.sparsity
  if sparsity.get("selection", "auto") == "auto" and sizes["fsdp"] == sizes["model"] == 1 and not config.mesh.rules:
    # Params are replicated on this mesh (data axis only): the packed selection, fewer kernels to compile.
    sparsity = ml_collections.ConfigDict({**sparsity.to_dict(), "selection": "packed"})
  pruner = sj.create_pruner(sparsity)
  dataset = create_dataset(config.data, seed=config.seed)
  model_kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name" and v is not None}
  model = create_model(config.model.name, dataset.num_classes, **model_kwargs)
  num_steps = config_validation.num_train_steps(config.training, dataset.num_train)
  validation.check_data(config, dataset.num_train, num_steps)
  # check="record": no host callback in the step (it would put every step on JAX's Python dispatch path);
  # the hooks raise what the updates recorded (sj.check_pruned) after the first step and at every record.
  tx = sj.sparsify(optim.make_optimizer(config.training, num_steps), pruner, check="record")
  mesh = parallel.create_mesh(config.mesh)
  n = parallel.batch_ways(mesh)
  for key in ("batch_size", "eval_batch_size"):
    if config.training[key] % n:
      raise ValueError(f"config.training.{key}: {config.training[key]} is not divisible by the {n} batch shards "
                       "(config.mesh.data_parallel x config.mesh.fsdp)")
  # model.init and tx.init on shapes only: catches e.g. a prunable regex that matches no param; compiles nothing.
  # The sharding rules are checked against the shapes here too (a rule naming an unknown axis, a split that does not
  # divide a dimension, an n:m or block group across a shard boundary).
  abstract = jax.eval_shape(functools.partial(steps.init_state, model, tx, dataset.input_shape), jax.random.PRNGKey(0))
  shardings = state_sharding(config, abstract, mesh)
  parallel.check_groups(pruner, abstract.params, shardings.params)
  if mesh.devices.size > 1 and report.is_writer():
    print(f"mesh {dict(mesh.shape)}; params placed as:\n{parallel.describe(abstract.params, shardings.params)}",
          flush=True)
  return Setup(config, model, dataset, tx, num_steps, mesh, optim.make_lr_schedule(config.training, num_steps),
               pruner)


def create_train_state(config, model: nn.Module, dataset, rng: jax.Array,
                       tx: Optional[optax.GradientTransformation] = None, mesh: Optional[Mesh] = None,
                       prune_at_init: bool = True) -> TrainState:
  """A fresh TrainState, initialised (replicated) on the devices of `mesh`.

  Args:
    config: the validated config (`build(config).config`).
    model: a Flax module from `create_model`.
    dataset: gives the input shape (and the batches that SNIP / GraSP / SynFlow score).
    rng: PRNG key of the init; the state keeps a key split from it.
    tx: the sparsified optimizer (`build(...).tx`); None builds it from `config`.
    mesh: where the state lives; None is a one-device mesh.
    prune_at_init: for the pruning-at-initialisation algorithms (snip, grasp, synflow), compute their masks now and
      install them (`install_masks_at_init`); False skips that, e.g. for a restore target.
  """
  if tx is None:
    num_steps = config_validation.num_train_steps(config.training, dataset.num_train)
    tx = sj.sparsify(optim.make_optimizer(config.training, num_steps), sj.create_pruner(config.sparsity),
                     check="record")
  mesh = mesh if mesh is not None else parallel.create_mesh(None)
  state = _jitted_init(model, tx, tuple(dataset.input_shape), mesh, _mesh_rules(config))(rng)
  if prune_at_init and config.sparsity.algorithm in pai.ALGORITHMS and config.sparsity.algorithm != "random":
    state = install_masks_at_init(state, config, model, dataset, mesh)
  return state


def state_sharding(config, abstract_state: TrainState, mesh: Mesh) -> TrainState:
  """A NamedSharding per leaf of the train state: params by `config.mesh.rules` and the FSDP default, every
  optimizer leaf that holds one value per weight (moments, masks, scores) like its param, the rest replicated."""
  return parallel.state_shardings(abstract_state, mesh, abstract_state.params, *_mesh_rules(config))


def _mesh_rules(config) -> tuple:
  """(config.mesh.rules as a hashable tuple, config.mesh.fsdp_min_size); no rules in the config: the model's own
  (`sparsejax.models.default_sharding_rules`, the transformers' heads and MLP split over "model")."""
  mesh = config.get("mesh", None) or {}
  rules = mesh.get("rules", ()) or default_sharding_rules(config.model.name)
  rules = tuple((r[0], tuple(tuple(e) if isinstance(e, list) else e for e in r[1])) for r in rules)
  return rules, mesh.get("fsdp_min_size", parallel.FSDP_MIN_SIZE)


@functools.lru_cache(maxsize=8)
def _jitted_init(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple, mesh: Mesh,
                 mesh_rules: tuple) -> Callable:
  """The init jitted with the state's shardings as out_shardings: the state is created sharded, never on one device
  first. Cached so that drivers creating several states of one setup (lottery controls) compile the init once."""
  init = functools.partial(steps.init_state, model, tx, input_shape)
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(abstract, mesh, abstract.params, *mesh_rules)
  return steps.under_mesh(jax.jit(init, out_shardings=shardings), mesh)


def install_masks_at_init(state: TrainState, config, model: nn.Module, dataset, mesh: Mesh) -> TrainState:
  """Scores the initial weights on the first training batches (SNIP, GraSP; SynFlow needs only the input shape) and
  puts the resulting masks in the optimizer state, with the pruned weights zeroed (`sparsejax.pruners.pai`).

  The "random" algorithm needs none of this: its pruner draws its masks in `tx.init`.
  """
  pruner = sj.create_pruner(config.sparsity)
  batch_stats = state.batch_stats

  def apply_fn(params, x):
    # SNIP and GraSP score with batch statistics (train mode), as their reference code does: with the initial running
    # statistics (eval mode) BatchNorm is the identity and a ResNet-20's logits have a std of about 24, which
    # saturates the softmax. The updated statistics are discarded. SynFlow scores in eval mode, as its paper does.
    train = bool(batch_stats) and config.sparsity.algorithm != "synflow"
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    if not train:
      return model.apply(variables, x, train=False)
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return logits

  batches = [dataset.train_batch(i, config.training.batch_size) for i in range(pruner.config["num_batches"])]
  masks = sj.prune_at_init(pruner, apply_fn, state.params, batches)
  collapsed = sj.layer_collapse(masks, pruner.config["min_density"])
  if collapsed and report.is_writer():
    print(f"warning: {config.sparsity.algorithm} pruned these layers (nearly) entirely: {collapsed}", flush=True)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  state = state.replace(params=sj.apply_masks(state.params, masks), opt_state=sj.set_masks(state.opt_state, masks))
  return jax.device_put(state, shardings)


def train_loop(state: TrainState, step_fn: Callable, dataset, batch_size: int, mesh: Mesh, start_step: int,
               end_step: int, hooks: Sequence[Hook] = ()) -> TrainState:
  """Runs steps start_step .. end_step - 1, calling each hook as hook(completed_steps, state, metrics).

  Batches come from `dataset.train_batch(step, batch_size)`, so any range of steps sees the data an uninterrupted
  run would. Hooks must not keep `state` past their call: the next step donates (reuses) its buffers.
  """
  sync = parallel.needs_host_sync(mesh)
  for step in range(start_step, end_step):
    batch = parallel.global_batch(functools.partial(dataset.train_batch, step, batch_size), batch_size, mesh)
    state, metrics = step_fn(state, batch)
    if sync:
      jax.block_until_ready(metrics)
    for hook in hooks:
      hook(step + 1, state, metrics)
    _fault_point("SPARSEJAX_FAULT_KILL_AFTER_STEPS")
    _fault_point("SPARSEJAX_FAULT_TERM_AFTER_STEPS", signal.SIGTERM)
  return state


_fault_point = faults.point  # the engine's fault tests kill a run at these points


def is_due(step: int, every: int, end_step: int) -> bool:
  """True every `every` steps and at the last step (`every` 0: only at the last)."""
  return step == end_step or (every > 0 and step % every == 0)


def current_sparsity(state: TrainState, stacked=None) -> dict:
  """sj.summary of the masks in the optimizer state, counted from the param arrays; `stacked`: the config's
  `sparsity.stacked` (each slice of a scanned leaf is a layer)."""
  return sj.summary(sj.get_masks(state.opt_state), state.params, stacked)


def eval_splits(dataset) -> tuple[str, ...]:
  """Splits evaluated during training: validation (when one is split off) and test."""
  return tuple(s for s in ("validation", "test") if s in dataset.splits)


def evaluate_splits(setup: Setup, eval_fn: Callable, state: TrainState) -> dict:
  """{"<split>_loss", "<split>_accuracy"} for every split of `eval_splits`."""
  out = {}
  for split in eval_splits(setup.dataset):
    metrics = evaluate(eval_fn, state, setup.dataset, split, setup.config.training.eval_batch_size, setup.mesh)
    out.update({f"{split}_{k}": v for k, v in metrics.items()})
  return out


def standard_hooks(setup: Setup, eval_fn: Callable, writer: report.MetricsWriter, progress: report.Progress,
                   end_step: int, clock: Callable[[], float], manager=None, extra: Optional[dict] = None,
                   preemption: Optional[PreemptionWatch] = None) -> list[Hook]:
  """The periodic work of a run, as train_loop hooks.

  Every `log_every` steps, and at every checkpoint step, a metrics record (train loss / accuracy averaged since the
  last record, learning rate, sparsity counted from the params, wall seconds, plus `extra` fields such as a lottery
  level): a record at each checkpoint step leaves nothing half-averaged in a checkpoint, so a resumed run writes the
  records of an uninterrupted one. Every `eval_every` steps the eval metrics too; every `checkpoint_every` steps a
  checkpoint when `manager` is given. All of these also fire at `end_step`.

  Divergence: the loss of each step is checked at the next step (which is then already running, so the check does not
  stall the device), every loss of a record when it is written, and loss and params before a checkpoint is saved; a
  non-finite value raises `Diverged` naming the first step where it was seen, and no non-finite state is saved.

  Pruned weights: what the updates recorded (`sparsify(..., check="record")`) is raised by `sj.check_pruned` after
  the first step of the run and before every record and checkpoint, so no checkpoint holds a revived pruned weight.

  Preemption: when `preemption` reports a SIGTERM, the step's metrics record and a checkpoint are written, and
  `Preempted` is raised; the rerun resumes from that checkpoint.
  """
  training = setup.config.training
  window, last, first = [], [], [True]

  def check_loss(step: int, loss) -> None:
    if not np.isfinite(float(loss)):
      raise Diverged(step, f"the training loss is {float(loss)}")

  def hook(step: int, state: TrainState, metrics: dict) -> None:
    progress.step()
    if last:
      check_loss(*last.pop())
    last.append((step, metrics["loss"]))
    window.append(metrics)
    preempted = manager is not None and preemption is not None and preemption.due(step)
    checkpoint_due = is_due(step, training.checkpoint_every, end_step) or preempted
    record = evaluate_splits(setup, eval_fn, state) if is_due(step, training.eval_every, end_step) else {}
    logged = bool(record) or checkpoint_due or is_due(step, training.log_every, end_step)
    if first[0] or logged:
      first[0] = False
      sj.check_pruned(state.opt_state)
    if logged:
      train = jax.device_get(window)
      for i, m in enumerate(train):
        check_loss(step - len(train) + 1 + i, m["loss"])
      window.clear()
      record = {"step": step, **(extra or {}),
                **{f"train_{k}": sum(float(m[k]) for m in train) / len(train) for k in ("loss", "accuracy")},
                "learning_rate": float(setup.lr_schedule(step - 1)),
                "sparsity": current_sparsity(state, setup.config.sparsity.stacked)["total"]["sparsity"], **record, "wall_seconds": clock()}
      writer.write(record)
      progress.log(record)
    if checkpoint_due:
      if not bool(_all_finite(state.params)):
        raise Diverged(step, "a parameter is not finite")
      if manager is not None:
        checkpoint.save(manager, step, state)
    if preempted:
      checkpoint.finish(manager)
      raise Preempted(step)

  return [hook]


def final_results(setup: Setup, eval_fn: Callable, state: TrainState, wall_seconds: float,
                  levels: Sequence[dict] = ()) -> dict:
  """results.json of a run (see DESIGN.md), evaluated on the test split (validation when there is no test split)."""
  split = "test" if "test" in setup.dataset.splits else eval_splits(setup.dataset)[-1]
  test = evaluate(eval_fn, state, setup.dataset, split, setup.config.training.eval_batch_size, setup.mesh)
  stacked = setup.config.sparsity.stacked
  results = report.make_results(setup.config, int(jax.device_get(state.step)), test,
                                current_sparsity(state, stacked), wall_seconds, levels, split)
  results.update(structure(setup, state))
  return results


def structure(setup: Setup, state: TrainState) -> dict:
  """results.json's structured-pruning entries: the heads or neurons kept ("units", counted from the masks) under
  those granularities, and a transformer's FLOPs per token dense and remaining ("flops_per_token")."""
  out, sparsity = {}, setup.config.sparsity
  if sparsity.granularity in units.KINDS:
    out["units"] = units.count_tree(sj.get_masks(state.opt_state), sparsity.granularity, sparsity.stacked)
  if setup.config.model.name in ("gpt", "vit"):
    gpt = setup.config.model.name == "gpt"
    context = setup.dataset.input_shape[0] if gpt else int(np.prod(setup.dataset.input_shape[:2])) // (
        setup.model.patch_size ** 2) + int(setup.model.pool == "cls")
    out["flops_per_token"] = units.flops_per_token(state.params, context, causal=gpt, stacked=sparsity.stacked)
  return out


def _diverged(setup: Setup, eval_fn: Callable, workdir: str, manager, target, error: Diverged,
              wall_seconds: float) -> dict:
  """results.json of a run that diverged: "status": "diverged", the step, and the last finite checkpoint evaluated."""
  if report.is_writer():
    print(f"error: {error}; the run stops here. Its checkpoints are all finite; results.json describes the last "
          "one.", file=sys.stderr, flush=True)
  checkpoint.finish(manager)
  step, state = checkpoint.restore_latest(manager, target) if manager.all_steps() else (0, None)
  manager.close()
  if state is not None:
    results = final_results(setup, eval_fn, state, wall_seconds)
  else:
    results = {"algorithm": setup.config.sparsity.algorithm, "dataset": setup.config.data.name,
               "model": setup.config.model.name, "wall_seconds": wall_seconds, "final": None, "layers": {},
               "levels": [], "layer_collapse": []}
  results.update(status="diverged", diverged_step=error.step, last_finite_checkpoint=step if state else None)
  report.write_results(workdir, results)
  return results


def _finished(workdir: str, num_steps: int) -> Optional[dict]:
  results = report.read_results(workdir)
  if results is not None and results.get("status") == "diverged":
    return results  # training again would diverge again (runs are deterministic)
  if results is not None and (results.get("final") or {}).get("step", -1) >= num_steps:
    return results
  return None


# What `train_and_evaluate` hands over to other modules, as "module:function", imported when first used: those
# modules import this one for its pieces (a registry by name in the big_vision way, not an import cycle).
DRIVERS = {
    "imp": "sparsejax.lottery:run_lottery",              # the lottery-ticket driver: (config, workdir) -> results
    "posttrain": "sparsejax.posttrain_run:run",          # post-training pruning: (config, workdir) -> results
    "init_from": "sparsejax.posttrain_run:initial_weights",  # the weights of config.init_from's run
    "start_from": "sparsejax.posttrain_run:start_from",  # a fresh train state with those weights
}


def driver(name: str) -> Callable:
  """The function `DRIVERS[name]` names (its module imported on first use)."""
  module, function = DRIVERS[name].split(":")
  return getattr(importlib.import_module(module), function)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains and evaluates one config in `workdir`, resuming from its latest checkpoint; returns results.json.

  All config errors are raised before anything is compiled or written. A workdir whose results.json shows the final
  step is not trained again: its results are printed and returned. `config.init_from` starts from the weights of an
  earlier run; `config.posttrain.method` prunes them after training instead (`sparsejax.posttrain_run`); algorithm
  'imp' runs the lottery driver (`sparsejax.lottery`).

  Args:
    config: a ConfigDict laid out as in configs/default.py.
    workdir: the run directory (created when missing); see DESIGN.md for the files written there.
  """
  config = validation.validate(config, workdir)  # every config and workdir error before the dataset is opened
  if config.sparsity.algorithm == "imp":
    return driver("imp")(config, workdir)
  if config.posttrain.method is not None:
    return driver("posttrain")(config, workdir)
  resuming_run = report.check_workdir(workdir, config)
  setup = build(config, workdir)
  results = _finished(workdir, setup.num_steps) if resuming_run else None
  if results is not None:
    if report.is_writer():
      print(report.format_results(results), flush=True)
    return results
  resuming = checkpoint.latest_step(workdir) is not None
  initial = None
  if setup.config.init_from is not None and not resuming:  # restored before anything is written
    initial = driver("init_from")(setup.config, setup.model, setup.dataset, setup.mesh)
  report.write_config(workdir, setup.config)
  training = setup.config.training
  state = create_train_state(setup.config, setup.model, setup.dataset, jax.random.PRNGKey(setup.config.seed),
                             setup.tx, setup.mesh, prune_at_init=not resuming and initial is None)
  if initial is not None:
    state = driver("start_from")(state, initial, setup.config, setup.model, setup.dataset, setup.mesh)
  manager = checkpoint.create_manager(workdir, training.keep_checkpoints, training.async_checkpoint)
  start_step, state = checkpoint.restore_latest(manager, state)
  sharding = jax.tree.map(lambda x: x.sharding, state)
  eval_fn = make_eval_step(setup.model, setup.mesh, sharding)
  step_fn = make_train_step(setup.model, setup.tx, setup.mesh, training.label_smoothing, sharding)
  target = checkpoint.abstract_like(state)
  with report.MetricsWriter(workdir, start_step, training.tensorboard) as writer:
    offset, started = (writer.previous[-1]["wall_seconds"] if writer.previous else 0.0), time.time()
    clock = lambda: offset + time.time() - started  # noqa: E731
    progress = report.Progress(training.progress, start_step, setup.num_steps)
    preemption = PreemptionWatch()
    hooks = standard_hooks(setup, eval_fn, writer, progress, setup.num_steps, clock, manager, preemption=preemption)
    try:
      state = train_loop(state, step_fn, setup.dataset, training.batch_size, setup.mesh, start_step,
                         setup.num_steps, hooks)
    except Diverged as e:
      progress.close()
      return _diverged(setup, eval_fn, workdir, manager, target, e, clock())
    except Preempted:
      progress.close()
      checkpoint.finish(manager, close=True)
      raise
    finally:
      preemption.close()
    progress.close()
  checkpoint.finish(manager, close=True)
  results = final_results(setup, eval_fn, state, clock())
  report.write_results(workdir, results)
  report.plot_run(workdir, report.read_metrics(workdir), results["layers"])
  if report.is_writer():
    print(report.format_results(results), flush=True)
  return results
