"""Alias of `configs/mnist1d_mlp.py:method=grasp`, whose docstring says what it runs and what to expect.

Kept so that scripts and `sparsejax-train --config=mnist1d_mlp_grasp` keep working; the same run:
  python -m experiments.train --config=configs/mnist1d_mlp.py:method=grasp --workdir=runs/mnist1d_mlp_grasp
"""
from configs import mnist1d_mlp


def get_config():
  return mnist1d_mlp.get_config("method=grasp")
