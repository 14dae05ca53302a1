r"""The launcher: trains one config; the loop is `sparsejax.train.train_and_evaluate`.

From a checkout:
  python -m experiments.train --config=configs/mnist1d_mlp_gmp.py --workdir=runs/mnist1d_mlp_gmp \
      [--config.training.num_steps=500 ...]
From a pip install (`pip install 'sparsejax[engine]'`), the shipped configs by name:
  sparsejax-train --config=mnist1d_mlp_gmp --workdir=runs/mnist1d_mlp_gmp   (or python -m sparsejax.launch ...)

--config takes a config file's path, or the name of a shipped config (`sparsejax.configs`, the repository's
configs/ directory) with or without `.py`, then optionally `:ARGS`, the config's argument in big_vision's form
(`--config=configs/mnist1d_mlp.py:method=rigl,target=0.95`; each config's docstring lists its keys). Running again with the same workdir resumes from its latest checkpoint; a
finished run prints its results.

Exit status: 0 when the run finished (or was already finished); 2 for a bad input (a config field, a config file, a
flag, a workdir, missing data), with one message on stderr that names what is wrong and what is accepted, and no
traceback (`--traceback` shows it); 3 when training diverged (results.json then says "status": "diverged"); 143
(128 + SIGTERM) when the run was preempted: it saved a checkpoint first, and the same command resumes from it.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Optional, Sequence

BAD_INPUT, DIVERGED, PREEMPTED = 2, 3, 143


def _config_fields(argv: Sequence[str]) -> list[str]:
  """Every field path of the config file named by --config (for suggestions), or [] when it cannot be loaded."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None:
    return []
  try:
    import importlib.util  # pylint: disable=g-import-not-at-top
    path, colon, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("_sparsejax_config_hint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if colon else module.get_config()
  except Exception:  # pylint: disable=broad-except (only for a hint)
    return []
  out = []

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        out.append(f"{prefix}{key}")

  if config is not None:
    walk(config, "config.")
  return out


def _flag_error(error: Exception, argv: Sequence[str]) -> str:
  from sparsejax import validation  # pylint: disable=g-import-not-at-top
  fields = _config_fields(argv)
  for arg in argv:
    name = arg[2:].split("=", 1)[0] if arg.startswith("--config.") else None
    if name and fields and name not in fields:
      return (f"{name}: unknown field{validation.close_names(name, fields)}; every field of configs/default.py can "
              "be set from the command line")
    if name and "=" in arg and fields:
      value = arg.split("=", 1)[1]
      if str(error).find(name.split(".")[-1]) >= 0 or str(error).find(value) >= 0:
        return f"{name}: got {value!r}, which cannot be parsed: {' '.join(str(error).split())}"
  text = str(error).strip().splitlines()
  name = None
  if type(error).__name__ == "UnrecognizedFlagError":
    name = text[0].split("'")[1] if "'" in text[0] else None
  if name and name.startswith("config."):
    return f"{name}: unknown field; every field of configs/default.py can be set from the command line"
  if name:
    return f"--{name}: unknown flag; accepted flags: --config, --config.<field>, --workdir, --traceback"
  detail = " ".join(line.strip() for line in text if line.strip())
  if "Traceback (most recent call last)" in detail:
    # A config's get_config raised (e.g. configs/text_gpt.py:METHOD with an unknown method): its message, not the
    # traceback ml_collections folds into the flag error.
    last = re.findall(r"\b(\w+(?:Error|Exception)): (.*?)(?= \w+(?:Error|Exception): |$)", detail)
    where = detail.split(": Error whilst parsing config file")[0]
    if last:
      return f"--config: {where.split('=', 1)[-1]}: {last[-1][1]}"
  return f"--config: {detail}"


def shipped_configs() -> dict:
  """{name: path} of the configs that come with sparsejax: the installed `sparsejax.configs` package."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("sparsejax.configs")
  if spec is None or not spec.submodule_search_locations:
    return {}
  out = {}
  for folder in spec.submodule_search_locations:
    for name in sorted(os.listdir(folder)):
      if name.endswith(".py") and name != "__init__.py" and name not in ("default.py", "methods.py"):
        out[name[:-3]] = os.path.join(folder, name)
  return out


def resolve_config_arg(argv: Sequence[str]) -> list:
  """argv with `--config=NAME` (not a file) replaced by the path of the shipped config NAME.

  The shipped configs import each other as `configs.<name>`: when one is used from an install, that name is mapped
  to the installed package (only in this process). Unknown names are left as they are (the flag parser then says
  the file cannot be loaded, and `run` lists the shipped names).
  """
  out = []
  for arg in argv:
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
      path, colon, rest = value.partition(":")
      if not os.path.exists(path):
        name = os.path.basename(path)[:-3] if path.endswith(".py") else path
        found = shipped_configs().get(name)
        if found is not None and os.path.dirname(path) in ("", "configs"):
          _alias_configs_package()
          arg = f"--config={found}{colon}{rest}"
    out.append(arg)
  return out


def _alias_configs_package():
  import importlib.util  # pylint: disable=g-import-not-at-top
  here = importlib.util.find_spec("configs") if "configs" not in sys.modules else None
  if "configs" in sys.modules or (here is not None and here.origin and os.path.exists(
      os.path.join(os.path.dirname(here.origin), "mnist1d_mlp_dense.py"))):
    return  # a checkout's configs package (or one already imported) serves
  import importlib  # pylint: disable=g-import-not-at-top
  sys.modules["configs"] = importlib.import_module("sparsejax.configs")


def run(argv: Sequence[str], stderr=None) -> int:
  """The launcher as a function: parses `argv`, trains, and returns the exit status (see the module docstring)."""
  stderr = stderr or sys.stderr
  argv = resolve_config_arg(argv)
  given = next((a.split("=", 1)[1].partition(":")[0] for a in argv if a.startswith("--config=")), None)
  if given is not None and not os.path.isfile(given):
    print(f"error: --config: {given!r}: No such file, and no shipped config has that name; shipped configs: "
          f"{', '.join(shipped_configs()) or '(none installed)'}", file=stderr, flush=True)
    return BAD_INPUT
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Path to an experiment config file (configs/*.py).",
                                  flag_values=fv, lock_config=True, sys_argv=list(argv))
  flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, checkpoints and results.", flag_values=fv)
  flags.DEFINE_bool("traceback", False, "Show the Python traceback of an error.", flag_values=fv)
  traceback = "--traceback" in argv
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv[1:]):
    print(__doc__.strip() + "\n\nflags:\n" + fv.get_help(), flush=True)
    return 0

  def fail(message: str, status: int = BAD_INPUT) -> int:
    print(f"error: {message}", file=stderr, flush=True)
    if traceback:
      import traceback as tb  # pylint: disable=g-import-not-at-top
      tb.print_exc(file=stderr)
    return status

  try:
    fv(list(argv))
    config = fv.config
    if type(config).__name__ == "_ErrorConfig":  # ml_collections defers a config file's load error
      raise getattr(config, "_error")
  except Exception as e:  # pylint: disable=broad-except (every way a flag or a config file can be wrong)
    return fail(_flag_error(e, argv))
  if config is None:
    return fail("--config: required; accepted values: a config file such as configs/mnist1d_mlp_gmp.py, or the "
                f"name of a shipped config: {', '.join(shipped_configs()) or '(none installed)'}")
  if fv.workdir is None:
    return fail("--workdir: required; accepted values: a directory path (created when missing)")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; our progress lines say what matters
  from sparsejax import cpu  # pylint: disable=g-import-not-at-top
  cpu.tune_allocator()  # XLA:CPU's per-step temporaries stay in glibc's heap (see sparsejax.cpu)
  from sparsejax import train, validation  # pylint: disable=g-import-not-at-top (--help answers without JAX)
  try:
    results = train.train_and_evaluate(config, fv.workdir)
  except train.Diverged as e:  # an IMP level (a single run writes results.json with its status instead)
    print(f"error: {e}", file=stderr, flush=True)
    return DIVERGED
  except train.Preempted as e:
    print(f"stopped: {e}", file=stderr, flush=True)
    return PREEMPTED
  except (validation.ConfigError, ValueError, OSError) as e:  # OSError: missing data, a checkpoint save that failed
    return fail(str(e))
  if results.get("status") == "diverged":
    return DIVERGED
  return 0


def main(argv: Optional[Sequence[str]] = None) -> None:
  sys.exit(run(list(sys.argv if argv is None else argv)))


if __name__ == "__main__":
  main()
