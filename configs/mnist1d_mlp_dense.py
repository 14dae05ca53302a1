"""MNIST-1D, the MLP of the lottery-ticket notebook (Greydanus 2020), trained dense: the baseline of the GMP run.

  python -m experiments.train --config=configs/mnist1d_mlp_dense.py --workdir=runs/mnist1d_mlp_dense

Expected (measured, seed 0, 2 CPU cores): step 3000, test accuracy 0.658, test loss 1.57
(the MLP fits the 4000 training examples exactly by step 1500), sparsity 0.0; about 10 s of training, 15 s in all
(with two other jobs on the cores).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "mnist1d_mlp"
  config.data.name = "mnist1d"
  config.training.optimizer = "adam"
  config.training.learning_rate = 1e-3
  config.training.batch_size = 100
  config.training.num_steps = 3000
  config.training.eval_every = 500
  config.sparsity.algorithm = "dense"
  return config
