"""Fashion-MNIST LeNet-300-100 pruned to 90% with gradual magnitude pruning (Zhu & Gupta 2017), uniform per layer.

Cubic schedule from 0 at 10% to 90% at 75% of training, mask updated every 200 steps, then fine-tuning.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_gmp.py \\
      --workdir=runs/fashion_mnist_lenet300_gmp

Expected (measured, seed 0, 2 CPU cores): step 10000, test accuracy 0.894, test loss 0.32,
sparsity 0.9000 (26620/266200 weights kept), above the dense 0.890; about 18 s of training, 23 s in all (with two
other jobs on the cores).
"""
from configs import fashion_mnist_lenet300_dense


def get_config():
  config = fashion_mnist_lenet300_dense.get_config()
  num_steps = config.training.get_ref("num_steps")
  config.sparsity.algorithm = "gmp"
  config.sparsity.target = 0.9
  config.sparsity.distribution = "uniform"
  config.sparsity.begin_step = num_steps // 10
  config.sparsity.end_step = num_steps * 3 // 4
  config.sparsity.update_every = 200
  return config
