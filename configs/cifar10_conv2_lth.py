"""CIFAR-10 lottery tickets with Conv-2: the protocol of Frankle & Carbin (2019), "The Lottery Ticket Hypothesis".

Conv-2 (conv 64, 64, pool, dense 256, 256, head; 4.3M weights) trained with Adam at 2e-4, batch 60, 20,000
iterations per level, no data augmentation. Each level prunes by magnitude, layer by layer, at the paper's Conv-2
rates (its Figure 2): 10% of the remaining weights of the convolutions, 20% of the dense layers, and 10% of the output
layer (which the paper prunes at half the rate of the other dense layers); survivors are rewound to their step-0
values with a fresh optimizer. Control: `random_reinit` (the paper's control). 20 levels reach 0.8^20 = 1.2% of the
dense weights (0.9^20 = 12% of the convolutions). Kernels use He init (as open_lth), not the paper's Glorot init.

A GPU run. Data from TFDS, prepared once on a machine with network: `tfds build cifar10 --file_format=array_record`
(needs `pip install -e '.[tf]'`).

  python -m experiments.train --config=configs/cifar10_conv2_lth.py --workdir=runs/cifar10_conv2_lth

Expected: not measured here (GPU scale).
Published (Frankle & Carbin 2019, Section 3 and Figure 5; quoted from memory of the paper, check it before relying on
it): dense Conv-2 reaches about 65% test accuracy at its early-stopping iteration; winning tickets learn faster and
reach up to about 3.4 points higher test accuracy, best near 8.8% of the weights remaining; randomly reinitialized
subnetworks lose accuracy as they are pruned.
"""
from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "conv2"
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.data.augment = False
  training = config.training
  training.optimizer = "adam"
  training.learning_rate = 2e-4
  training.batch_size = 60
  training.num_steps = 20_000
  training.eval_batch_size = 1000
  training.eval_every = 1000
  training.log_every = 500
  training.checkpoint_every = 5000
  training.keep_checkpoints = 1
  sparsity = config.sparsity
  sparsity.algorithm = "imp"
  sparsity.levels = 20
  sparsity.prune_fraction = 0.2                                           # dense layers
  sparsity.prune_fraction_overrides = {"^conv_": 0.1, "^head/": 0.1}      # convolutions; output layer
  sparsity.distribution = "uniform"                                       # layerwise
  sparsity.rewind = "init"
  sparsity.control = "random_reinit"
  return config
