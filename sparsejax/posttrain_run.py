"""The engine's post-training pruning (`config.posttrain`) and its starting weights (`config.init_from`).

`initial_weights(config, ...)` restores the params and batch_stats of the latest checkpoint of `config.init_from`, the
workdir of an earlier run of the same model: its config.json rebuilds the restore target of its whole train state (its
optimizer and pruner state may differ from this run's), and only the weights are kept. `train.train_and_evaluate`
starts any run from them when `init_from` is set.

With `config.posttrain.method` set, `run(config, workdir)` (dispatched from `train.train_and_evaluate`):
  1. restores the weights of `init_from` and evaluates them (the dense numbers);
  2. prunes them in one shot with `sparsejax.posttrain.prune` (magnitude, Wanda or SparseGPT; uniform or OWL;
     unstructured or n:m) on the first `calibration_batches` training batches of `config.training.batch_size`,
     the params of `config.sparsity.prunable`, the model called with train=False;
  3. evaluates the pruned model and saves it as checkpoint 0, its masks in the optimizer state (`sj.set_masks` on
     the fixed pruner that IMP uses, `sparsejax.pruners.magnitude.fixed`), so a resumed run never prunes again;
  4. with `recovery` 'sparse' or 'bias_norm', fine-tunes for `config.training.num_steps` steps in the usual loop
     (`train.standard_hooks`: metrics, evals, checkpoints, resume) with the masks fixed, the pruned weights exactly 0:
     'sparse' trains every kept weight; 'bias_norm' only the biases and normalisation parameters (leaves named `bias`
     or `scale`), every kernel and embedding frozen by `optax.set_to_zero` (PERP; Zimmer et al. 2023, "PERP:
     Rethinking the Prune-Retrain Paradigm in the Era of LLMs").
results.json holds the usual keys ("algorithm" is "posttrain:<method>"; "final" and "layers" counted from the final
arrays) and "posttrain": the options, the test metrics "dense", "pruned" and "recovered" (null without recovery) as
`train.evaluate` returns them, and "layers", the per-layer record of `sparsejax.posttrain.Result.layers`. The dense and
pruned numbers are kept in `posttrain.json` for a resumed run. A finished workdir returns its results without work.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

import sparsejax as sj
from sparsejax import checkpoint, config_validation, masks as masks_lib, optim, parallel, report, steps, validation
from sparsejax import config as sparsity_config
from sparsejax import train as train_lib
from sparsejax.pruners import REGISTRY, magnitude

POSTTRAIN_FILE = "posttrain.json"
NORM_OR_BIAS = ("bias", "scale")  # leaf names that 'bias_norm' trains: biases, LayerNorm / BatchNorm / RMSNorm scales


class Initial(NamedTuple):
  """The weights of `config.init_from`: its checkpoint `step`, `params` and `batch_stats` ({} without BatchNorm)."""
  step: int
  params: Any
  batch_stats: Any


def initial_weights(config, model, dataset, mesh) -> Initial:
  """The params and batch_stats of the latest checkpoint of `config.init_from` (validated by `validation`).

  The restore target is that run's whole train state, rebuilt from its config.json (its training and sparsity
  sections decide the optimizer state) with this run's model, input shape and shardings.

  Raises:
    validation.ConfigError: the checkpoint does not restore into this model (naming config.init_from).
  """
  src = config.init_from
  previous = report.read_json(report.as_path(src) / report.CONFIG_FILE)
  source = config_validation.validate(previous)
  source.sparsity = ml_collections.ConfigDict(previous["sparsity"])
  # The number of steps shapes only the schedule, not the state; the source's own when it counted them.
  num_steps = source.training.num_steps or source.training.warmup_steps + 1
  if source.posttrain.method is not None:  # a pruned (and recovered) run: its fixed masks, its recovery optimizer
    tx = recovery_tx(source, num_steps)
  else:
    tx = sj.sparsify(optim.make_optimizer(source.training, num_steps), sj.create_pruner(previous["sparsity"]))
  abstract = jax.eval_shape(functools.partial(steps.init_state, model, tx, tuple(dataset.input_shape)),
                            jax.random.PRNGKey(0))
  shardings = parallel.state_shardings(abstract, mesh, abstract.params, *train_lib._mesh_rules(config))  # pylint: disable=protected-access
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  manager = _read_only_manager(src)
  try:
    step, state = checkpoint.restore_latest(manager, target)
  except ValueError as e:
    raise validation.ConfigError(f"config.init_from: got {src!r}, whose checkpoints do not restore into this model "
                                 f"and data ({' '.join(str(e).split())[:400]}); accepted values: the workdir of an "
                                 "earlier run of the same model on data of the same shape") from None
  finally:
    manager.close()
  return Initial(int(step), state.params, state.batch_stats)


def _read_only_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads: one opened for writing would clean up the temporary directories of a run still
  saving there. Orbax's warning that the directory is read only, which is the point, is not shown."""
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)
  try:
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    return ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir), options=options)
  finally:
    absl.setLevel(level)


