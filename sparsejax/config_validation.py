"""Checks of the experiment config (top level, `training`, `mesh`, `posttrain`) before anything compiles or writes.

`config.sparsity` is checked by `sparsejax.create_pruner`, `config.model` and `config.data` by their factories; this
module owns the rest. Missing training / mesh / posttrain fields take the defaults below, which are the values written
out in `configs/default.py`. Durations are converted to steps in one place, `num_train_steps`.

>>> config = validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"}, "training": {"num_steps": 10}})
>>> config.training.optimizer, config.mesh.data_parallel
('momentum', 1)
>>> num_train_steps(validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"},
...                           "training": {"num_epochs": 2.5, "batch_size": 100}}).training, num_train=1000)
25
"""
from __future__ import annotations

import difflib
import importlib.util
import math
from typing import Any, Callable, Mapping

import ml_collections

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
LR_SCHEDULES = ("constant", "step", "cosine", "warmup_cosine")
PROGRESS = ("auto", "bar", "lines", "none")
TOP_LEVEL = ("seed", "init_from", "model", "data", "training", "sparsity", "mesh", "posttrain")
POSTTRAIN_METHODS = ("magnitude", "wanda", "sparsegpt")
RECOVERIES = ("none", "sparse", "bias_norm")

TRAINING_DEFAULTS = {
    "batch_size": 128,
    "num_steps": None,
    "num_epochs": None,
    "optimizer": "momentum",
    "learning_rate": 0.1,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "lr_boundaries": (0.5, 0.75),
    "lr_decay_factor": 0.1,
    "label_smoothing": 0.0,
    "eval_batch_size": 1000,
    "eval_every": 0,
    "log_every": 100,
    "checkpoint_every": 1000,
    "keep_checkpoints": 2,
    "async_checkpoint": True,
    "progress": "auto",
    "tensorboard": False,
}
# Post-training pruning (sparsejax.posttrain_run); method None: off. Options across fields (a target that an n:m
# granularity fixes, OWL's lambda against the target) are checked by `sparsejax.validation`.
POSTTRAIN_DEFAULTS = {
    "method": None,
    "target": 0.5,
    "distribution": "uniform",
    "granularity": "unstructured",
    "calibration_batches": 8,
    "block_size": 128,
    "damp": 0.01,
    "owl_lambda": 0.08,
    "owl_m": 5.0,
    "recovery": "none",
}
MESH_DEFAULTS = {"data_parallel": 1, "fsdp": 1, "model": 1, "rules": (), "fsdp_min_size": 2**14, "multihost": False}


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int_at_least(lo: int) -> tuple[Callable, str]:
  return (lambda v: _is_int(v) and v >= lo), f"an int >= {lo}"


def _number_in(lo: float, hi: float, hi_open: bool = True, lo_open: bool = False) -> tuple[Callable, str]:
  def ok(v):
    return _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
  return ok, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _choice(values) -> tuple[Callable, str]:
  return (lambda v: v in values), f"one of {list(values)}"


def _boundaries(v) -> bool:
  v = list(v) if isinstance(v, (list, tuple)) else None
  return v is not None and all(_is_number(b) and 0 < b < 1 for b in v) and all(a < b for a, b in zip(v, v[1:]))


_TRAINING_CHECKS = {
    "batch_size": _int_at_least(1),
    "num_steps": ((lambda v: v is None or (_is_int(v) and v >= 1)), "None or an int >= 1"),
    "num_epochs": ((lambda v: v is None or (_is_number(v) and v > 0)), "None or a number > 0"),
    "optimizer": _choice(OPTIMIZERS),
    "learning_rate": _number_in(0.0, math.inf, lo_open=True),
    "momentum": _number_in(0.0, 1.0),
    "weight_decay": _number_in(0.0, math.inf),
    "lr_schedule": _choice(LR_SCHEDULES),
    "warmup_steps": _int_at_least(0),
    "lr_boundaries": (_boundaries, "a list of increasing fractions of training, each in (0, 1)"),
    "lr_decay_factor": _number_in(0.0, 1.0, hi_open=False, lo_open=True),
    "label_smoothing": _number_in(0.0, 1.0),
    "eval_batch_size": _int_at_least(1),
    "eval_every": _int_at_least(0),
    "log_every": _int_at_least(0),
    "checkpoint_every": _int_at_least(0),
    "keep_checkpoints": _int_at_least(1),
    "async_checkpoint": ((lambda v: isinstance(v, bool)), "True or False"),
    "progress": _choice(PROGRESS),
    "tensorboard": ((lambda v: isinstance(v, bool)), "True or False"),
}
_POSTTRAIN_CHECKS = {
    "method": ((lambda v: v is None or v in POSTTRAIN_METHODS), f"None (off) or one of {list(POSTTRAIN_METHODS)}"),
    "target": _number_in(0.0, 1.0),
    "distribution": _choice(("uniform", "owl")),
    "granularity": ((lambda v: isinstance(v, str)), "'unstructured' or 'N:M' (e.g. '2:4', '4:8')"),
    "calibration_batches": _int_at_least(1),
    "block_size": _int_at_least(1),
    "damp": _number_in(0.0, math.inf),
    "owl_lambda": _number_in(0.0, 0.5),
    "owl_m": _number_in(0.0, math.inf),
    "recovery": _choice(RECOVERIES),
}


def _rules(v) -> bool:
  from sparsejax import parallel  # pylint: disable=g-import-not-at-top (parallel imports jax devices lazily only)
  parallel.parse_rules(v)  # raises with the rule's index and what is wrong
  return True


