"""Fashion-MNIST, LeNet-300-100 (the MNIST network of Frankle & Carbin 2019), dense or pruned: the method by name.

  python -m experiments.train --config=configs/fashion_mnist_lenet300.py:method=METHOD \\
      --workdir=runs/fashion_mnist_lenet300_METHOD
  python -m experiments.train --config=configs/fashion_mnist_lenet300.py:method=gmp,target=0.95 \\
      --workdir=runs/fashion_mnist_lenet300_gmp95

Arguments (comma-separated key=value after the colon; a bare first token is the method):
  method  dense (default) | gmp | imp | set | rigl | granet | snip | grasp | synflow | random | movement;
  target  final sparsity of the pruning methods, default 0.9 (not for dense and imp).
Every field of configs/default.py can still be set with --config.<field>=<value>; the old per-method files
(configs/fashion_mnist_lenet300_<method>.py, fashion_mnist_lenet300_lth.py for imp) are aliases of this one.
Needs the IDX files in /usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`) or
`--config.data.data_dir=<dir>`.

Adam at 1.2e-3 with batch 60 as in the lottery-ticket paper, 10000 steps. gmp (Zhu & Gupta 2017): uniform per layer,
cubic schedule from 0 at 10% to the target at 75% of training, mask updated every 200 steps, then fine-tuning. The
other methods' schedules and papers: configs/methods.py. Steps follow `training.num_steps`.

imp, Frankle & Carbin's protocol shortened: each level removes 20% of the remaining weights of each hidden layer and
10% of the output layer by magnitude (layerwise), and rewinds the survivors to their step-0 values with a fresh
optimizer; the control is the paper's own, `random_reinit` (the ticket's masks with fresh weights from another seed).
Differences from the paper: 10,000 steps (10 epochs) per level instead of 50,000, so that 15 levels and their controls
(31 runs: ~15 s each alone, ~25 s each beside other jobs) finish in about 13 minutes on 2 shared CPU cores;
Fashion-MNIST instead of MNIST; LeCun normal init instead of Glorot normal. Level L keeps 0.8^L of each hidden layer
and 0.9^L of the output layer: 51.3% of the weights at level 3, 21.1% at level 7, 3.6% at level 15, the three points
the paper singles out. Published (Frankle & Carbin 2019, MNIST, 50k iterations): winning tickets with 51.3% of the
weights learn faster than the dense network, 21.1% is about the best, and at 3.6% they fall back to the dense
accuracy; randomly reinitialized subnetworks lose accuracy steadily as they are pruned.
Measured here (seed 0, 2 CPU cores shared with other jobs, 759 s of training, 12m43s in all): best test accuracy
(evaluated every 500 steps) dense 89.04%; tickets 89.24% at 51.3% of the weights, 89.81% at 21.1%, 89.95% at 4.5% (the
highest), 89.53% at 3.6%; random_reinit 88.69%, 88.82%, 87.78%, 87.79% at the same levels. Tickets stay above the
dense network down to 3.6% here (the paper's MNIST tickets fell back to dense accuracy there), and the gap to
random_reinit grows with sparsity (+0.6 points at 51.3%, +1.7 at 3.6%). Final accuracy at level 15: 89.35%.

Expected at the defaults (measured, seed 0, 2 CPU cores shared with other jobs; step 10000; the layer sparsities of
dense_0 / dense_1 / head; seconds of training / in all):
  method    test accuracy  test loss  layers                 time
  dense     0.890          0.34       -                      15 / 19
  gmp       0.894          0.32       (uniform, 0.900 each)  18 / 23
  set       0.885          0.34       0.920 / 0.770 / 0.000  46 / 68
  rigl      0.884          0.34       0.920 / 0.770 / 0.000  36 / 49
  granet    0.891          0.32       0.911 / 0.818 / 0.892  21 / 33
  snip      0.877          0.36       0.919 / 0.772 / 0.383  25 / 37
  grasp     0.874          0.36       0.921 / 0.752 / 0.399  20 / 36
  synflow   0.881          0.35       0.928 / 0.713 / 0.029  17 / 24
  random    0.875          0.35       0.900 / 0.900 / 0.900  18 / 24
  movement  0.891          0.33       0.900 / 0.900 / 0.900  21 / 25
Every pruned run ends at sparsity 0.9000 (26620/266200 weights kept).
"""
from configs import default, methods

WHERE = "configs/fashion_mnist_lenet300.py"
METHODS = ("dense", "gmp", "imp") + methods.METHODS


def get_config(arg=None):
  args = methods.parse_arg(arg, WHERE, METHODS, method="dense", target=0.9)
  config = default.get_config()
  config.model.name = "lenet300"
  config.data.name = "fashion_mnist"
  training = config.training
  training.optimizer = "adam"
  training.learning_rate = 1.2e-3
  training.batch_size = 60
  training.num_steps = 10000
  training.eval_every = 2000
  training.log_every = 500
  training.checkpoint_every = 2000
  config.sparsity.algorithm = "dense"
  if args.method == "gmp":
    methods.set_gmp(config, args.target, "uniform", begin_fraction=0.1, update_every=200)
  elif args.method == "imp":
    training.eval_every = 500
    training.checkpoint_every = 5000
    training.keep_checkpoints = 1
    s = config.sparsity
    s.algorithm, s.levels = "imp", 15
    s.prune_fraction = 0.2                        # hidden layers
    s.prune_fraction_overrides = {"^head/": 0.1}  # the output layer at half the rate
    s.distribution = "uniform"                    # layerwise
    s.rewind, s.control = "init", "random_reinit"
  elif args.method != "dense":
    methods.set_method(config, args.method, target=args.target)
  return config
