"""One validation layer for an experiment: every section of a config, the fields across sections, and the workdir.

`validate(config, workdir)` runs before anything is built, compiled or written: the top level, `training`, `mesh` and
`posttrain` (`config_validation`), `sparsity` (`sparsejax.config`), `model` (the zoo's options), `data` (the dataset's
options), then the checks across sections (post-training pruning's options, `init_from`: a run of the same model with
a checkpoint) and the workdir. `check_data(config, num_train, num_steps)` adds the checks that need
the dataset's size, right after the dataset is opened and before anything is compiled or written. Every error is a
`ConfigError` naming the field, the value and the accepted values; the launcher prints it and exits with status 2.

>>> validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"}, "training": {"num_steps": 100},
...           "sparsity": {"algorithm": "gmp", "target": 0.9, "end_step": 100}})
Traceback (most recent call last):
...
sparsejax.validation.ConfigError: config.sparsity.end_step: got 100; accepted values: an int < config.training.num_steps = 100 for 'gmp' (its last mask update runs at end_step; at 100 the run ends before it)
"""
from __future__ import annotations

import difflib
import os
import sys
from typing import Any, Optional

from etils import epath
import ml_collections

from sparsejax import config as sparsity_config
from sparsejax import config_validation
from sparsejax import report

# Sparsity fields that only some algorithms read: set to anything but the default for another algorithm, a warning
# says the value is not used (configs derived from others carry fields they do not need, so it is not an error).
APPLIES = {
    "levels": ("imp",), "prune_fraction": ("imp",), "rewind": ("imp",), "rewind_step": ("imp",),
    "prune_fraction_overrides": ("imp",), "control": ("imp",),
    "drop_fraction": ("set", "rigl", "granet"), "drop_schedule": ("set", "rigl", "granet"),
    "initial": ("granet",), "regrow_end_step": ("granet",),
    "iterations": ("synflow",), "num_batches": ("snip", "grasp"), "temperature": ("grasp",),
    "initial_sparsity": ("gmp", "granet", "movement"), "power": ("gmp", "granet", "movement"),
    "update_every": ("gmp", "set", "rigl", "granet", "movement"),
}
# Algorithms whose last mask update is at end_step, which must therefore fall inside the run.
SCHEDULED_TO_END = ("gmp", "set", "rigl", "granet", "movement")


class ConfigError(ValueError):
  """A bad config field or workdir: the message names the field, the value and the accepted values."""


def close_names(name: str, candidates) -> str:
  """' (did you mean a or b?)' for the candidates close to a misspelled `name`, or ''."""
  close = difflib.get_close_matches(name, list(candidates), n=3)
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


STACKED_BLOCKS = (r"(^|/)blocks/",)


def _sparsity(config: ml_collections.ConfigDict) -> dict:
  from sparsejax import pruners  # pylint: disable=g-import-not-at-top (pruners import sparsejax.config)
  raw = config.sparsity.to_dict() if hasattr(config.sparsity, "to_dict") else dict(config.sparsity)
  if raw.get("seed") is None:  # random masks follow the experiment's seed unless the sparsity section sets its own
    raw["seed"] = config.seed
  if raw.get("stacked") is None and config.model.get("scan", None):
    # The zoo's scanned models stack their blocks' params under `blocks/` (sparsejax.models.transformer): each of the
    # depth slices is pruned, counted and reported as its own layer, as in the unscanned model (`()` turns this off).
    raw["stacked"] = STACKED_BLOCKS
  cfg = sparsity_config.validate(raw, tuple(pruners.REGISTRY))
  algorithm = cfg["algorithm"]
  for field, users in APPLIES.items():
    if algorithm not in users and cfg[field] != sparsity_config.DEFAULTS[field] and field in raw:
      _warn(f"config.sparsity.{field}={cfg[field]!r} is not used by algorithm {algorithm!r} (it applies to "
            f"{', '.join(users)})")
  return cfg


def _model(config) -> None:
  from sparsejax import models  # pylint: disable=g-import-not-at-top (flax, only when validating an experiment)
  name = config.model.name
  if name not in models.MODELS:
    raise ConfigError(f"config.model.name: got {name!r}{close_names(name, models.MODELS)}; accepted values: "
                      f"{sorted(models.MODELS)}")
  accepted = models.model_kwargs(name)
  for key, value in config.model.items():
    if key != "name" and value is not None and key not in accepted:
      raise ConfigError(f"config.model.{key}: unknown option of model {name!r}{close_names(key, accepted)}; "
                        f"accepted fields: {['name'] + sorted(accepted)}")


def _data(config) -> None:
  from sparsejax import data  # pylint: disable=g-import-not-at-top
  data.resolve_options(config.data)


