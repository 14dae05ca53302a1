"""A byte-level GPT (the "nano" size, 0.84M params at context 128) trained dense on the Python documentation (`pydocs`).

The corpus installs offline with `sudo apt-get install python3.11-doc` (see sparsejax/data/text.py); tokens are bytes
plus an end-of-document token (vocabulary 257). Adam with a linear warmup and cosine decay (GPT-2's recipe, Radford
et al. 2019, at a small scale), context 128, 16 windows (2048 tokens) a step for 2000 steps (4.1M tokens, about 0.43
epochs of the 9.5 MB train split). Validation and test perplexity are measured on 128 evenly spaced windows of each
split (16384 tokens; `config.data.eval_windows`) every 500 steps; set eval_windows=None for the whole splits.

  python -m experiments.train --config=configs/text_gpt_dense.py --workdir=runs/text_gpt_dense

Not yet measured end to end. Its model's train step took 1.45 s for 32 windows of 128 tokens while two other jobs
shared the 2 cores (load average 8), so about 0.7 s for these 16: some 25 minutes on a shared machine; alone it
should be several times faster (unmeasured). For scale: a uniform guess over the 257 tokens has perplexity 257, and
after 100 steps of 32 windows the validation perplexity was 19.4.
"""
from ml_collections import config_dict

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "gpt"
  config.model.size = "nano"       # nano | micro | mini | small (sparsejax.models.transformer.GPT_SIZES)
  config.model.context = 128
  # None: the size's; set any of them from the command line, e.g. --config.model.width=192.
  config.model.width = config_dict.placeholder(int)
  config.model.depth = config_dict.placeholder(int)
  config.model.heads = config_dict.placeholder(int)
  config.model.mlp_ratio = 4
  config.model.scan = True         # one compiled block for all layers
  config.model.tie_embeddings = True
  config.model.dropout = 0.0
  config.data.name = "pydocs"
  config.data.context = config.model.get_ref("context")  # the model's positions and the data's windows agree
  config.data.eval_windows = 128
  config.training.optimizer = "adamw"
  config.training.learning_rate = 3e-3
  config.training.weight_decay = 0.01
  config.training.lr_schedule = "warmup_cosine"
  config.training.warmup_steps = 100
  config.training.batch_size = 16
  config.training.num_steps = 2000
  config.training.eval_batch_size = 128
  config.training.eval_every = 500
  config.training.log_every = 100
  config.sparsity.algorithm = "dense"
  return config
