"""Fashion-MNIST, LeNet-300-100 (the MNIST network of Frankle & Carbin 2019), dense baseline.

Adam at 1.2e-3 with batch 60 as in the lottery-ticket paper. Needs the IDX files in /usr/share/datasets/fashion-mnist
(`apt-get install dataset-fashion-mnist`) or `--config.data.data_dir=<dir>`.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_dense.py \\
      --workdir=runs/fashion_mnist_lenet300_dense

Expected (measured, seed 0, 2 CPU cores): step 10000, test accuracy 0.890, test loss 0.34,
sparsity 0.0; about 15 s of training, 19 s in all (with two other jobs on the cores).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "lenet300"
  config.data.name = "fashion_mnist"
  config.training.optimizer = "adam"
  config.training.learning_rate = 1.2e-3
  config.training.batch_size = 60
  config.training.num_steps = 10000
  config.training.eval_every = 2000
  config.training.log_every = 500
  config.training.checkpoint_every = 2000
  config.sparsity.algorithm = "dense"
  return config
