"""Fashion-MNIST LeNet-300-100 pruned to 90% with GraSP at initialisation (Wang et al. 2020).

Score -w * (H g) on two training batches at initialisation (temperature 200), one global threshold, keeping the
weights whose removal would most reduce gradient flow; the mask stays fixed. Training as
configs/fashion_mnist_lenet300_dense.py (Adam 1.2e-3, batch 60, 10000 steps; needs the IDX files in
/usr/share/datasets/fashion-mnist). Schedules and papers: configs/methods.py.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_grasp.py \\
      --workdir=runs/fashion_mnist_lenet300_grasp

Expected (measured, seed 0, 2 CPU cores shared with other jobs): step 10000, test accuracy 0.874, test loss 0.36,
sparsity 0.9000 (26620/266200 weights kept; dense_0 / dense_1 / head: 0.921 / 0.752 / 0.399); 20 s of training, 36 s
in all.
"""
from configs import fashion_mnist_lenet300_dense, methods


def get_config():
  return methods.set_method(fashion_mnist_lenet300_dense.get_config(), "grasp", target=0.9)