def start_from(state: steps.TrainState, initial: Initial, config, model, dataset, mesh) -> steps.TrainState:
  """A fresh train state with the weights of `initial`: pruned to the masks its pruner starts with (random, SET,
  RigL), or to the masks SNIP / GraSP / SynFlow compute on them."""
  shardings = jax.tree.map(lambda x: x.sharding, state)
  state = state.replace(params=_like(state.params, initial.params), batch_stats=_like(state.batch_stats,
                                                                                        initial.batch_stats))
  if config.sparsity.algorithm in ("snip", "grasp", "synflow"):
    return train_lib.install_masks_at_init(jax.device_put(state, shardings), config, model, dataset, mesh)
  state = state.replace(params=sj.apply_masks(state.params, sj.get_masks(state.opt_state)))
  return jax.device_put(state, shardings)


def _like(reference, tree):
  """`tree`'s leaves in the structure of `reference` (plain dicts and FrozenDicts alike), checked path by path."""
  want = [p for p, _ in masks_lib.flatten_with_paths(masks_lib.pure(reference))]
  got = dict(masks_lib.flatten_with_paths(masks_lib.pure(tree)))
  if sorted(want) != sorted(got):
    raise ValueError(f"post-training pruning: the restored tree has params {sorted(got)}, the model {sorted(want)}")
  return jax.tree.unflatten(jax.tree.structure(reference), [got[p] for p in want])


def bias_norm_labels(params) -> Any:
  """'train' on biases and normalisation parameters (leaf names in NORM_OR_BIAS), 'freeze' on everything else."""
  return jax.tree_util.tree_map_with_path(
      lambda kp, _: "train" if masks_lib.path_str(kp).split("/")[-1] in NORM_OR_BIAS else "freeze", params)


def recovery_tx(config, num_steps: int) -> optax.GradientTransformation:
  """`sparsify` of the config's optimizer with the fixed pruner (masks set by `sj.set_masks` only); for 'bias_norm'
  the optimizer updates only biases and normalisation parameters (the rest get zero updates, inside `sparsify`)."""
  cfg = sparsity_config.validate(config.sparsity.to_dict(), tuple(REGISTRY))
  inner = optim.make_optimizer(config.training, num_steps)
  if config.posttrain.recovery == "bias_norm":
    inner = optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, bias_norm_labels)
  return sj.sparsify(inner, magnitude.fixed(cfg), check="record")  # the hooks raise what it records


