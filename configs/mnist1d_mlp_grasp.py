"""MNIST-1D MLP pruned to 90% with GraSP at initialisation (Wang et al. 2020).

Score -w * (H g) on two training batches at initialisation (temperature 200), one global threshold, keeping the
weights whose removal would most reduce gradient flow; the mask stays fixed. Training as configs/mnist1d_mlp_dense.py
(Adam 1e-3, batch 100, 3000 steps). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_grasp.py --workdir=runs/mnist1d_mlp_grasp

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.593, test loss 1.20,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.554 / 0.933 / 0.630); 18 s of training, 43 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "grasp", target=0.9)
