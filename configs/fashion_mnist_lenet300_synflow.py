"""Fashion-MNIST LeNet-300-100 pruned to 90% with SynFlow at initialisation (Tanaka et al. 2020).

Data-free: 100 rounds of |dR/dw * w| with |params| on an all-ones input, the kept fraction shrinking geometrically,
one global threshold; the mask stays fixed. Training as configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch
60, 10000 steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_synflow.py \\
      --workdir=runs/fashion_mnist_lenet300_synflow

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.881, test loss 0.35,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.928 / 0.713 / 0.029); 17 s of training, 24 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "synflow", target=0.9)
