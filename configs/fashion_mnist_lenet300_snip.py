"""Alias of `configs/fashion_mnist_lenet300.py:method=snip`, whose docstring says what it runs and what to expect.

Kept so that scripts and `sparsejax-train --config=fashion_mnist_lenet300_snip` keep working; the same run:
  python -m experiments.train --config=configs/fashion_mnist_lenet300.py:method=snip \\
      --workdir=runs/fashion_mnist_lenet300_snip
"""
from configs import fashion_mnist_lenet300


def get_config():
  return fashion_mnist_lenet300.get_config("method=snip")
