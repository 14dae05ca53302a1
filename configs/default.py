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
  # The workdir of an earlier run of the same model: its latest checkpoint's params (and batch_stats) are the starting
  # weights. None: a fresh init.
  config.init_from = config_dict.placeholder(str)

  config.model = ml_collections.ConfigDict()
  config.model.name = "mnist1d_mlp"
  # Options every model of the zoo takes; None: the model's default. Others (widths, shortcut, small_input...) are
  # set by the configs of the models that take them.
  config.model.kernel_init = config_dict.placeholder(str)  # he | lecun | torch | glorot
  config.model.dtype = config_dict.placeholder(str)        # float32 | bfloat16 (computation; params stay float32)

  config.data = ml_collections.ConfigDict()
  config.data.name = "mnist1d"
  config.data.source = "auto"                         # auto | idx | tfds
  config.data.data_dir = config_dict.placeholder(str)  # None: the dataset's default location
  config.data.validation_size = 0                     # examples split off the train set
  config.data.normalize = True
  # Per-dataset options; None: the dataset's default, and ignored by datasets that do not take them.
  config.data.augment = config_dict.placeholder(bool)        # image datasets: random crop and flip
  config.data.in_memory = config_dict.placeholder(bool)      # tfds: None decides by size
  config.data.num_samples = config_dict.placeholder(int)     # mnist1d
  config.data.train_split = config_dict.placeholder(float)   # mnist1d
  config.data.data_seed = config_dict.placeholder(int)       # mnist1d
  config.data.context = config_dict.placeholder(int)         # pydocs: tokens per example
  config.data.eval_windows = config_dict.placeholder(int)    # pydocs: validation / test windows kept (None: all)

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
  training.async_checkpoint = True                       # write checkpoints in the background while training
  training.progress = "auto"                             # auto | bar | lines | none
  training.tensorboard = False                           # also TensorBoard event files beside metrics.jsonl

  # Every field of sparsejax/config.py, so that each can be set from the command line on every config.
  config.sparsity = ml_collections.ConfigDict()
  sparsity = config.sparsity
  # dense | oneshot | gmp | imp | set | rigl | granet | snip | grasp | synflow | random | movement
  sparsity.algorithm = "dense"
  sparsity.target = 0.0
  sparsity.distribution = "uniform"                      # uniform | er | erk | global
  sparsity.granularity = "unstructured"                  # unstructured | n:m | block:RxC | channel
  sparsity.layout = "flax"                               # 'flax' (..., in, out) or 'torch' (out, in, ...)
  sparsity.nm_axis = config_dict.placeholder(int)        # None: the layout's input axis
  sparsity.channel_axis = config_dict.placeholder(int)   # None: the layout's output axis ('channel')
  sparsity.prunable = config_dict.placeholder(tuple)     # regexes; None: every float leaf with ndim >= 2
  sparsity.stacked = config_dict.placeholder(tuple)      # regexes of nn.scan-stacked leaves; None: the model's own
  sparsity.min_density = 0.0
  sparsity.selection = "auto"                            # auto | packed | per_layer (per_layer: where the shards are)
  sparsity.overrides = config_dict.placeholder(dict)     # {regex: sparsity}
  sparsity.begin_step = 0
  sparsity.end_step = config_dict.placeholder(int)       # None: begin_step
  sparsity.update_every = 100
  sparsity.initial_sparsity = 0.0
  sparsity.power = 3.0
  sparsity.seed = config_dict.placeholder(int)           # None: config.seed
  sparsity.levels = 0                                    # imp
  sparsity.prune_fraction = 0.2
  sparsity.rewind = "init"                               # init | step | lr | finetune
  sparsity.rewind_step = 0
  sparsity.prune_fraction_overrides = config_dict.placeholder(dict)
  sparsity.control = "none"                              # none | random_reinit | random_mask | both
  sparsity.drop_fraction = 0.3                           # set, rigl, granet
  sparsity.drop_schedule = "cosine"                      # cosine | constant | linear
  sparsity.init_distribution = "erk"                     # granet's sparse start (set/rigl: distribution)
  sparsity.initial = "dense"                             # granet: dense | sparse
  sparsity.regrow_end_step = config_dict.placeholder(int)
  sparsity.iterations = 100                              # synflow rounds
  sparsity.num_batches = 1                               # snip / grasp batches
  sparsity.temperature = 200.0                           # grasp

  # Post-training (one-shot) pruning of the weights of `init_from` (sparsejax/posttrain.py; sparsejax/posttrain_run.py):
  # needs init_from and sparsity.algorithm 'dense'. training.num_steps is then the length of the recovery.
  config.posttrain = ml_collections.ConfigDict()
  posttrain = config.posttrain
  posttrain.method = config_dict.placeholder(str)        # None: off | magnitude | wanda | sparsegpt
  posttrain.target = 0.5                                 # fraction of the prunable weights pruned (n:m: 1 - n/m)
  posttrain.distribution = "uniform"                     # uniform | owl (Yin et al. 2023)
  posttrain.granularity = "unstructured"                 # unstructured | N:M (e.g. '2:4')
  posttrain.calibration_batches = 8                      # train batches (training.batch_size) that calibrate
  posttrain.block_size = 128                             # sparsegpt: lazy-update block
  posttrain.damp = 0.01                                  # sparsegpt: dampening, a fraction of mean(diag(H))
  posttrain.owl_lambda = 0.08                            # owl: spread of the layer sparsities
  posttrain.owl_m = 5.0                                  # owl: outlier threshold (times the mean score)
  posttrain.recovery = "none"                            # none | sparse (kept weights) | bias_norm (PERP)

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data_parallel = 1                          # size of the mesh's "data" axis; -1: the rest of the devices
  config.mesh.fsdp = 1                                   # "fsdp" axis: batch split too, large params split over it
  config.mesh.model = 1                                  # "model" axis: split by rules only (heads, MLP hidden)
  config.mesh.rules = ()                                 # ((regex over param paths, PartitionSpec tuple), ...)
  config.mesh.fsdp_min_size = 2**14                      # params this large (entries) are split over "fsdp"
  config.mesh.multihost = False                          # True: jax.distributed.initialize() first
  return config
