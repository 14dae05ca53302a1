"""Fashion-MNIST lottery tickets with LeNet-300-100: the protocol of Frankle & Carbin (2019), shortened.

As in the paper's MNIST experiment: LeNet-300-100, Adam at 1.2e-3, batch 60; each level removes 20% of the remaining
weights of each hidden layer and 10% of the output layer by magnitude (layerwise), and rewinds the survivors to their
step-0 values with a fresh optimizer; the control is the paper's own, `random_reinit` (the ticket's masks with fresh
weights from another seed), because that is the comparison Frankle & Carbin use to show a ticket is a ticket.
Differences from the paper: 10,000 steps (10 epochs, the length of fashion_mnist_lenet300_dense.py) per level instead
of 50,000, so that 15 levels and their controls (31 runs: ~15 s each alone like the dense config, ~25 s each beside
other jobs as measured below) finish in about 13 minutes on 2 shared CPU cores; Fashion-MNIST instead of MNIST; LeCun
normal init instead of Glorot normal. Needs the IDX files in /usr/share/datasets/fashion-mnist
(`apt-get install dataset-fashion-mnist`) or `--config.data.data_dir=<dir>`.

  python -m experiments.train --config=configs/fashion_mnist_lenet300_lth.py \\
      --workdir=runs/fashion_mnist_lenet300_lth

Level L keeps 0.8^L of each hidden layer and 0.9^L of the output layer: 51.3% of the weights at level 3, 21.1% at
level 7, 3.6% at level 15, the three points the paper singles out.

Published (Frankle & Carbin 2019, MNIST, 50k iterations): winning tickets with 51.3% of the weights learn faster than
the dense network, 21.1% is about the best, and at 3.6% they fall back to the dense accuracy; randomly reinitialized
subnetworks lose accuracy steadily as they are pruned.
Measured here (seed 0, 2 CPU cores shared with other jobs, 759 s of training, 12m43s in all): best test accuracy
(evaluated every 500 steps) dense 89.04%; tickets 89.24% at 51.3% of the weights, 89.81% at 21.1%, 89.95% at 4.5% (the
highest), 89.53% at 3.6%; random_reinit 88.69%, 88.82%, 87.78%, 87.79% at the same levels. Tickets stay above the
dense network down to 3.6% here (the paper's MNIST tickets fell back to dense accuracy there), and the gap to
random_reinit grows with sparsity (+0.6 points at 51.3%, +1.7 at 3.6%). Final accuracy at level 15: 89.35%.
"""
from configs import fashion_mnist_lenet300_dense


def get_config():
  config = fashion_mnist_lenet300_dense.get_config()   # LeNet-300-100, Fashion-MNIST IDX, Adam 1.2e-3, batch 60
  training = config.training
  training.num_steps = 10000
  training.eval_every = 500
  training.log_every = 500
  training.checkpoint_every = 5000
  training.keep_checkpoints = 1
  sparsity = config.sparsity
  sparsity.algorithm = "imp"
  sparsity.levels = 15
  sparsity.prune_fraction = 0.2                        # hidden layers
  sparsity.prune_fraction_overrides = {"^head/": 0.1}  # the output layer at half the rate
  sparsity.distribution = "uniform"                    # layerwise
  sparsity.rewind = "init"
  sparsity.control = "random_reinit"
  return config
