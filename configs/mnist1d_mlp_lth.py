"""MNIST-1D lottery tickets (Greydanus 2020, "Scaling down deep learning", notebook `lottery-tickets`).

MLP 40 -> 500 -> 500 (residual) -> 10 with PyTorch's default init, Adam 2e-2, batch 100, 1501 steps per level,
layerwise magnitude pruning of every kernel by 20% of what remains per level, survivors rewound to their step-0
values; the random_mask control (same per-layer counts at random positions, same initial weights) at every level.
12 levels reach 0.8^12 = 6.9% of the weights (93.1% sparsity).

  python -m experiments.train --config=configs/mnist1d_mlp_lth.py --workdir=runs/mnist1d_mlp_lth

Published (max test accuracy over training): dense 66.4% / 65.4% (two trials); tickets 75.0% at 0.91 sparsity and
74.8% at 0.86; random pruning peaks near 67-69% and falls to about 50-51% at 0.96 sparsity.
Measured here: see README (make run writes the same experiment to runs/quickstart).
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "mnist1d_mlp"
  config.model.kernel_init = "torch"
  config.data.name = "mnist1d"
  training = config.training
  training.optimizer = "adam"
  training.learning_rate = 2e-2
  training.batch_size = 100
  training.num_steps = 1501
  training.eval_every = 100
  training.log_every = 100
  training.checkpoint_every = 500
  training.keep_checkpoints = 1
  sparsity = config.sparsity
  sparsity.algorithm = "imp"
  sparsity.levels = 12
  sparsity.prune_fraction = 0.2
  sparsity.distribution = "uniform"     # layerwise
  sparsity.rewind = "init"
  sparsity.control = "random_mask"
  return config
