"""The sparsity section of each pruning method, and the config-string arguments of the configs that take a method.

`parse_arg(arg, where, methods, **defaults)` reads big_vision's config argument: the text after the colon in
`--config=configs/mnist1d_mlp.py:method=rigl,target=0.95` (comma-separated key=value; a bare first token is the
method, so `configs/text_gpt.py:rigl` still works).

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
import difflib
from typing import Optional

import ml_collections

METHODS = ("set", "rigl", "granet", "snip", "grasp", "synflow", "random", "movement")


def _value(text: str):
  """A config-string value as int, float, bool or str (the first that parses)."""
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def _accepted(key: str, default, methods) -> str:
  if key == "method":
    return f"one of {', '.join(methods)}"
  if key == "target":
    return "a number in [0, 1)"
  return f"a {type(default).__name__}"


def parse_arg(arg: Optional[str], where: str, methods, **defaults) -> ml_collections.ConfigDict:
  """The arguments of `--config=<where>:<arg>`: `defaults` updated from `arg`, checked; a ValueError names the key.

  Args:
    arg: 'method=rigl,target=0.95' (or 'rigl,target=0.95'); None or '': every default.
    where: the config file, for the messages ('configs/mnist1d_mlp.py').
    methods: the accepted values of `method`.
    **defaults: every accepted key with its default (`method` among them); a value must have the default's type
      (an int is accepted for a float).

  Returns:
    A ConfigDict of every key, plus `given`: the keys that `arg` set (sorted).

  >>> args = parse_arg("rigl,target=0.95", "configs/x.py", ("dense", "rigl"), method="dense", target=0.9)
  >>> args.method, args.target, args.given
  ('rigl', 0.95, ('method', 'target'))
  """
  args = dict(defaults)
  given = set()
  for i, token in enumerate(t.strip() for t in (arg or "").split(",")):
    if not token:
      continue
    key, eq, text = token.partition("=")
    key = key.strip()
    if not eq:
      if i > 0 or "method" not in defaults:
        raise ValueError(f"{where}: argument {token!r} is not key=value; accepted keys: {', '.join(defaults)}")
      key, text = "method", token
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=2)
      hint = f" (did you mean {' or '.join(close)}?)" if close else ""
      raise ValueError(f"{where}: unknown argument {key!r}{hint}; accepted keys: {', '.join(defaults)}")
    value, default = _value(text.strip()), defaults[key]
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    ok = type(value) is type(default) or default is None  # pylint: disable=unidiomatic-typecheck (bool is an int)
    if key == "method":
      ok = value in methods
    elif key == "target":
      ok = ok and 0.0 <= value < 1.0
    if not ok:
      raise ValueError(f"{where}: argument {key}: got {text!r}; accepted values: {_accepted(key, default, methods)}")
    args[key] = value
    given.add(key)
  if "target" in given and args["method"] in ("dense", "imp"):
    raise ValueError(f"{where}: argument target: does not apply to method {args['method']!r} (imp's sparsity is set "
                     "by its levels and prune_fraction); accepted with: "
                     f"{', '.join(m for m in methods if m not in ('dense', 'imp'))}")
  config = ml_collections.ConfigDict(args)
  config.given = tuple(sorted(given))
  return config


def set_gmp(config, target: float, distribution: str, begin_fraction: float, update_every: int):
  """Gradual magnitude pruning (Zhu & Gupta 2017) to `target`, from begin_fraction of training to three quarters of
  it, following `config.training.num_steps` (a reference: overriding the step count moves the schedule)."""
  num_steps = config.training.get_ref("num_steps")
  s = config.sparsity
  s.algorithm, s.target, s.distribution = "gmp", target, distribution
  s.begin_step, s.end_step, s.update_every = num_steps // round(1 / begin_fraction), num_steps * 3 // 4, update_every
  return config


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
