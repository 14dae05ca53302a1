"""Pruning algorithms, one module per family, and the registry that builds them from a config."""
from __future__ import annotations

from sparsejax import config as config_lib
from sparsejax.pruners import dst, magnitude, movement, pai
from sparsejax.pruners.base import Pruner, PrunerState

REGISTRY = {
    "dense": magnitude.dense,
    "oneshot": magnitude.oneshot,
    "gmp": magnitude.gmp,
    "set": dst.set_,
    "rigl": dst.rigl,
    "granet": dst.granet,
    "movement": movement.movement,
    "random": pai.fixed_pruner,
    "snip": pai.fixed_pruner,
    "grasp": pai.fixed_pruner,
    "synflow": pai.fixed_pruner,
    "imp": magnitude.fixed,
}


def create_pruner(config) -> Pruner:
  """A Pruner from the sparsity section of a config (a ConfigDict or a dict); fields are validated first.

  >>> p = create_pruner({"algorithm": "gmp", "target": 0.9, "end_step": 1000})
  >>> p.config["distribution"], p.config["update_every"]
  ('uniform', 100)
  """
  cfg = config_lib.validate(config, tuple(REGISTRY))
  return REGISTRY[cfg["algorithm"]](cfg)
