"""Shared defaults of every experiment config; the other files in configs/ import this one and change a few fields.

Every field is listed here, so this file is the reference for what a config may hold. `config.sparsity` is the
pruner's config (see sparsejax/config.py for all of its fields); `config.model` holds `name` plus keyword arguments of
`sparsejax.models.create_model`; `config.data` holds `name` plus the dataset options of
`sparsejax.data.create_dataset`.

Used alone it trains the MNIST-1D MLP densely for 3000 steps:
  python -m experiments.train --config=configs/default.py --workdir=runs/default
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = "mnist1d_mlp"

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist1d"
  config.data.source = "auto"                         # auto | idx | tfds
  config.data.data_dir = config_dict.placeholder(str)  # None: the dataset's default location
  config.data.validation_size = 0                     # examples split off the train set
  config.data.normalize = True

  config.training = ml_collections.ConfigDict()
  training = config.training
  training.batch_size = 100
  # Exactly one of num_steps / num_epochs is set; a config in epochs sets num_steps = None in its file.
  training.num_steps = 3000
  training.num_epochs = config_dict.placeholder(float)
  training.optimizer = "adam"                            # sgd | momentum | nesterov | adam | adamw
  training.learning_rate = 1e-3
  training.momentum = 0.9
  training.weight_decay = 0.0                            # adamw: decoupled; others: L2 added to the gradient
  training.lr_schedule = "constant"                      # constant | step | cosine | warmup_cosine
  training.warmup_steps = 0
  training.lr_boundaries = (0.5, 0.75)                   # "step": fractions of training
  training.lr_decay_factor = 0.1
  training.label_smoothing = 0.0
  training.eval_batch_size = 1000
  training.eval_every = 500                              # steps; 0: only at the end
  training.log_every = 100
  training.checkpoint_every = 1000
  training.keep_checkpoints = 2
  training.progress = "auto"                             # auto | bar | lines | none

  config.sparsity = ml_collections.ConfigDict()
  sparsity = config.sparsity
  sparsity.algorithm = "dense"
  sparsity.target = 0.0
  sparsity.distribution = "uniform"                      # uniform | er | erk | global
  sparsity.granularity = "unstructured"                  # unstructured | n:m | block:HxW | channel
  sparsity.begin_step = 0
  sparsity.end_step = 0
  sparsity.update_every = 100

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data_parallel = 1                          # devices the batch is split over; -1: all
  config.mesh.multihost = False                          # True: jax.distributed.initialize() first
  return config
