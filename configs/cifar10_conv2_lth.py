"""Alias of `configs/cifar10_conv2.py:method=imp`, whose docstring says what it runs and what to expect.

Kept so that scripts and `sparsejax-train --config=cifar10_conv2_lth` keep working; the same run:
  python -m experiments.train --config=configs/cifar10_conv2.py:method=imp --workdir=runs/cifar10_conv2_lth
"""
from configs import cifar10_conv2


def get_config():
  return cifar10_conv2.get_config("method=imp")
