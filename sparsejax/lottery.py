"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding, and the controls that show a ticket is a ticket.

Frankle & Carbin 2019, "The Lottery Ticket Hypothesis": level 0 trains the dense network; each next level removes
`prune_fraction` of the weights that remain (per layer, or globally), rewinds the survivors and trains again, so the
density after L levels is (1 - p)^L. Rewinding (`config.sparsity.rewind`):
  init      reset survivors to their values at step 0 (LTH).
  step      reset params, batch stats, optimizer state and data order to step `rewind_step` (late rewinding; Frankle
            et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"). The snapshot is taken once in
            level 0 and checkpointed.
  lr        keep the trained weights and replay the rest of training from step `rewind_step` (learning-rate
            rewinding; Renda et al. 2020, "Comparing Rewinding and Fine-tuning in Neural Network Pruning").
  finetune  keep the trained weights and optimizer state and train `num_steps - rewind_step` more steps at the end of
            the learning-rate schedule (fine-tuning; Renda et al. 2020).
Controls (`config.sparsity.control`), trained at every level >= 1 from the ticket's masks: `random_reinit` keeps the
masks and draws fresh weights from another seed; `random_mask` keeps the weights and puts the same number of kept
weights per layer at random positions. `both` trains the two.

All levels and controls share one compiled train step: masks change, shapes do not. Every run of a level lives in
`workdir/levels/<level>_<run>/` (checkpoints, metrics.jsonl, result.json), so a killed experiment resumes inside the
level it was in and never redoes a finished one.

The IMP steps themselves are library calls (`sparsejax.tickets`: `next_masks`, `rewind`, `random_mask`,
`random_reinit`, `snapshot`), which a user's own loop makes too; this driver adds the config, the checkpoints, resume
and the results files around them. `train_and_evaluate` finds it by name (`train.DRIVERS`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp

import sparsejax as sj
from sparsejax import checkpoint, report, tickets, validation
from sparsejax import train as train_lib

TICKET = "ticket"
CONTROLS = {"none": (), "random_reinit": ("random_reinit",), "random_mask": ("random_mask",),
            "both": ("random_mask", "random_reinit")}


def layer_fractions(paths, cfg: dict) -> list[float]:
  """Prune fraction of each layer: `prune_fraction`, or the first matching regex of `prune_fraction_overrides`."""
  return tickets.layer_fractions(paths, cfg["prune_fraction"], cfg.get("prune_fraction_overrides"))


def next_masks(params, masks, cfg: dict):
  """The masks of the next IMP level from the config's fields (`sparsejax.tickets.next_masks`): per layer
  (distribution 'uniform', with `prune_fraction_overrides`) or globally ('global', with the `min_density` floor)."""
  per_layer = cfg["distribution"] != "global"
  return tickets.next_masks(params, masks, cfg["prune_fraction"], distribution=cfg["distribution"],
                            overrides=cfg.get("prune_fraction_overrides") if per_layer else None,
                            min_density=cfg["min_density"])


random_masks_like = tickets.random_masks_like


def with_masks(state, masks, params=None):
  """`state` with new masks in its optimizer state and params (default: its own) pruned to them (`tickets.rewind`)."""
  params, opt_state = tickets.rewind(state.params if params is None else params, state.opt_state, masks)
  return state.replace(params=params, opt_state=opt_state)


def check_config(setup: train_lib.Setup) -> dict:
  """The IMP fields, checked by `validation` before anything is built (`validation.check_imp`)."""
  cfg = dict(setup.config.sparsity)
  validation.check_imp(cfg)
  return cfg


class _Best:
  """A MetricsWriter in front of another that remembers the best test accuracy and its step."""

  def __init__(self, writer, extra_best=None):
    self.writer = writer
    self.best = extra_best or {"best_test_accuracy": -1.0, "best_step": 0}

  def write(self, record):
    acc = record.get("test_accuracy")
    if acc is not None and acc > self.best["best_test_accuracy"]:
      self.best = {"best_test_accuracy": acc, "best_step": record["step"]}
    self.writer.write(record)


RANDOM_MASK_STREAM, RANDOM_REINIT_STREAM = tickets.RANDOM_MASK_STREAM, tickets.RANDOM_REINIT_STREAM
control_key = tickets.control_key


def _run_dir(workdir, level, run):
  return os.path.join(workdir, "levels", f"{level:02d}_{run}")


class Lottery:
  """Runs the levels of one IMP experiment in `workdir` (used by `train_and_evaluate` for algorithm 'imp')."""

  def __init__(self, setup: train_lib.Setup, workdir: str):
    self.setup, self.workdir = setup, workdir
    self.cfg = check_config(setup)
    self.training = setup.config.training
    self.num_steps = setup.num_steps
    self.k = 0 if self.cfg["rewind"] == "init" else self.cfg["rewind_step"]
    self.eval_fn = train_lib.make_eval_step(setup.model, setup.mesh)
    self.step_fn = train_lib.make_train_step(setup.model, setup.tx, setup.mesh, self.training.label_smoothing)
    fresh = train_lib.create_train_state(setup.config, setup.model, setup.dataset,
                                         jax.random.PRNGKey(setup.config.seed), setup.tx, setup.mesh)
    # Level 0 trains dense: its all-True masks are installed like any level's (the imp pruner refuses to start
    # without). Training donates the state's buffers: keep a host copy of the initial state and a restore target.
    self.target = checkpoint.abstract_like(fresh)  # the shardings of the jitted init, which every run keeps
    self.initial = _keep(with_masks(fresh, sj.get_masks(fresh.opt_state)))
    self.snapshot = self.initial if self.k == 0 else None

  # -- the state each run starts from -------------------------------------------------------------------------
  def _rewind_manager(self):
    return checkpoint.create_manager(os.path.join(self.workdir, "levels", "rewind"), 1)

  def _save_snapshot(self, state):
    manager = self._rewind_manager()
    checkpoint.save(manager, self.k, state)
    manager.close()
    self.snapshot = _keep(state)

  def _on_devices(self, host_state):
    if jax.process_count() > 1:  # kept on the devices: a copy, since the steps donate what they are given
      host_state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, host_state)
    return jax.device_put(host_state, jax.tree.map(lambda x: x.sharding, self.target))

  def _load_snapshot(self):
    if self.snapshot is None:
      manager = self._rewind_manager()
      self.snapshot = _keep(checkpoint.restore(manager, self.k, self.target))
      manager.close()
    return self._on_devices(self.snapshot)

  def _final_state(self, level, run):
    manager = checkpoint.create_manager(_run_dir(self.workdir, level, run), 1)
    _, state = checkpoint.restore_latest(manager, self.target)
    manager.close()
    return state

  def _start(self, level, run, masks, previous):
    """(state, first step, end step) of a run with `masks`; `previous` is the previous ticket level's final state."""
    rewind = self.cfg["rewind"]
    if rewind == "finetune":
      # `previous` is a host copy: the ticket and each control fine-tune their own device copy of it.
      start, end = self.num_steps, 2 * self.num_steps - self.cfg["rewind_step"]
      state = previous
    else:
      start, end = self.k, self.num_steps
      state = self._load_snapshot()
      if rewind == "lr":  # trained weights with their own BatchNorm statistics; only the schedule is rewound
        state = state.replace(params=previous.params, batch_stats=previous.batch_stats)
    if run == "random_mask":
      masks = tickets.random_mask(masks, self.cfg["seed"], level)
    if run == "random_reinit":
      init = lambda key: train_lib.create_train_state(self.setup.config, self.setup.model, self.setup.dataset,  # noqa: E731
                                                      key, self.setup.tx, self.setup.mesh).params
      state = state.replace(params=tickets.random_reinit(init, masks, self.setup.config.seed, level))
    # on the shardings of the first state, so the compiled step is reused as it is
    return self._on_devices(with_masks(state, jax.tree.map(jnp.asarray, masks))), start, end

  # -- one run ------------------------------------------------------------------------------------------------
  def _train(self, level, run, state, start, end):
    """Trains one run (resuming its own checkpoints); returns (final state, result dict)."""
    run_dir = _run_dir(self.workdir, level, run)
    if report.is_writer():
      report.as_path(run_dir).mkdir(parents=True, exist_ok=True)
    manager = checkpoint.create_manager(run_dir, max(self.training.keep_checkpoints, 1))
    first = start
    resumed, restored = checkpoint.restore_latest(manager, self.target)
    if resumed:
      state = restored
    start = max(start, resumed)
    partial = report.read_json(os.path.join(run_dir, "best.json"))
    with report.MetricsWriter(run_dir, start, self.training.tensorboard) as writer:
      best = _Best(writer, partial if resumed else None)
      t0, offset = time.time(), (writer.previous[-1]["wall_seconds"] if writer.previous else 0.0)
      clock = lambda: offset + time.time() - t0  # noqa: E731
      progress = report.Progress(self.training.progress, start, end, desc=f"level {level} {run}")
      hooks = train_lib.standard_hooks(self.setup, self.eval_fn, best, progress, end, clock, None,
                                       extra={"level": level, "run": run})

      def save(step, state, metrics):
        del metrics
        if train_lib.is_due(step, self.training.checkpoint_every, end):
          report.write_json(os.path.join(run_dir, "best.json"), best.best)
          checkpoint.save(manager, step, state)

      def snapshot(step, state, metrics):
        del metrics
        if level == 0 and run == TICKET and step == self.k and self.k > 0:
          self._save_snapshot(state)

      state = train_lib.train_loop(state, self.step_fn, self.setup.dataset, self.training.batch_size,
                                   self.setup.mesh, start, end, [snapshot, *hooks, save])
      progress.close()
    manager.close()
    summary = train_lib.current_sparsity(state, self.setup.config.sparsity.stacked)
    split = "test" if "test" in self.setup.dataset.splits else train_lib.eval_splits(self.setup.dataset)[-1]
    test = train_lib.evaluate(self.eval_fn, state, self.setup.dataset, split, self.training.eval_batch_size,
                              self.setup.mesh)
    result = {"level": level, "run": run, "sparsity": summary["total"]["sparsity"], "nnz": summary["total"]["nnz"],
              "test_accuracy": test["accuracy"], "test_loss": test["loss"], **best.best, "steps": end - first,
              "wall_seconds": clock(),
              "layers": {p: {"sparsity": d["sparsity"], "nnz": d["nnz"]} for p, d in summary["layers"].items()}}
    report.write_json(os.path.join(run_dir, "result.json"), result)
    return state, result

  def run(self, on_level=None) -> dict:
    """All levels (and controls); returns results.json with one `levels` entry per level.

    Args:
      on_level: optional callback, called with the list of finished level entries after each level.
    """
    levels, parent, final = [], None, None
    t0 = time.time()
    for level in range(self.cfg["levels"] + 1):
      if level == 0:
        masks = sj.get_masks(self.initial.opt_state)
      else:  # the previous ticket level's trained weights decide this level's masks
        masks = next_masks(parent.params, sj.get_masks(parent.opt_state), self.cfg)
      masks = _keep(masks)  # on the host: every run gets its own device copy (steps donate their state)
      entry = None
      for run in (TICKET,) + (CONTROLS[self.cfg["control"]] if level else ()):
        done = report.read_json(os.path.join(_run_dir(self.workdir, level, run), "result.json"))
        if done is None:
          if level == 0:
            state, start, end = self._on_devices(self.initial), 0, self.num_steps
          else:
            state, start, end = self._start(level, run, masks, parent)
          state, done = self._train(level, run, state, start, end)
          if run == TICKET:
            final = _keep(state)  # on the host: the next level's runs each take a device copy
        elif run == TICKET:
          final = _keep(self._final_state(level, run))
        if run == TICKET:
          entry = {k: done[k] for k in ("level", "sparsity", "nnz", "test_accuracy", "test_loss",
                                        "best_test_accuracy", "best_step", "layers")}
          entry["controls"] = {}
        else:
          entry["controls"][run] = {k: done[k] for k in ("sparsity", "test_accuracy", "best_test_accuracy",
                                                         "best_step")}
        if report.is_writer():
          print(_level_line(done), flush=True)
      parent = final
      levels.append(entry)
      report.write_json(os.path.join(self.workdir, "levels.json"), levels)
      if on_level is not None:
        on_level(levels)
    results = train_lib.final_results(self.setup, self.eval_fn, self._on_devices(final), time.time() - t0, levels)
    self._merge_metrics()
    return results

  def _merge_metrics(self):
    records = []
    root = os.path.join(self.workdir, "levels")
    if not report.is_writer():
      return
    for name in sorted(p.name for p in report.as_path(root).iterdir()):
      if name != "rewind":
        records += report.read_metrics(os.path.join(root, name))
    report.write_file(report.as_path(self.workdir) / report.METRICS_FILE,
                      "".join(json.dumps(r) + "\n" for r in records))


_keep = tickets.snapshot  # a copy that outlives the donated train state


class _Frozen(dict):
  """A hashable dict, so the config can be a static argument of jit."""

  def __hash__(self):
    return hash(json.dumps(self, sort_keys=True, default=str))


def _level_line(result: dict) -> str:
  return (f"level {result['level']:2d} {result['run']:13s} sparsity {result['sparsity']:.4f}  "
          f"test accuracy {result['test_accuracy']:.4f}  best {result['best_test_accuracy']:.4f} "
          f"at step {result['best_step']}")


def plot_levels(workdir: str, levels: list[dict], reference: Optional[dict] = None) -> str:
  """lottery.png: test accuracy (final and best) against the fraction of weights remaining, log axis, tickets and
  controls on one figure; `reference` {label: [(fraction remaining, accuracy), ...]} adds published points."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  remaining = [1.0 - lv["sparsity"] for lv in levels]
  ax.plot(remaining, [lv["best_test_accuracy"] for lv in levels], "o-", color="C0", label="ticket (best)")
  ax.plot(remaining, [lv["test_accuracy"] for lv in levels], "o--", color="C0", alpha=0.5, label="ticket (final)")
  kinds = sorted({k for lv in levels for k in lv.get("controls", {})})
  for i, kind in enumerate(kinds):
    rows = [lv for lv in levels if kind in lv.get("controls", {})]
    ax.plot([1.0 - lv["controls"][kind]["sparsity"] for lv in rows],
            [lv["controls"][kind]["best_test_accuracy"] for lv in rows], "s-", color=f"C{i + 1}",
            label=f"{kind} (best)")
  for i, (label, points) in enumerate((reference or {}).items()):
    ax.plot([p[0] for p in points], [p[1] for p in points], "x", color=f"C{i + 4}", markersize=9, label=label)
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("fraction of weights remaining")
  ax.set_ylabel("test accuracy")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = report.as_path(workdir) / "lottery.png"
  if report.is_writer():
    with path.open("wb") as f:
      fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return os.fspath(path)


def run_lottery(config, workdir: str, setup: Optional[train_lib.Setup] = None, on_level=None,
                reference: Optional[dict] = None) -> dict:
  """IMP levels of `config` in `workdir` (resuming); writes results.json, metrics.jsonl, lottery.png.

  Every config error is raised before anything is compiled or written. `on_level` is passed to `Lottery.run`;
  `reference` (published points) to `plot_levels`.
  """
  config = validation.validate(config, workdir)
  resuming = report.check_workdir(workdir, config)
  finished = report.read_json(os.path.join(workdir, "levels.json")) if resuming else None
  if finished and len(finished) > config.sparsity.levels + 1:
    raise validation.ConfigError(
        f"config.sparsity.levels: got {config.sparsity.levels}; accepted values: an int >= {len(finished) - 1} in "
        f"this workdir, which holds {len(finished) - 1} finished levels (use a new workdir for fewer: results.json, "
        "levels.json and the plot are not rewritten with fewer levels)")
  setup = setup or train_lib.build(config, workdir)
  lottery_cfg = check_config(setup)
  del lottery_cfg
  results = report.read_results(workdir) if resuming else None
  if results is not None and len(results.get("levels", [])) == setup.config.sparsity.levels + 1:
    if report.is_writer():
      print(report.format_results(results), flush=True)
    return results
  report.write_config(workdir, setup.config)
  results = Lottery(setup, workdir).run(on_level)
  report.write_results(workdir, results)
  plot_levels(workdir, results["levels"], reference)
  if report.is_writer():
    print(report.format_results(results), flush=True)
  return results
