"""Fashion-MNIST LeNet-300-100 pruned to 90% with random pruning at initialisation.

A random mask, uniform per layer, drawn from the seed at initialisation and fixed for the whole run: the control of
the pruning-at-initialisation papers. Training as configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch 60,
10000 steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_random.py \\
      --workdir=runs/fashion_mnist_lenet300_random

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.875, test loss 0.35,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.900 / 0.900 / 0.900); 18 s of training, 24 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "random", target=0.9)
