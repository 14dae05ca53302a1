"""The sparsity section of a config: defaults, and validation with errors that name the field and accepted values.

Every field is checked before anything is compiled or written. `validate` returns a plain dict with defaults filled in.
"""
from __future__ import annotations

import difflib
import math
import numbers
import re
from typing import Any, Mapping

from sparsejax import distributions, granularity, schedules, select

DEFAULTS: dict[str, Any] = {
    "algorithm": "dense",
    "target": 0.0,             # final sparsity of the prunable weights
    "distribution": "uniform",
    "granularity": "unstructured",
    "layout": "flax",           # kernel layout: 'flax' (..., in, out) or 'torch' (out, in, ...) (Equinox, PyTorch)
    "nm_axis": None,            # axis of the groups of m for 'n:m'; None: the layout's input axis
    "channel_axis": None,       # output axis that 'channel' keeps or prunes whole; None: the layout's output axis
    "prunable": None,           # regexes over param paths, first match wins, '!' excludes; None: the default rule
                                # (ndim >= 2, not a bias, no path part containing 'embed')
    "stacked": None,            # regexes over param paths whose axis 0 stacks layers (nn.scan): each slice is a layer
                                # for distributions, granularities, min_density and summaries; None: none (the
                                # engine uses the zoo's scanned models' own)
    "min_density": 0.0,         # per-layer floor (distribution 'global')
    "selection": "auto",        # auto | packed | per_layer | sort: top-k on all layers packed together, layer by
                                # layer where the shards are (sharded params), or by one sort (fewest kernels to
                                # compile); auto: per_layer under a mesh, sort up to 2**20 weights, else packed
    "overrides": None,          # {regex: sparsity} fixed per-layer sparsities (per-layer distributions)
    "begin_step": 0,
    "end_step": None,           # None: begin_step (oneshot); gradual and regrowth methods need end_step > begin_step
    "update_every": 100,
    "initial_sparsity": 0.0,    # gmp: s_i of Zhu & Gupta
    "power": 3.0,               # gmp: exponent of the polynomial schedule
    "seed": None,               # PRNG seed of random scores, growth and masks; None: the experiment's config.seed (0)
    # imp (lottery tickets)
    "levels": 0,
    "prune_fraction": 0.2,
    "rewind": "init",           # init | step | lr | finetune
    "rewind_step": 0,
    "prune_fraction_overrides": None,  # {regex: fraction} per-layer prune fractions (e.g. 0.1 for the output layer)
    "control": "none",          # none | random_reinit | random_mask | both
    # set, rigl, granet
    "drop_fraction": 0.3,
    "drop_schedule": "cosine",
    "init_distribution": "erk",  # distribution of the initial random mask of sparse-to-sparse methods
    "initial": "dense",          # granet: dense (dense-to-sparse) | sparse (sparse-to-sparse, random ERK start)
    "regrow_end_step": None,     # granet: regrowth stops here, T_end of its drop schedule; None: end_step
    # pruning at initialisation
    "iterations": 100,          # synflow rounds
    "num_batches": 1,           # snip / grasp batches
    "temperature": 200.0,       # grasp logit temperature
}

# Algorithms whose schedule runs from begin_step to end_step.
GRADUAL = ("gmp", "set", "rigl", "granet", "movement")
# Algorithms that drop and regrow weights at update steps.
REGROWTH = ("set", "rigl", "granet")

CHOICES = {
    "selection": select.MODES,
    "distribution": distributions.DISTRIBUTIONS,
    "rewind": ("init", "step", "lr", "finetune"),
    "control": ("none", "random_reinit", "random_mask", "both"),
    "drop_schedule": schedules.DROP_SCHEDULES,
    "init_distribution": distributions.DISTRIBUTIONS[:3],
    "initial": ("dense", "sparse"),
}


def _as_dict(config) -> dict:
  if hasattr(config, "to_dict"):
    return config.to_dict()
  if isinstance(config, Mapping):
    return dict(config)
  raise ValueError(f"config.sparsity must be a ConfigDict or a dict, got {type(config).__name__}")


def _check_number(cfg, field, lo, hi, integer=False, lo_open=False, hi_open=False):
  v = cfg[field]
  ok_type = isinstance(v, numbers.Integral) if integer else isinstance(v, numbers.Real)
  lb, rb = "(" if lo_open else "[", ")" if hi_open or hi is None else "]"
  accepted = f"{'an int' if integer else 'a finite number'} in {lb}{lo}, {'inf' if hi is None else hi}{rb}"
  bad = isinstance(v, bool) or not ok_type or not math.isfinite(v)
  if not bad:
    bad = (v <= lo if lo_open else v < lo) or (hi is not None and (v >= hi if hi_open else v > hi))
  if bad:
    raise ValueError(f"config.sparsity.{field}: got {v!r}; accepted values: {accepted}")