def check_imp(cfg: dict) -> None:
  """What iterative magnitude pruning supports."""
  if cfg["algorithm"] != "imp":
    return
  if cfg["levels"] < 1:
    raise ConfigError(f"config.sparsity.levels: got {cfg['levels']}; accepted values: an int >= 1 for algorithm "
                      "'imp'")
  if cfg["distribution"] not in ("uniform", "global"):
    raise ConfigError(f"config.sparsity.distribution: got {cfg['distribution']!r}; accepted values for 'imp': "
                      "'uniform' (per layer) or 'global'")
  if cfg["granularity"] != "unstructured":
    raise ConfigError(f"config.sparsity.granularity: got {cfg['granularity']!r}; accepted values for 'imp': "
                      "'unstructured'")


def check_posttrain(config) -> None:
  """`config.posttrain` against itself (`sparsejax.posttrain.check_options`) and the other sections: it prunes the
  trained weights of `init_from`, and fixes the masks itself (`sparsity.algorithm` 'dense')."""
  pt = config.posttrain
  if pt.method is None:
    changed = [k for k, v in pt.items() if k != "method" and v != config_validation.POSTTRAIN_DEFAULTS[k]]
    if changed:
      _warn(f"config.posttrain.{changed[0]}={pt[changed[0]]!r} is not used: config.posttrain.method is None "
            "(post-training pruning is off)")
    return
  from sparsejax import posttrain  # pylint: disable=g-import-not-at-top (flax, only when it is used)
  posttrain.check_options(pt.method, pt.target, pt.distribution, pt.granularity, pt.block_size, pt.damp,
                          pt.owl_lambda, pt.owl_m, where="config.posttrain.")
  if config.init_from is None:
    raise ConfigError(f"config.init_from: got None with config.posttrain.method {pt.method!r}; accepted values: the "
                      "workdir of an earlier run of the same model (post-training pruning prunes its trained weights)")
  if config.sparsity.algorithm != "dense":
    raise ConfigError(f"config.sparsity.algorithm: got {config.sparsity.algorithm!r} with config.posttrain.method "
                      f"{pt.method!r}; accepted values: 'dense' (post-training pruning chooses the masks itself and "
                      "keeps them fixed while it recovers)")


def check_init_from(config, workdir: Optional[Any] = None) -> None:
  """`config.init_from`: None, or the workdir of an earlier run of the same model (every `config.model` field equal)
  that holds a checkpoint, and not this run's own workdir."""
  src = config.init_from
  if src is None:
    return
  accepted = "accepted values: None or the workdir of an earlier run of the same model, holding a checkpoint"
  if config.sparsity.algorithm == "imp":
    raise ConfigError(f"config.init_from: got {src!r} with config.sparsity.algorithm 'imp'; accepted values: None "
                      "(IMP rewinds every level to its own initialisation)")
  path = report.as_path(src)
  if not path.is_dir():
    raise ConfigError(f"config.init_from: got {src!r}, which is not a directory; {accepted}")
  if workdir is not None and not report.is_remote(src) and not report.is_remote(workdir) and (
      os.path.realpath(src) == os.path.realpath(os.fspath(workdir))):
    raise ConfigError(f"config.init_from: got {src!r}, which is this run's own --workdir; {accepted}")
  try:
    previous = report.read_json(path / report.CONFIG_FILE)
  except ValueError as e:  # json.JSONDecodeError
    raise ConfigError(f"config.init_from: got {src!r}, whose {report.CONFIG_FILE} cannot be read ({e}); "
                      f"{accepted}") from None
  if not isinstance(previous, dict) or not isinstance(previous.get("model"), dict):
    raise ConfigError(f"config.init_from: got {src!r}, which holds no {report.CONFIG_FILE} of a sparsejax run; "
                      f"{accepted}")
  old = report.flatten(previous["model"])
  new = report.flatten(report.config_to_dict(config.model))
  differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  if differ:
    k = differ[0]
    raise ConfigError(f"config.model.{k}: got {new.get(k)!r}, but the run at config.init_from={src!r} has "
                      f"{old.get(k)!r}; accepted values: {old.get(k)!r} (init_from must be a run of the same model"
                      f"{'; also differ: ' + ', '.join('config.model.' + d for d in differ[1:]) if differ[1:] else ''})")
  from sparsejax import checkpoint  # pylint: disable=g-import-not-at-top (orbax)
  if checkpoint.latest_step(src) is None:
    raise ConfigError(f"config.init_from: got {src!r}, which holds no checkpoint (checkpoints/<step>); {accepted}")


def _across_sections(config, cfg: dict) -> None:
  check_imp(cfg)
  num_steps = config.training.num_steps
  if num_steps is None:  # in epochs: checked by check_data once the dataset's size is known
    return
  _check_steps(cfg, num_steps, "config.training.num_steps")


