"""MNIST-1D MLP pruned to 90% with hard movement pruning (Sanh et al. 2020).

Keeps the top of the accumulated importance -sum_t w_t * dL/dw_t, cubic schedule from 0 at 10% to 90% at 75% of
training every 100 steps, uniform per layer. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000
steps). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_movement.py --workdir=runs/mnist1d_mlp_movement

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.696, test loss 0.97,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.900 / 0.900 / 0.900); 21 s of training, 32 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "movement", target=0.9)
