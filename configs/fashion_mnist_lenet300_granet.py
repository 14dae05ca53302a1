"""Fashion-MNIST LeNet-300-100 pruned to 90% with GraNet (Liu et al. 2021), dense to sparse.

Cubic global magnitude pruning from 0 at 10% to 90% at 75% of training, every 100 steps, each update also dropping 50%
(cosine-decayed) of every layer's remaining weights by magnitude and regrowing as many by |gradient|
(neuroregeneration); a fixed mask for the last quarter. Training as configs/fashion_mnist_lenet300_dense.py (Adam
1.2e-3, batch 60, 10000 steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers:
configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_granet.py \\
      --workdir=runs/fashion_mnist_lenet300_granet

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.891, test loss 0.32,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.911 / 0.818 / 0.892); 21 s of training, 33 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "granet", target=0.9)
