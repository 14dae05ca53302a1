"""MNIST-1D MLP pruned to 90% with random pruning at initialisation.

A random mask, uniform per layer, drawn from the seed at initialisation and fixed for the whole run: the control of
the pruning-at-initialisation papers. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000 steps).
Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_random.py --workdir=runs/mnist1d_mlp_random

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.596, test loss 1.06,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.900 / 0.900 / 0.900); 17 s of training, 41 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "random", target=0.9)
