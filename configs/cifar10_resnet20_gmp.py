"""Alias of `configs/cifar10_resnet20.py:method=gmp`, whose docstring says what it runs and what to expect.

Kept so that scripts and `sparsejax-train --config=cifar10_resnet20_gmp` keep working; the same run:
  python -m experiments.train --config=configs/cifar10_resnet20.py:method=gmp --workdir=runs/cifar10_resnet20_gmp
"""
from configs import cifar10_resnet20


def get_config():
  return cifar10_resnet20.get_config("method=gmp")
