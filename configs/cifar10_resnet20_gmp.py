"""CIFAR-10 ResNet-20 (He et al. 2016) pruned to 90% with gradual magnitude pruning (Zhu & Gupta 2017), ERK layers.

SGD with Nesterov momentum 0.9, learning rate 0.1 with 5 warmup epochs and cosine decay, weight decay 5e-4 (L2),
batch 128, 160 epochs. Sparsity follows the cubic schedule from 0 at 5% of training to 90% at 75%, every 500 steps.
ERK keeps more of the small first convolution and the head (Evci et al. 2020). A GPU run. Data from TFDS, prepared
once on a machine with network: `tfds build cifar10 --file_format=array_record` (needs `pip install -e '.[tf]'`).
`--config.mesh.data_parallel=-1` splits the batch over every local device.

  python -m experiments.train --config=configs/cifar10_resnet20_gmp.py --workdir=runs/cifar10_resnet20_gmp

Expected: not yet measured (published dense ResNet-20: 91.3% top-1, He et al. 2016).
"""
from configs import default

NUM_TRAIN, BATCH_SIZE, EPOCHS = 50_000, 128, 160


def get_config():
  config = default.get_config()
  config.model.name = "resnet20"
  config.data.name = "cifar10"
  config.data.source = "tfds"
  config.data.augment = True                      # random crop with 4-pixel padding and horizontal flip
  training = config.training
  training.batch_size = BATCH_SIZE
  training.num_steps = -(-NUM_TRAIN * EPOCHS // BATCH_SIZE)
  training.optimizer = "nesterov"
  training.learning_rate = 0.1
  training.momentum = 0.9
  training.weight_decay = 5e-4
  training.lr_schedule = "warmup_cosine"
  training.warmup_steps = -(-NUM_TRAIN * 5 // BATCH_SIZE)
  training.eval_batch_size = 1000
  training.eval_every = 5000
  training.log_every = 500
  training.checkpoint_every = 5000
  num_steps = training.get_ref("num_steps")
  config.sparsity.algorithm = "gmp"
  config.sparsity.target = 0.9
  config.sparsity.distribution = "erk"
  config.sparsity.begin_step = num_steps // 20
  config.sparsity.end_step = num_steps * 3 // 4
  config.sparsity.update_every = 500
  return config