def check_layers(setup: train_lib.Setup) -> None:
  """Before anything is compiled or written, on shapes only: every prunable kernel can be pruned as configured. A
  method that reads activations (or OWL) needs each one to be the kernel of an nn.Dense, nn.DenseGeneral or nn.Conv
  call; an N:M granularity needs each one's inputs (a kernel's input axes, flattened) to divide into groups of M.

  Raises:
    validation.ConfigError: naming the field and the layer.
  """
  config, pt = setup.config, setup.config.posttrain
  _, nm = sj.posttrain.check_options(pt.method, pt.target, pt.distribution, pt.granularity, pt.block_size, pt.damp,
                                     pt.owl_lambda, pt.owl_m, where="config.posttrain.")
  model = setup.model.clone(scan=False) if getattr(setup.model, "scan", False) else setup.model
  x = jnp.zeros((1, *setup.dataset.input_shape), jnp.float32)  # as steps.init_state calls the model
  variables = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, x, train=False), jax.random.PRNGKey(0))
  params = variables["params"]
  paths = masks_lib.prunable_paths(params, config.sparsity.prunable)
  shapes = {p: tuple(a.shape) for p, a in masks_lib.flatten_with_paths(params)}
  n_in = {p: len(shapes[p]) - 1 for p in paths}
  if pt.method != "magnitude" or pt.distribution == "owl":
    others = {k: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), v) for k, v in variables.items() if k != "params"}
    layers = {l.path: l for g in sj.posttrain.discover(model, params, x, others, {"train": False}) for l in g}
    missing = [p for p in paths if p not in layers]
    if missing:
      raise validation.ConfigError(
          f"config.posttrain.method: got {pt.method!r} (distribution {pt.distribution!r}), which reads the inputs of "
          f"every prunable layer, but {missing} are not the kernel of an nn.Dense, nn.DenseGeneral or nn.Conv call; "
          "accepted values: 'magnitude' with distribution 'uniform', or leave those params out with "
          "config.sparsity.prunable ('!name')")
    n_in = {p: layers[p].n_in for p in paths}
  if nm is not None:
    for p in paths:
      inputs = int(np.prod(shapes[p][:n_in[p]]))
      if inputs % nm[1]:
        raise validation.ConfigError(
            f"config.posttrain.granularity: got {pt.granularity!r}, but {p} has {inputs} inputs, which do not divide "
            f"into groups of {nm[1]}; accepted values: 'unstructured' or an N:M whose M divides the inputs of every "
            "prunable layer (or leave that layer out with config.sparsity.prunable)")


def _test_split(dataset) -> str:
  return "test" if "test" in dataset.splits else train_lib.eval_splits(dataset)[-1]


def _prune(setup: train_lib.Setup, eval_fn, state: steps.TrainState, initial: Initial) -> tuple:
  """(pruned state, record): the dense and pruned test metrics, the per-layer record and the seconds it took."""
  config, pt = setup.config, setup.config.posttrain
  shardings = jax.tree.map(lambda x: x.sharding, state)
  test = functools.partial(train_lib.evaluate, eval_fn, dataset=setup.dataset, split=_test_split(setup.dataset),
                           batch_size=config.training.eval_batch_size, mesh=setup.mesh)
  state = jax.device_put(state.replace(params=_like(state.params, initial.params),
                                       batch_stats=_like(state.batch_stats, initial.batch_stats)), shardings)
  dense = test(state)
  t0 = time.time()
  batches = [setup.dataset.train_batch(i, config.training.batch_size)["image"] for i in range(pt.calibration_batches)]
  one_process = jax.process_count() == 1
  params = jax.device_get(state.params) if one_process else state.params
  batch_stats = jax.device_get(state.batch_stats) if one_process else state.batch_stats
  out = sj.posttrain.prune(setup.model, params, batches, method=pt.method, target=pt.target,
                           distribution=pt.distribution, granularity=pt.granularity,
                           prunable=config.sparsity.prunable, variables={"batch_stats": batch_stats} if batch_stats
                           else {}, apply_kwargs={"train": False}, block_size=pt.block_size, damp=pt.damp,
                           owl_lambda=pt.owl_lambda, owl_m=pt.owl_m)
  selected = masks_lib.mask_paths(sj.get_masks(state.opt_state))
  if masks_lib.mask_paths(out.masks) != selected:
    raise ValueError(f"post-training pruning: it pruned {masks_lib.mask_paths(out.masks)}, but config.sparsity "
                     f"selects {selected}")
  masks = _like(sj.get_masks(state.opt_state), out.masks)
  state = state.replace(params=_like(state.params, out.params), opt_state=sj.set_masks(state.opt_state, masks))
  state = jax.device_put(state, shardings)
  seconds = time.time() - t0
  record = {"init_from": config.init_from, "init_step": initial.step, "dense": dense, "pruned": test(state),
            "layers": out.layers, "prune_seconds": seconds}
  return state, record