_AXIS_SIZE = ((lambda v: _is_int(v) and (v == -1 or v >= 1)), "-1 (the remaining devices) or an int >= 1")
_MESH_CHECKS = {
    "data_parallel": _AXIS_SIZE,
    "fsdp": _AXIS_SIZE,
    "model": _AXIS_SIZE,
    "rules": (_rules, "a sequence of (regex, PartitionSpec) pairs"),
    "fsdp_min_size": _int_at_least(0),
    "multihost": ((lambda v: isinstance(v, bool)), "True or False"),
}


def _as_dict(section, name: str) -> dict:
  if isinstance(section, ml_collections.ConfigDict):
    return section.to_dict()
  if isinstance(section, Mapping):
    return dict(section)
  raise ValueError(f"config.{name}: expected a ConfigDict or a dict, got {type(section).__name__}")


def _check_section(name: str, section, defaults: dict, checks: dict) -> dict:
  values = dict(defaults)
  for key, value in _as_dict(section, name).items():
    if key not in checks:
      close = difflib.get_close_matches(key, list(checks), n=3)
      hint = f" (did you mean {' or '.join(close)}?)" if close else ""
      raise ValueError(f"config.{name}.{key}: unknown field{hint}; accepted fields are {sorted(checks)}")
    ok, accepted = checks[key]
    if not ok(value):
      raise ValueError(f"config.{name}.{key}: got {value!r}; accepted values: {accepted}")
    values[key] = value
  return values


def _check_training(training: dict) -> None:
  if (training["num_steps"] is None) == (training["num_epochs"] is None):
    raise ValueError("config.training.num_steps / config.training.num_epochs: set exactly one of them (got "
                     f"num_steps={training['num_steps']!r}, num_epochs={training['num_epochs']!r})")
  if training["tensorboard"] and importlib.util.find_spec("tensorboardX") is None:
    raise ValueError("config.training.tensorboard: got True; accepted values: False, or True with tensorboardX "
                     "installed (pip install 'sparsejax[tensorboard]')")
  if training["lr_schedule"] == "warmup_cosine" and training["warmup_steps"] < 1:
    raise ValueError("config.training.warmup_steps: lr_schedule 'warmup_cosine' needs warmup_steps >= 1 "
                     "(or use lr_schedule 'cosine')")


def validate(config: Any) -> ml_collections.ConfigDict:
  """Checks the top level, `training` and `mesh`, filling in missing training / mesh fields.

  Args:
    config: a ConfigDict or a nested dict.

  Returns:
    A new ConfigDict; the input is not modified.

  Raises:
    ValueError: an unknown field or a value out of range, naming the field and the accepted values.
  """
  top = _as_dict(config, "<top level>")
  unknown = sorted(set(top) - set(TOP_LEVEL))
  if unknown:
    raise ValueError(f"config.{unknown[0]}: unknown top-level field; accepted fields are {list(TOP_LEVEL)}")
  for name in ("model", "data"):
    section = _as_dict(top.get(name, {}), name)
    if not isinstance(section.get("name"), str):
      raise ValueError(f"config.{name}.name: required, a string (got {section.get('name')!r})")
  seed = top.get("seed", 0)
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"config.seed: got {seed!r}; accepted values: an int >= 0")
  init_from = top.get("init_from", None)
  if init_from is not None and (not isinstance(init_from, str) or not init_from.strip()):
    raise ValueError(f"config.init_from: got {init_from!r}; accepted values: None or the workdir of an earlier run "
                     "of the same model")
  training = _check_section("training", top.get("training", {}), TRAINING_DEFAULTS, _TRAINING_CHECKS)
  _check_training(training)
  training["lr_boundaries"] = list(training["lr_boundaries"])
  mesh = _check_section("mesh", top.get("mesh", {}), MESH_DEFAULTS, _MESH_CHECKS)
  if mesh["multihost"]:
    from sparsejax import parallel  # pylint: disable=g-import-not-at-top
    parallel.distributed_args()  # the JAX_* variables, checked before anything is built or written
  ways = mesh["data_parallel"] * mesh["fsdp"]  # known here unless one is -1 (then checked with the mesh)
  for key in ("batch_size", "eval_batch_size"):
    if ways > 1 and training[key] % ways:
      raise ValueError(f"config.training.{key}: {training[key]} is not divisible by config.mesh.data_parallel x "
                       f"config.mesh.fsdp = {ways}")
  from sparsejax import parallel  # pylint: disable=g-import-not-at-top
  # written out as JSON: [regex, [axis name, None or a list of names per dimension]]
  mesh["rules"] = [[pattern, [list(e) if isinstance(e, tuple) else e for e in spec]]
                   for pattern, spec in parallel.parse_rules(mesh["rules"])]
  posttrain = _check_section("posttrain", top.get("posttrain", {}), POSTTRAIN_DEFAULTS, _POSTTRAIN_CHECKS)
  resolved = dict(top, seed=seed, init_from=init_from, training=training, mesh=mesh, posttrain=posttrain)
  resolved.setdefault("sparsity", {"algorithm": "dense"})
  return ml_collections.ConfigDict(resolved)


def num_train_steps(training, num_train: int) -> int:
  """Total optimizer steps: `num_steps`, or `num_epochs` passes over `num_train` examples, rounded up.

  Raises:
    ValueError: warmup as long as training.
  """
  if training.num_steps is not None:
    steps = int(training.num_steps)
  else:
    steps = max(1, math.ceil(training.num_epochs * num_train / training.batch_size))
  if training.warmup_steps >= steps:
    raise ValueError(f"config.training.warmup_steps: {training.warmup_steps} must be smaller than the number of "
                     f"training steps ({steps})")
  return steps
