"""CIFAR-10 with Conv-2, dense or lottery tickets: the protocol of Frankle & Carbin (2019), "The Lottery Ticket
Hypothesis".

  python -m experiments.train --config=configs/cifar10_conv2.py:method=imp --workdir=runs/cifar10_conv2_lth

Arguments (comma-separated key=value after the colon; a bare first token is the method):
  method  dense (default) | imp.
Every field of configs/default.py can still be set with --config.<field>=<value>; configs/cifar10_conv2_lth.py is an
alias of method=imp.

Conv-2 (conv 64, 64, pool, dense 256, 256, head; 4.3M weights) trained with Adam at 2e-4, batch 60, 20,000
iterations (per level), no data augmentation. imp: each level prunes by magnitude, layer by layer, at the paper's
Conv-2 rates (its Figure 2): 10% of the remaining weights of the convolutions, 20% of the dense layers, and 10% of the
output layer (which the paper prunes at half the rate of the other dense layers); survivors are rewound to their
step-0 values with a fresh optimizer. Control: `random_reinit` (the paper's control). 20 levels reach 0.8^20 = 1.2% of
the dense weights (0.9^20 = 12% of the convolutions). Kernels use He init (as open_lth), not the paper's Glorot init.

A GPU run. Data from TFDS, prepared once on a machine with network: `tfds build cifar10 --file_format=array_record`
(needs `pip install -e '.[tf]'`).

Expected: not measured here (GPU scale).
Published (Frankle & Carbin 2019, Section 3 and Figure 5; quoted from memory of the paper, check it before relying on
it): dense Conv-2 reaches about 65% test accuracy at its early-stopping iteration; winning tickets learn faster and
reach up to about 3.4 points higher test accuracy, best near 8.8% of the weights remaining; randomly reinitialized
subnetworks lose accuracy as they are pruned.
"""
from configs import default, methods

WHERE = "configs/cifar10_conv2.py"
METHODS = ("dense", "imp")


def get_config(arg=None):
  args = methods.parse_arg(arg, WHERE, METHODS, method="dense")
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
  config.sparsity.algorithm = "dense"
  if args.method == "imp":
    s = config.sparsity
    s.algorithm, s.levels = "imp", 20
    s.prune_fraction = 0.2                                           # dense layers
    s.prune_fraction_overrides = {"^conv_": 0.1, "^head/": 0.1}      # convolutions; output layer
    s.distribution = "uniform"                                       # layerwise
    s.rewind, s.control = "init", "random_reinit"
  return config
