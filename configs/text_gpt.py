"""A byte-level GPT on the Python documentation (`pydocs`), dense or pruned: one config, the method by name.

  python -m experiments.train --config=configs/text_gpt.py:METHOD --workdir=runs/text_gpt_METHOD
  (METHOD, or method=METHOD: the form of the other configs)

METHOD (default dense):
  dense   no pruning;
  gmp     gradual magnitude pruning to 90% (Zhu & Gupta 2017), uniform per layer, from 10% to 70% of training;
  rigl    RigL at 90% with an ERK split (Evci et al. 2020), drop fraction 0.3 cosine, every 100 steps to 75%;
  nm24    2:4 (Mishra et al. 2021) by gradual magnitude, groups of 4 along each kernel's input axis;
  heads   50% of the attention heads of every block (whole q/k/v columns and output rows; `granularity='head'`),
          gradually by summed magnitude.
Prunable by default: every block kernel and the untied parts (embeddings, norms and biases stay dense). The blocks
are scanned (`nn.scan`); `sparsity.stacked` is set by the engine, so each block is its own layer.

Pruned after training instead (post-training pruning of the dense run's weights; README, "Starting from a trained
run"): --config.init_from=runs/text_gpt_dense --config.posttrain.method=wanda (or magnitude, sparsegpt).

The corpus installs offline (`apt-get install python3.11-doc`, sparsejax/data/text.py); tokens are bytes plus an
end-of-document token (vocabulary 257). The model is the "nano" GPT (4 blocks, width 128, 4 heads; 0.84M params at
context 128), AdamW with warmup and cosine decay, 16 windows of 128 tokens per step. The README's table gives what
each method reached on a 2-core CPU and the command that measured it.
"""
from ml_collections import config_dict

from configs import default, methods

METHODS = ("dense", "gmp", "rigl", "nm24", "heads")


def get_config(arg=None):
  method = methods.parse_arg(arg, "configs/text_gpt.py", METHODS, method="dense").method
  config = default.get_config()
  config.model.name = "gpt"
  config.model.size = "nano"       # nano | micro | mini | small (sparsejax.models.transformer.GPT_SIZES)
  config.model.context = 128
  # None: the size's; any can be set from the command line, e.g. --config.model.width=192.
  config.model.width = config_dict.placeholder(int)
  config.model.depth = config_dict.placeholder(int)
  config.model.heads = config_dict.placeholder(int)
  config.model.scan = True
  config.model.tie_embeddings = True
  config.data.name = "pydocs"
  config.data.context = config.model.get_ref("context")
  config.data.eval_windows = 128
  config.training.optimizer = "adamw"
  config.training.learning_rate = 3e-3
  config.training.weight_decay = 0.01
  config.training.lr_schedule = "warmup_cosine"
  config.training.warmup_steps = 100
  config.training.batch_size = 16
  config.training.num_steps = 1500
  config.training.eval_batch_size = 128
  config.training.eval_every = 500
  config.training.log_every = 100
  config.training.checkpoint_every = 500
  steps = config.training.num_steps
  s = config.sparsity
  s.algorithm = "dense"
  if method in ("gmp", "nm24", "heads"):
    s.algorithm = "gmp"
    s.target = {"gmp": 0.9, "nm24": 0.5, "heads": 0.5}[method]
    s.begin_step, s.end_step, s.update_every = steps // 10, 7 * steps // 10, 50
    if method == "nm24":
      s.granularity = "2:4"
      s.initial_sparsity = 0.5  # n:m keeps n of every m at every update: the schedule is 2:4 from the start
    if method == "heads":
      s.granularity = "head"
  elif method == "rigl":
    s.algorithm = "rigl"
    s.target = 0.9
    s.distribution = "erk"
    s.init_distribution = "erk"
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"
    s.begin_step, s.end_step, s.update_every = 0, 3 * steps // 4, 100
  return config