def _finished(workdir: str, end: int):
  results = train_lib._finished(workdir, end)  # pylint: disable=protected-access
  return results if results is not None and "posttrain" in results else None


def _write_step0(writer, setup, eval_fn, state, pruned: dict, clock) -> None:
  """The metrics record of the pruned model at step 0 (sparsity, and the eval splits; `pruned`: its test metrics,
  measured already), unless a resumed run has it."""
  if writer.previous:
    return
  evals = {}
  for split in train_lib.eval_splits(setup.dataset):
    metrics = pruned if split == _test_split(setup.dataset) else train_lib.evaluate(
        eval_fn, state, setup.dataset, split, setup.config.training.eval_batch_size, setup.mesh)
    evals.update({f"{split}_{k}": v for k, v in metrics.items()})
  sparsity = train_lib.current_sparsity(state, setup.config.sparsity.stacked)["total"]["sparsity"]
  writer.write({"step": 0, "sparsity": sparsity, **evals, "wall_seconds": clock()})


def _results(setup: train_lib.Setup, eval_fn, state, record: dict, end: int, wall_seconds: float) -> dict:
  """results.json's usual keys: the final state evaluated, or without recovery the pruned numbers as measured."""
  if end > 0:
    return train_lib.final_results(setup, eval_fn, state, wall_seconds)
  split = _test_split(setup.dataset)
  summary = train_lib.current_sparsity(state, setup.config.sparsity.stacked)
  results = report.make_results(setup.config, 0, record["pruned"], summary, wall_seconds, (), split)
  results.update(train_lib.structure(setup, state))
  return results


def run(config, workdir: str) -> dict:
  """Post-training pruning of the weights of `config.init_from` in `workdir` (see the module docstring); returns
  results.json. Config errors are raised before anything is compiled or written; a finished workdir is returned as
  it is; a killed run resumes from its latest checkpoint."""
  t0 = time.time()
  config = validation.validate(config, workdir)
  resuming_run = report.check_workdir(workdir, config)
  setup = train_lib.build(config, workdir)
  pt = setup.config.posttrain
  end = setup.num_steps if pt.recovery != "none" else 0
  results = _finished(workdir, end) if resuming_run else None
  if results is not None:
    if report.is_writer():
      print(report.format_results(results), flush=True)
    return results
  check_layers(setup)
  setup = setup._replace(tx=recovery_tx(setup.config, setup.num_steps))
  record = report.read_json(report.as_path(workdir) / POSTTRAIN_FILE) if resuming_run else None
  resumed = record is not None and checkpoint.latest_step(workdir) is not None
  initial = None if resumed else initial_weights(setup.config, setup.model, setup.dataset, setup.mesh)
  report.write_config(workdir, setup.config)  # after the restore: a source that does not fit writes nothing
  training = setup.config.training
  state = train_lib.create_train_state(setup.config, setup.model, setup.dataset, jax.random.PRNGKey(setup.config.seed),
                                       setup.tx, setup.mesh, prune_at_init=False)
  eval_fn = train_lib.make_eval_step(setup.model, setup.mesh, jax.tree.map(lambda x: x.sharding, state))
  manager = checkpoint.create_manager(workdir, training.keep_checkpoints, training.async_checkpoint)
  if resumed:
    start, state = checkpoint.restore_latest(manager, state)
  else:  # prune, and keep the pruned model as checkpoint 0 and its numbers in posttrain.json
    start, (state, record) = 0, _prune(setup, eval_fn, state, initial)
    record["prune_wall_seconds"] = time.time() - t0
    report.write_json(report.as_path(workdir) / POSTTRAIN_FILE, record)
    checkpoint.save(manager, 0, state)
  target = checkpoint.abstract_like(state)  # before the steps donate the state's buffers
  with report.MetricsWriter(workdir, start, training.tensorboard) as writer:
    offset = writer.previous[-1]["wall_seconds"] if writer.previous else record["prune_wall_seconds"]
    started = time.time()
    clock = lambda: offset + time.time() - started  # noqa: E731
    _write_step0(writer, setup, eval_fn, state, record["pruned"], clock)
    try:
      state = _recover(setup, eval_fn, state, manager, writer, clock, start, end)
    except train_lib.Diverged as e:
      results = train_lib._diverged(setup, eval_fn, workdir, manager, target, e, clock())  # pylint: disable=protected-access
      results.update(algorithm=f"posttrain:{pt.method}", posttrain=_entry(setup.config, record, None))
      report.write_results(workdir, results)
      return results
  checkpoint.finish(manager, close=True)
  results = _results(setup, eval_fn, state, record, end, clock())
  final = results["final"]
  recovered = None
  if end > 0:
    recovered = {"loss": final["test_loss"], "accuracy": final["test_accuracy"]}
    if "test_perplexity" in final:
      recovered["perplexity"] = final["test_perplexity"]
  results.update(algorithm=f"posttrain:{pt.method}", posttrain=_entry(setup.config, record, recovered))
  report.write_results(workdir, results)
  report.plot_run(workdir, report.read_metrics(workdir), results["layers"])
  if report.is_writer():
    print(report.format_results(results) + "\n" + describe(results["posttrain"]), flush=True)
  return results


