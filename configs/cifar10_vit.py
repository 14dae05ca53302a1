"""A Vision Transformer (Dosovitskiy et al. 2021) on CIFAR-10 from TFDS, dense or pruned: the method by name.

  python -m experiments.train --config=configs/cifar10_vit.py:METHOD --workdir=runs/cifar10_vit_METHOD

METHOD (default dense):
  dense   no pruning;
  gmp     gradual magnitude pruning to 90% (Zhu & Gupta 2017), ERK, from 5% to 75% of training every 500 steps;
  rigl    RigL at 90% with an ERK split (Evci et al. 2020), drop fraction 0.3 cosine, every 500 steps to 75%.
The model is ViT-Ti with 4x4 patches (64 tokens of 32x32 images, a class token; 5.4M params), its blocks scanned
(each block is its own layer for pruning). AdamW, learning rate 1e-3 with 10 warmup epochs and cosine decay, weight
decay 0.05, batch 128, 200 epochs, random crop and flip. A GPU run, not measured here (no device was lent): no
number is claimed. Data: `tfds build cifar10 --file_format=array_record` once on a machine with network (needs
`pip install -e '.[tf]'`); `--config.mesh.data_parallel=-1` splits the batch over every local device, and
`--config.mesh.fsdp=-1 --config.mesh.model=2` shards the params by the model's rules.
"""
from configs import default, methods

NUM_TRAIN, BATCH_SIZE, EPOCHS = 50_000, 128, 200
METHODS = ("dense", "gmp", "rigl")


def get_config(arg=None):
  method = methods.parse_arg(arg, "configs/cifar10_vit.py", METHODS, method="dense").method
  config = default.get_config()
  config.model.name = "vit"
  config.model.size = "ti"
  config.model.patch_size = 4
  config.model.scan = True
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.data.augment = True
  training = config.training
  training.batch_size = BATCH_SIZE
  training.num_steps = -(-NUM_TRAIN * EPOCHS // BATCH_SIZE)
  training.optimizer = "adamw"
  training.learning_rate = 1e-3
  training.weight_decay = 0.05
  training.lr_schedule = "warmup_cosine"
  training.warmup_steps = -(-NUM_TRAIN * 10 // BATCH_SIZE)
  training.eval_batch_size = 1000
  training.eval_every = 5000
  training.log_every = 500
  training.checkpoint_every = 5000
  steps = training.num_steps
  s = config.sparsity
  s.algorithm = "dense" if method == "dense" else method
  if method != "dense":
    s.target = 0.9
    s.distribution = "erk"
    s.end_step, s.update_every = steps * 3 // 4, 500
  if method == "gmp":
    s.begin_step = steps // 20
  if method == "rigl":
    s.init_distribution = "erk"
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"
  return config
