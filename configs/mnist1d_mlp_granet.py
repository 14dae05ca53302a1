"""MNIST-1D MLP pruned to 90% with GraNet (Liu et al. 2021), dense to sparse.

Cubic global magnitude pruning from 0 at 10% to 90% at 75% of training, every 100 steps, each update also dropping 50%
(cosine-decayed) of every layer's remaining weights by magnitude and regrowing as many by |gradient|
(neuroregeneration); a fixed mask for the last quarter. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch
100, 3000 steps). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_granet.py --workdir=runs/mnist1d_mlp_granet

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.671, test loss 1.11,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.814 / 0.907 / 0.888); 27 s of training, 34 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "granet", target=0.9)
