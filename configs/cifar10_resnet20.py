"""CIFAR-10 ResNet-20 (He et al. 2016), dense, gradual magnitude pruning or lottery tickets: the method by name.

  python -m experiments.train --config=configs/cifar10_resnet20.py:method=gmp --workdir=runs/cifar10_resnet20_gmp
  python -m experiments.train --config=configs/cifar10_resnet20.py:method=imp --workdir=runs/cifar10_resnet20_lth

Arguments (comma-separated key=value after the colon; a bare first token is the method):
  method  dense (default) | gmp | imp;
  target  gmp's final sparsity, default 0.9.
Every field of configs/default.py can still be set with --config.<field>=<value>; configs/cifar10_resnet20_gmp.py and
cifar10_resnet20_lth.py are aliases of method=gmp and method=imp.

A GPU run. Data from TFDS, prepared once on a machine with network: `tfds build cifar10 --file_format=array_record`
(needs `pip install -e '.[tf]'`). `--config.mesh.data_parallel=-1` splits the batch over every local device. Batch
128, 160 epochs, random crop with 4-pixel padding and horizontal flip.

dense and gmp: SGD with Nesterov momentum 0.9, learning rate 0.1 with 5 warmup epochs and cosine decay, weight decay
5e-4 (L2). gmp (Zhu & Gupta 2017) follows the cubic schedule from 0 at 5% of training to the target at 75%, every 500
steps, with ERK layers (more of the small first convolution and the head are kept; Evci et al. 2020). Expected: not
yet measured (published dense ResNet-20: 91.3% top-1, He et al. 2016).

imp, lottery tickets with late rewinding (Frankle, Dziugaite, Roy & Carbin, "Stabilizing the Lottery Ticket Hypothesis"
2019 and "Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020): the "standard" ResNet-20 of the
Linear Mode Connectivity paper (its Table 1) and of open_lth's cifar_resnet_20: SGD with momentum 0.9, learning rate
0.1 divided by 10 at 50% and 75% of training (epochs 80 and 120), weight decay 1e-4 (L2), 62,500 iterations per level.
Each level removes 20% of the remaining weights by global magnitude over every kernel (open_lth's sparse_global), then
rewinds the survivors, the BatchNorm statistics, the optimizer state and the data order to iteration 2000 (5.1 epochs,
3.2% of training), where that paper reports ResNet-20 becoming stable to SGD noise and IMP subnetworks becoming
matching; rewinding to step 0 fails there (F&C 2019 needed learning-rate warmup). `--config.sparsity.rewind_step=782`
rewinds to epoch 2 instead. Control: `random_reinit`. 11 levels reach 0.8^11 = 8.6% of the weights.
Expected: not measured here (GPU scale). Published (Linear Mode Connectivity, Table 1 and Section 4; quoted from memory
of the paper, check it before relying on it): dense ResNet-20 91.7 +/- 0.1% test accuracy; IMP subnetworks rewound
early in training (not at step 0) match it down to 16.8% of the weights remaining (0.8^8, level 8 here).
"""
from configs import default, methods

WHERE = "configs/cifar10_resnet20.py"
NUM_TRAIN, BATCH_SIZE, EPOCHS = 50_000, 128, 160
METHODS = ("dense", "gmp", "imp")


def get_config(arg=None):
  args = methods.parse_arg(arg, WHERE, METHODS, method="dense", target=0.9)
  config = default.get_config()
  config.model.name = "resnet20"
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.data.augment = True                      # random crop with 4-pixel padding and horizontal flip
  training = config.training
  training.batch_size = BATCH_SIZE
  training.num_steps = -(-NUM_TRAIN * EPOCHS // BATCH_SIZE)   # 62,500
  training.learning_rate = 0.1
  training.momentum = 0.9
  training.eval_batch_size = 1000
  training.log_every = 500
  if args.method == "imp":
    training.optimizer = "momentum"
    training.weight_decay = 1e-4
    training.lr_schedule = "step"
    training.lr_boundaries = (0.5, 0.75)
    training.lr_decay_factor = 0.1
    training.eval_every = 2500
    training.checkpoint_every = 2500
    training.keep_checkpoints = 1
    s = config.sparsity
    s.algorithm, s.levels, s.prune_fraction, s.distribution = "imp", 11, 0.2, "global"
    s.rewind, s.rewind_step, s.control = "step", 2000, "random_reinit"
    return config
  training.optimizer = "nesterov"
  training.weight_decay = 5e-4
  training.lr_schedule = "warmup_cosine"
  training.warmup_steps = -(-NUM_TRAIN * 5 // BATCH_SIZE)
  training.eval_every = 5000
  training.checkpoint_every = 5000
  config.sparsity.algorithm = "dense"
  if args.method == "gmp":
    methods.set_gmp(config, args.target, "erk", begin_fraction=0.05, update_every=500)
  return config
