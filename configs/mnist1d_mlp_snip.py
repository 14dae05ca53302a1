"""MNIST-1D MLP pruned to 90% with SNIP at initialisation (Lee et al. 2019).

Connection sensitivity |g * w| on one training batch at initialisation, one global threshold (no per-layer floor); the
mask stays fixed for the whole run. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000 steps).
Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_snip.py --workdir=runs/mnist1d_mlp_snip

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.626, test loss 1.21,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.387 / 0.955 / 0.189); 10 s of training, 21 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "snip", target=0.9)
