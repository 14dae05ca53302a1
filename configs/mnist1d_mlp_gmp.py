"""MNIST-1D MLP pruned to 90% with gradual magnitude pruning (Zhu & Gupta 2017), uniform per layer.

Sparsity follows the cubic schedule from 0 at 10% of training to 90% at 75% of training, updated every 100 steps; the
last quarter fine-tunes the final mask. begin/end follow `training.num_steps`, so overriding it keeps the proportions.

  python -m experiments.train --config=configs/mnist1d_mlp_gmp.py --workdir=runs/mnist1d_mlp_gmp

Expected (measured, seed 0, 2 CPU cores): step 3000, test accuracy 0.691, test loss 0.96,
sparsity 0.9000 (27500/275000 weights kept) -- above the dense 0.658, whose test loss rises from step 500 on;
about 10 s of training, 15 s in all (with two other jobs on the cores).
"""
from configs import mnist1d_mlp_dense


def get_config():
  config = mnist1d_mlp_dense.get_config()
  num_steps = config.training.get_ref("num_steps")
  config.sparsity.algorithm = "gmp"
  config.sparsity.target = 0.9
  config.sparsity.distribution = "uniform"
  config.sparsity.begin_step = num_steps // 10
  config.sparsity.end_step = num_steps * 3 // 4
  config.sparsity.update_every = 100
  return config
