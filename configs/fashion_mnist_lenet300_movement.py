"""Fashion-MNIST LeNet-300-100 pruned to 90% with hard movement pruning (Sanh et al. 2020).

Keeps the top of the accumulated importance -sum_t w_t * dL/dw_t, cubic schedule from 0 at 10% to 90% at 75% of
training every 100 steps, uniform per layer. Training as configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch
60, 10000 steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_movement.py \\
      --workdir=runs/fashion_mnist_lenet300_movement

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.891, test loss 0.33,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.900 / 0.900 / 0.900); 21 s of training, 25 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "movement", target=0.9)
