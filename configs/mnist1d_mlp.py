"""MNIST-1D, the MLP of the lottery-ticket notebook (Greydanus 2020), dense or pruned: one config, the method by name.

  python -m experiments.train --config=configs/mnist1d_mlp.py:method=METHOD --workdir=runs/mnist1d_mlp_METHOD
  python -m experiments.train --config=configs/mnist1d_mlp.py:method=rigl,target=0.95 --workdir=runs/rigl95
  python -m experiments.train --config=configs/mnist1d_mlp.py:method=imp --workdir=runs/imp \\
      --config.sparsity.rewind_step=50 --config.sparsity.rewind=step

Arguments (comma-separated key=value after the colon; a bare first token is the method):
  method  dense (default) | gmp | imp | set | rigl | granet | snip | grasp | synflow | random | movement;
  target  final sparsity of the pruning methods, default 0.9 (not for dense and imp).
Every field of configs/default.py can still be set with --config.<field>=<value>; the old per-method files
(configs/mnist1d_mlp_<method>.py, mnist1d_mlp_lth.py for imp) are aliases of this one.

All methods but imp: Adam 1e-3, batch 100, 3000 steps, evaluated every 500. gmp (Zhu & Gupta 2017): uniform per
layer, cubic schedule from 0 at 10% to the target at 75% of training, every 100 steps, then fine-tuning. The other
methods' schedules and papers: configs/methods.py. Steps follow `training.num_steps`, so overriding it keeps the
proportions.

imp, the MNIST-1D lottery tickets (Greydanus 2020, notebook `lottery-tickets`): MLP 40 -> 500 -> 500 (residual) -> 10
with PyTorch's default init, Adam 2e-2, batch 100, 1501 steps per level, layerwise magnitude pruning of every kernel
by 20% of what remains per level, survivors rewound to their step-0 values; the random_mask control (same per-layer
counts at random positions, same initial weights) at every level. 12 levels reach 0.8^12 = 6.9% of the weights (93.1%
sparsity). Published (max test accuracy over training): dense 66.4% / 65.4% (two trials); tickets 75.0% at 0.91
sparsity and 74.8% at 0.86; random pruning peaks near 67-69% and falls to about 50-51% at 0.96 sparsity. Measured
here: see README (make run writes the same experiment to runs/quickstart).

Expected at the defaults (measured, seed 0, 2 CPU cores shared with other jobs; step 3000; the layer sparsities of
dense_0 / dense_1 / head; seconds of training / in all):
  method    test accuracy  test loss  layers               time
  dense     0.658          1.57       -                    10 / 15  (fits the 4000 training examples by step 1500)
  gmp       0.691          0.96       0.900 / 0.900 / 0.900  10 / 15
  set       0.641          1.23       0.605 / 0.942 / 0.000  14 / 23
  rigl      0.647          1.17       0.605 / 0.942 / 0.000  16 / 25
  granet    0.671          1.11       0.814 / 0.907 / 0.888  27 / 34
  snip      0.626          1.21       0.387 / 0.955 / 0.189  10 / 21
  grasp     0.593          1.20       0.554 / 0.933 / 0.630  18 / 43
  synflow   0.638          1.32       0.523 / 0.942 / 0.306  18 / 41
  random    0.596          1.06       0.900 / 0.900 / 0.900  17 / 41
  movement  0.696          0.97       0.900 / 0.900 / 0.900  21 / 32
Every pruned run ends at sparsity 0.9000 (27500/275000 weights kept).
"""
from configs import default, methods

WHERE = "configs/mnist1d_mlp.py"
METHODS = ("dense", "gmp", "imp") + methods.METHODS


def get_config(arg=None):
  args = methods.parse_arg(arg, WHERE, METHODS, method="dense", target=0.9)
  config = default.get_config()
  config.model.name = "mnist1d_mlp"
  config.data.name = "mnist1d"
  training = config.training
  training.optimizer = "adam"
  training.learning_rate = 1e-3
  training.batch_size = 100
  training.num_steps = 3000
  training.eval_every = 500
  config.sparsity.algorithm = "dense"
  if args.method == "gmp":
    methods.set_gmp(config, args.target, "uniform", begin_fraction=0.1, update_every=100)
  elif args.method == "imp":
    config.model.kernel_init = "torch"
    training.learning_rate = 2e-2
    training.num_steps = 1501
    training.eval_every = 100
    training.log_every = 100
    training.checkpoint_every = 500
    training.keep_checkpoints = 1
    s = config.sparsity
    s.algorithm, s.levels, s.prune_fraction = "imp", 12, 0.2
    s.distribution = "uniform"     # layerwise
    s.rewind, s.control = "init", "random_mask"
  elif args.method != "dense":
    methods.set_method(config, args.method, target=args.target)
  return config