def _recover(setup: train_lib.Setup, eval_fn, state, manager, writer, clock, start: int, end: int):
  """Steps start .. end - 1 of the recovery in the usual loop (metrics, evals, checkpoints, preemption); the final
  state. Raises train.Diverged (nothing non-finite saved) and train.Preempted (checkpoint saved)."""
  if start >= end:
    return state
  training = setup.config.training
  step_fn = train_lib.make_train_step(setup.model, setup.tx, setup.mesh, training.label_smoothing,
                                      jax.tree.map(lambda x: x.sharding, state))
  progress = report.Progress(training.progress, start, end, desc=f"recovery ({setup.config.posttrain.recovery})")
  preemption = train_lib.PreemptionWatch()
  hooks = train_lib.standard_hooks(setup, eval_fn, writer, progress, end, clock, manager, preemption=preemption)
  try:
    return train_lib.train_loop(state, step_fn, setup.dataset, training.batch_size, setup.mesh, start, end, hooks)
  except train_lib.Preempted:
    checkpoint.finish(manager, close=True)
    raise
  finally:
    progress.close()
    preemption.close()


def _entry(config, record: dict, recovered) -> dict:
  """results.json's "posttrain" entry."""
  pt = config.posttrain
  nm = sj.posttrain.check_options(pt.method, pt.target, pt.distribution, pt.granularity, pt.block_size, pt.damp,
                                  pt.owl_lambda, pt.owl_m)
  return {"method": pt.method, "target": nm[0], "distribution": pt.distribution, "granularity": pt.granularity,
          "recovery": pt.recovery, "calibration_batches": pt.calibration_batches, "init_from": record["init_from"],
          "init_step": record["init_step"], "dense": record["dense"], "pruned": record["pruned"],
          "recovered": recovered, "prune_seconds": record["prune_seconds"], "layers": record["layers"]}


def describe(entry: dict) -> str:
  """One line: the test numbers of the dense, pruned and recovered model."""
  def show(m):
    if m is None:
      return "-"
    return (f"perplexity {m['perplexity']:.3f}, " if "perplexity" in m else "") + f"accuracy {m['accuracy']:.4f}"
  return (f"{entry['method']} {entry['distribution']} {entry['granularity']} at {entry['target']:g}: dense "
          f"{show(entry['dense'])}; pruned {show(entry['pruned'])}; recovered ({entry['recovery']}) "
          f"{show(entry['recovered'])}")

