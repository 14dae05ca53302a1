"""Configs by string (`--config=configs/mnist1d_mlp.py:method=rigl,target=0.95`): the argument parser, the per-method
configs built by string equal to the old per-method files field for field, and every documented command validates."""
import glob
import importlib
import json
import os
import re

from absl import flags
from ml_collections import config_flags
import pytest

from sparsejax import validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `.to_dict()` of every per-method config as it was before the configs took a string (the files of commit 68a99fd),
# at its defaults and with training.num_steps = 1000 (step fields follow num_steps by reference).
OLD = os.path.join(REPO, "tests", "data", "old_method_configs.json")


def _methods():
  return importlib.import_module("configs.methods")


def test_parse_arg_values_and_bare_method():
  parse = _methods().parse_arg
  args = parse("rigl,target=0.95", "c.py", ("dense", "rigl"), method="dense", target=0.9, steps=10, eval=True)
  assert (args.method, args.target, args.steps, args.eval, args.given) == ("rigl", 0.95, 10, True, ("method", "target"))
  args = parse("method=rigl,target=1e-1,steps=3,eval=false", "c.py", ("rigl",), method="rigl", target=0.9,
               steps=10, eval=True)
  assert (args.target, args.steps, args.eval) == (0.1, 3, False)
  assert parse(None, "c.py", ("dense",), method="dense").method == "dense"
  assert parse("", "c.py", ("dense",), method="dense").given == ()


@pytest.mark.parametrize("arg,want", [
    ("method=bogus", "c.py: argument method: got 'bogus'; accepted values: one of dense, gmp"),
    ("tagret=0.5", "c.py: unknown argument 'tagret' (did you mean target?); accepted keys: method, target"),
    ("method=gmp,target=abc", "argument target: got 'abc'; accepted values: a number in [0, 1)"),
    ("method=gmp,target=1", "argument target: got '1'; accepted values: a number in [0, 1)"),
    ("gmp,rigl", "argument 'rigl' is not key=value; accepted keys: method, target"),
    ("target=0.5", "argument target: does not apply to method 'dense'"),
], ids=["method", "unknown_key", "not_a_number", "out_of_range", "second_bare_token", "target_on_dense"])
def test_parse_arg_errors_name_the_key_and_accepted_values(arg, want):
  with pytest.raises(ValueError) as e:
    _methods().parse_arg(arg, "c.py", ("dense", "gmp"), method="dense", target=0.9)
  assert want in str(e.value)


def _norm(config):
  return json.loads(json.dumps(config.to_dict(), sort_keys=True))


def _family_and_method(old_name):
  family, _, method = old_name.rpartition("_")
  return family, "imp" if method == "lth" else method


def test_configs_by_string_equal_the_old_per_method_configs():
  old = json.load(open(OLD))
  assert len(old) == 25
  for name, want in sorted(old.items()):
    family, method = _family_and_method(name)
    for config in (importlib.import_module(f"configs.{family}").get_config(f"method={method}"),
                   importlib.import_module(f"configs.{name}").get_config()):  # the old name, now an alias
      assert _norm(config) == want["default"], name
      config.training.num_steps = 1000
      assert _norm(config) == want["num_steps_1000"], name


def _documented_commands():
  """(source, argv) of every `--config=...` command in README.md, BUILD.md and the configs' docstrings."""
  texts = [(p, open(os.path.join(REPO, p)).read()) for p in ("README.md", "BUILD.md")]
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    module = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")
    texts.append((os.path.relpath(path, REPO), module.__doc__ or ""))
  out = []
  for source, text in texts:
    commands = []
    text = re.sub(r"\\\n\s*", " ", text)  # continuation lines
    for line in text.splitlines():
      if "--config=" not in line:
        continue
      for segment in line.split("--config=")[1:]:
        segment = re.split(r"`| #|\(|;", segment)[0]  # the command ends at a backtick, a comment or a parenthesis
        argv = ["--config=" + segment.split()[0]] if segment.split() else []
        argv += re.findall(r"(?<!\S)--config\.[^\s`'\"),;]+", segment)
        commands.append(argv)
    for argv in commands:
      value = argv[0].split("=", 1)[1] if argv else ""
      if not value or "<" in value or value == "...":
        continue  # a placeholder (configs/<name>.py, ...), not a command
      out.append((source, argv))
  return out


def _expand(argv):
  """METHOD placeholders replaced by each method the config accepts."""
  if "METHOD" not in argv[0]:
    return [argv]
  path = argv[0].split("=", 1)[1].split(":")[0]
  module = importlib.import_module(f"configs.{os.path.basename(path)[:-3]}")
  return [[argv[0].replace("METHOD", m)] + argv[1:] for m in module.METHODS]


def _parse(argv):
  value = argv[0].split("=", 1)[1]
  if "/" not in value and ".py" not in value:  # a shipped config by name (sparsejax-train --config=NAME)
    name, colon, arg = value.partition(":")
    argv = [f"--config=configs/{name}.py{colon}{arg}"] + argv[1:]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=["prog"] + argv)
  fv(["prog"] + argv)
  return fv.config


def test_every_documented_command_validates(monkeypatch):
  monkeypatch.chdir(REPO)
  # init_from names a finished run that a fresh checkout does not have; everything else is checked.
  monkeypatch.setattr(validation, "check_init_from", lambda config, workdir=None: None)
  commands = _documented_commands()
  assert len(commands) >= 10
  seen = set()
  for source, argv in commands:
    for expanded in _expand(argv):
      config = _parse(expanded)
      assert type(config).__name__ != "_ErrorConfig", (source, expanded, getattr(config, "_error", None))
      validation.validate(config)
      seen.add(expanded[0])
  # The example: a lottery run from the one MNIST-1D config, rewinding to step 50.
  config = _parse(["--config=configs/mnist1d_mlp.py:method=imp", "--config.sparsity.rewind_step=50"])
  assert validation.validate(config).sparsity.rewind_step == 50
  assert "--config=configs/mnist1d_mlp.py:method=imp" in seen
