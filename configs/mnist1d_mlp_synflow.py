"""MNIST-1D MLP pruned to 90% with SynFlow at initialisation (Tanaka et al. 2020).

Data-free: 100 rounds of |dR/dw * w| with |params| on an all-ones input, the kept fraction shrinking geometrically,
one global threshold; the mask stays fixed. Training as configs/mnist1d_mlp_dense.py (Adam 1e-3, batch 100, 3000
steps). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/mnist1d_mlp_synflow.py --workdir=runs/mnist1d_mlp_synflow

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 3000, test accuracy 0.638, test loss 1.32,
sparsity 0.9000 (27500/275000 weights kept; dense_0 / dense_1 / head: 0.523 / 0.942 / 0.306); 18 s of training, 41 s
in all.
"""
from configs import mnist1d_mlp_dense, methods


def get_config():
  return methods.set_method(mnist1d_mlp_dense.get_config(), "synflow", target=0.9)
