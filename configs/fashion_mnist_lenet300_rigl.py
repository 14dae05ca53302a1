"""Fashion-MNIST LeNet-300-100 pruned to 90% with RigL (Evci et al. 2020, "Rigging the Lottery").

Sparse from step 0 with a random ERK mask; every 100 steps until 75% of training each layer drops the 30% (alpha 0.3,
cosine-decayed) of its kept weights with the smallest magnitude and regrows as many with the largest |dense gradient|;
a fixed mask for the last quarter. Training as configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch 60, 10000
steps; needs the IDX files in /usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_rigl.py \\
      --workdir=runs/fashion_mnist_lenet300_rigl

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.884, test loss 0.34,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.920 / 0.770 / 0.000); 36 s of training, 49 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "rigl", target=0.9)