def _check_steps(cfg: dict, num_steps: int, what: str) -> None:
  algorithm = cfg["algorithm"]
  if algorithm in SCHEDULED_TO_END and cfg["end_step"] >= num_steps:
    raise ConfigError(f"config.sparsity.end_step: got {cfg['end_step']}; accepted values: an int < {what} = "
                      f"{num_steps} for {algorithm!r} (its last mask update runs at end_step; at {cfg['end_step']} "
                      "the run ends before it)")
  if algorithm == "oneshot" and cfg["begin_step"] >= num_steps:
    raise ConfigError(f"config.sparsity.begin_step: got {cfg['begin_step']}; accepted values: an int < {what} = "
                      f"{num_steps} for 'oneshot' (the step it prunes at)")
  if algorithm == "imp" and cfg["rewind"] != "init" and cfg["rewind_step"] >= num_steps:
    raise ConfigError(f"config.sparsity.rewind_step: got {cfg['rewind_step']}; accepted values: an int < {what} = "
                      f"{num_steps} for rewind {cfg['rewind']!r}")


def _check_remote_workdir(workdir: str) -> str:
  """A `scheme://` workdir (gs://, s3://, ...), checked with what epath can tell: a supported scheme whose filesystem
  package is installed, and no file at the path or at a parent of it.

  The POSIX checks of a local workdir (write permission and owner) are skipped: an object store has neither mode bits
  nor directories (a "directory" is a name prefix), so a missing permission surfaces as the error of the first write.
  Whether the workdir holds our config.json, and the same config, is checked by `report.check_workdir` for every path.
  """
  scheme, rest = workdir.split("://", 1)
  names = [name for name in rest.split("/") if name]
  try:
    epath.Path(workdir)
  except KeyError:
    raise ConfigError(f"--workdir: got {workdir!r}, whose scheme epath does not know; accepted values: a local "
                      "directory path or a gs://, s3://, az:// or hf:// URI") from None
  if not names:
    raise ConfigError(f"--workdir: got {workdir!r}; accepted values: a URI naming a bucket and a directory in it")
  try:
    # The workdir, else its nearest existing parent (up to the bucket), must be a directory, not a file.
    for depth in range(len(names), 0, -1):
      path = epath.Path(f"{scheme}://{'/'.join(names[:depth])}")
      if path.exists():
        if not path.is_dir():
          raise ConfigError(f"--workdir: got {workdir!r}, which is a file or lies under the file {os.fspath(path)!r}; "
                            "accepted values: a directory path")
        break
    return workdir
  except ConfigError:
    raise
  except ImportError as e:
    raise ConfigError(f"--workdir: got {workdir!r}, which needs a filesystem package that is not installed ({e}); "
                      "install the package it names (gcsfs for gs://, s3fs for s3://) or tensorflow") from None
  except Exception as e:  # pylint: disable=broad-except (each remote filesystem raises its own kinds: auth, HTTP, ...)
    raise ConfigError(f"--workdir: got {workdir!r}, which cannot be read: {type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}; accepted values: a URI this machine can read and "
                      "write") from None


def check_workdir_path(workdir: Any) -> str:
  """The workdir as a string, refused when it cannot hold a run: empty, a file, or a directory we cannot write.

  A local path gets every check (a file, a path under a file, a directory this user cannot write); a remote one
  (`gs://bucket/run`) those that epath can do (see `_check_remote_workdir`).
  """
  if not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir).strip():
    raise ConfigError(f"--workdir: got {workdir!r}; accepted values: a directory path (created when missing)")
  workdir = os.fspath(workdir)
  if report.is_remote(workdir):
    return _check_remote_workdir(workdir)
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ConfigError(f"--workdir: got {workdir!r}, which is a file; accepted values: a directory path")
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise ConfigError(f"--workdir: got {workdir!r}, a directory this user cannot write; accepted values: a "
                        "writable directory")
    return workdir
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir: got {workdir!r}, which cannot be created under {parent!r}; accepted values: a "
                      "directory path in a writable place")
  return workdir


def validate(config: Any, workdir: Optional[Any] = None) -> ml_collections.ConfigDict:
  """The resolved config (every default filled in, `sparsity` included), or a ConfigError.

  Args:
    config: a ConfigDict or nested dict laid out as in configs/default.py.
    workdir: checked too when given (see `check_workdir_path`).
  """
  try:
    resolved = config_validation.validate(config)
    cfg = _sparsity(resolved)
    _model(resolved)
    _data(resolved)
    _across_sections(resolved, cfg)
    resolved.sparsity = ml_collections.ConfigDict(cfg)
    check_posttrain(resolved)
    check_init_from(resolved, workdir)
  except ConfigError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if workdir is not None:
    check_workdir_path(workdir)
  return resolved


def check_data(config: ml_collections.ConfigDict, num_train: int, num_steps: int) -> None:
  """The checks that need the dataset: a batch no larger than the training set, schedules inside the run."""
  batch_size = config.training.batch_size
  if batch_size > num_train:
    raise ConfigError(f"config.training.batch_size: got {batch_size}; accepted values: an int <= {num_train}, the "
                      f"number of training examples of {config.data.name}")
  _check_steps(dict(config.sparsity), num_steps, "the number of training steps")
