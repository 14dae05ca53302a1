"""MNIST-1D MLP pruned to 90% with RigL (Evci et al. 2020, "Rigging the Lottery").

Sparse from step 0 with a random ERK mask; every 100 steps until 75% of training each layer drops the 30% (alpha 0.3,
cosine-decayed) of its kept weights with the smallest magnitude and regrows as many with the largest |dense gradient|;
a fixed mask for the last quarter. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000 steps).
Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_rigl.py --workdir=runs/mnist1d_mlp_rigl

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.647, test loss 1.17,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.605 / 0.942 / 0.000); 16 s of training, 25 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "rigl", target=0.9)