def validate(config, algorithms) -> dict:
  """Defaults filled in and every field checked; `algorithms` are the accepted algorithm names."""
  cfg = _as_dict(config)
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    close = difflib.get_close_matches(unknown[0], list(DEFAULTS), n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ValueError(f"config.sparsity.{unknown[0]}: unknown field{hint}; accepted fields are {sorted(DEFAULTS)}")
  given = set(cfg)
  cfg = {**DEFAULTS, **cfg}
  if cfg["algorithm"] not in algorithms:
    raise ValueError(f"config.sparsity.algorithm: got {cfg['algorithm']!r}, which is not one of the accepted values "
                     f"{tuple(algorithms)}")
  for field, choices in CHOICES.items():
    if cfg[field] not in choices:
      raise ValueError(f"config.sparsity.{field}: got {cfg[field]!r}, which is not one of the accepted values "
                       f"{tuple(choices)}")
  _check_number(cfg, "target", 0.0, 1.0, hi_open=True)
  _check_number(cfg, "initial_sparsity", 0.0, 1.0, hi_open=True)
  _check_number(cfg, "min_density", 0.0, 1.0)
  _check_number(cfg, "prune_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
  _check_number(cfg, "drop_fraction", 0.0, 1.0)
  _check_number(cfg, "power", 0.0, None, lo_open=True)
  _check_number(cfg, "temperature", 0.0, None, lo_open=True)
  if cfg["end_step"] is None:
    cfg["end_step"] = cfg["begin_step"]
  if cfg["seed"] is None:
    cfg["seed"] = 0
  for field in ("begin_step", "end_step", "rewind_step", "levels", "seed"):
    _check_number(cfg, field, 0, None, integer=True)
  for field in ("update_every", "iterations", "num_batches"):
    _check_number(cfg, field, 1, None, integer=True)
  if cfg["end_step"] < cfg["begin_step"]:
    raise ValueError(f"config.sparsity.end_step={cfg['end_step']} must be >= begin_step={cfg['begin_step']}")
  if cfg["algorithm"] in GRADUAL and cfg["end_step"] <= cfg["begin_step"]:
    raise ValueError(f"config.sparsity.end_step={cfg['end_step']} must be > begin_step={cfg['begin_step']} for "
                     f"algorithm {cfg['algorithm']!r}")
  if cfg["distribution"] == "global" and cfg["min_density"] > 1.0 - cfg["target"] + 1e-9:
    raise ValueError(f"config.sparsity.min_density={cfg['min_density']} cannot exceed 1 - target "
                     f"= {1 - cfg['target']:.6g} with distribution 'global'")
  _check_granularity(cfg)
  _check_patterns(cfg)
  _check_regrowth(cfg, given)
  return cfg


def _check_regrowth(cfg, given):
  """Fields of the prune-and-regrow algorithms (set, rigl, granet).

  SET and RigL keep their per-layer counts for the whole run: `distribution` is that split (their random start has
  it too). `init_distribution` is the split of GraNet's sparse start; set away from its default for set / rigl it
  must equal `distribution` when that is set too (older configs set only init_distribution, which is then used), and
  the resolved config holds the split that is used in both fields.
  """
  algorithm = cfg["algorithm"]
  if cfg["regrow_end_step"] is not None:
    _check_number(cfg, "regrow_end_step", cfg["begin_step"] + 1, None, integer=True)
  if algorithm not in REGROWTH:
    return
  if granularity.parse(cfg["granularity"], cfg["nm_axis"], cfg["layout"], cfg["channel_axis"]).kind == "nm":
    raise ValueError(f"config.sparsity.granularity: {cfg['granularity']!r} is not supported by {algorithm!r}; "
                     f"use 'unstructured', 'block:RxC' or 'channel'")
  if algorithm in ("set", "rigl"):
    if cfg["distribution"] == "global":
      raise ValueError(f"config.sparsity.distribution: 'global' does not apply to {algorithm!r}, whose per-layer "
                       f"counts are fixed for the whole run; accepted values: {CHOICES['init_distribution']}")
    d_set = "distribution" in given and cfg["distribution"] != DEFAULTS["distribution"]
    i_set = "init_distribution" in given and cfg["init_distribution"] != DEFAULTS["init_distribution"]
    if d_set and i_set and cfg["init_distribution"] != cfg["distribution"]:
      raise ValueError(f"config.sparsity.init_distribution: got {cfg['init_distribution']!r}, which differs from "
                       f"distribution={cfg['distribution']!r}: {algorithm!r} keeps one per-layer split for the whole "
                       "run, set by `distribution`; drop init_distribution (it is GraNet's sparse start)")
    if i_set and not d_set:
      cfg["distribution"] = cfg["init_distribution"]  # an older config that set only init_distribution
    cfg["init_distribution"] = cfg["distribution"]
  if algorithm == "granet":
    if cfg["initial_sparsity"] > cfg["target"]:
      raise ValueError(f"config.sparsity.initial_sparsity={cfg['initial_sparsity']} must be <= "
                       f"target={cfg['target']} for 'granet'")
    if cfg["initial"] == "sparse" and cfg["initial_sparsity"] <= 0:
      raise ValueError("config.sparsity.initial_sparsity must be > 0 with initial='sparse' (the sparsity of the "
                       "random starting mask; 0.5 in the GraNet paper)")


def _check_granularity(cfg):
  gran = granularity.parse(cfg["granularity"], cfg["nm_axis"], cfg["layout"], cfg["channel_axis"])
  if gran.kind == "nm":
    want = 1.0 - gran.n / gran.m
    if abs(cfg["target"] - want) > 1e-6:
      raise ValueError(f"config.sparsity.target={cfg['target']} must be 1 - n/m = {want:g} for granularity "
                       f"{cfg['granularity']!r}")
    if cfg["distribution"] != "uniform":
      raise ValueError(f"config.sparsity.distribution must be 'uniform' with granularity {cfg['granularity']!r}")
  if gran.kind in ("head", "neuron"):
    if cfg["distribution"] not in ("uniform", "global"):
      raise ValueError(f"config.sparsity.distribution: got {cfg['distribution']!r}; accepted values with granularity "
                       f"{gran.kind!r}: 'uniform' (the same fraction of each module's {gran.kind}s) or 'global'")
    if cfg["min_density"] > 0:
      raise ValueError(f"config.sparsity.min_density: got {cfg['min_density']}; accepted values with granularity "
                       f"{gran.kind!r}: 0 (no floor)")
    if cfg["algorithm"] in REGROWTH or cfg["algorithm"] == "imp":
      raise ValueError(f"config.sparsity.granularity: {gran.kind!r} is not supported by {cfg['algorithm']!r}; "
                       "accepted algorithms: oneshot, gmp, movement, snip, grasp, synflow, random, dense")


def _check_patterns(cfg):
  prunable = cfg["prunable"]
  if prunable is not None:
    if isinstance(prunable, str):
      prunable = [prunable]
    if not all(isinstance(p, str) for p in prunable):
      raise ValueError(f"config.sparsity.prunable: expected a list of regex strings, got {cfg['prunable']!r}")
    cfg["prunable"] = tuple(prunable)
    for p in prunable:
      _compile("prunable", p[1:] if p.startswith("!") else p)
  stacked = cfg["stacked"]
  if stacked is not None:
    stacked = [stacked] if isinstance(stacked, str) else stacked
    if not all(isinstance(p, str) for p in stacked):
      raise ValueError(f"config.sparsity.stacked: expected a list of regex strings, got {cfg['stacked']!r}")
    cfg["stacked"] = tuple(stacked)
    for p in stacked:
      _compile("stacked", p)
  for field, what in (("overrides", "sparsity"), ("prune_fraction_overrides", "fraction")):
    overrides = cfg[field]
    if overrides is None:
      continue
    if hasattr(overrides, "to_dict"):
      overrides = overrides.to_dict()
    if not isinstance(overrides, Mapping):
      raise ValueError(f"config.sparsity.{field}: expected {{regex: {what}}}, got {overrides!r}")
    for rx, v in overrides.items():
      _compile(field, rx)
      if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= v < 1.0:  # NaN fails the range
        raise ValueError(f"config.sparsity.{field}[{rx!r}]={v!r} must be a {what} in [0, 1)")
    cfg[field] = dict(overrides)


def _compile(field, rx):
  try:
    re.compile(rx)
  except re.error as e:
    raise ValueError(f"config.sparsity.{field}: bad regex {rx!r}: {e}") from None
