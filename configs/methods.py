"""The sparsity section of each pruning method, shared by configs/<family>_<method>.py and the method comparison.

`set_method(config, method, target)` writes `config.sparsity` for one method on top of a dense config. Steps are
references to `config.training.num_steps`, so `--config.training.num_steps=N` keeps the proportions:

- set / rigl (Mocanu et al. 2018 / Evci et al. 2020): sparse from step 0, random ERK start (for an MLP ERK is the
  Erdos-Renyi split of SET: both are (n_in + n_out) / (n_in * n_out)), every 100 steps drop 30% of each layer's weights
  (cosine decay of the fraction, RigL's schedule) until 75% of training, then a fixed mask. SET grows at random, RigL
  by |dense gradient|; SET here uses RigL's schedule (as the RigL paper runs it) rather than one update per epoch.
- granet (Liu et al. 2021): dense to sparse, cubic global magnitude pruning from 10% to 75% of training (as GMP),
  every 100 steps, with neuroregeneration (drop 50% of each layer's remaining weights by magnitude, regrow as many by
  |gradient|, cosine-decayed) at the same steps; a fixed mask for the last quarter.
- snip / grasp / synflow (Lee et al. 2019 / Wang et al. 2020 / Tanaka et al. 2020): masks found once at
  initialisation with one global threshold, as the papers do (no per-layer floor, so layers may collapse). SNIP
  scores one training batch, GraSP two (about 10 examples per class, as its reference code; temperature 200), SynFlow
  100 data-free rounds.
- random: a random mask at initialisation, uniform per layer (the papers' random-pruning control).
- movement (Sanh et al. 2020): hard movement pruning, cubic schedule from 10% to 75% of training every 100 steps,
  uniform per layer (as the GMP configs).
"""
METHODS = ("set", "rigl", "granet", "snip", "grasp", "synflow", "random", "movement")


def set_method(config, method: str, target: float = 0.9):
  """Sets `config.sparsity` to `method` at `target` sparsity (see the module docstring); returns `config`."""
  if method not in METHODS:
    raise ValueError(f"configs.methods: unknown method {method!r}; expected one of {METHODS}")
  num_steps = config.training.get_ref("num_steps")
  s = config.sparsity
  s.algorithm = method
  s.target = target
  if method in ("set", "rigl"):
    s.distribution = "erk"
    s.init_distribution = "erk"
    s.begin_step = 0
    s.end_step = num_steps * 3 // 4
    s.update_every = 100
    s.drop_fraction = 0.3
    s.drop_schedule = "cosine"
  elif method == "granet":
    s.distribution = "global"
    s.initial = "dense"
    s.begin_step = num_steps // 10
    s.end_step = num_steps * 3 // 4
    s.update_every = 100
    s.drop_fraction = 0.5
    s.drop_schedule = "cosine"
  elif method in ("snip", "grasp", "synflow"):
    s.distribution = "global"
    s.begin_step = 0
    s.end_step = 0
    if method == "grasp":
      s.num_batches = 2
      s.temperature = 200.0
    if method == "synflow":
      s.iterations = 100
  elif method == "random":
    s.distribution = "uniform"
    s.begin_step = 0
    s.end_step = 0
  else:  # movement
    s.distribution = "uniform"
    s.begin_step = num_steps // 10
    s.end_step = num_steps * 3 // 4
    s.update_every = 100
  return config
