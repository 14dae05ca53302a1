"""Fashion-MNIST LeNet-300-100 pruned to 90% with SNIP at initialisation (Lee et al. 2019).

Connection sensitivity |g * w| on one training batch at initialisation, one global threshold (no per-layer floor); the
mask stays fixed for the whole run. Training as configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch 60, 10000
steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_snip.py \\
      --workdir=runs/fashion_mnist_lenet300_snip

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.877, test loss 0.36,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.919 / 0.772 / 0.383); 25 s of training, 37 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "snip", target=0.9)
