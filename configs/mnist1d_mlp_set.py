"""MNIST-1D MLP pruned to 90% with SET (Mocanu et al. 2018).

Sparse from step 0 with a random ERK mask (for an MLP, the Erdos-Renyi split of the paper); every 100 steps until 75%
of training each layer drops the 30% (cosine-decayed) of its kept weights with the smallest magnitude and regrows as
many at random; a fixed mask for the last quarter. The schedule is RigL's (as the RigL paper runs SET), not one update
per epoch. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000 steps). Schedules and papers:
configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_set.py --workdir=runs/mnist1d_mlp_set

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.641, test loss 1.23,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.605 / 0.942 / 0.000); 14 s of training, 23 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "set", target=0.9)
