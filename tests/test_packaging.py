"""The library installs light: `pip install sparsejax` needs jax, flax, optax and numpy, ships no top-level
`experiments` package, and training with `sparsify` imports nothing of the engine's (orbax, TFDS, ml_collections,
plotting, data sets)."""
import os
import re
import shutil
import subprocess
import sys

import pytest


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE_MODULES = ("orbax", "ml_collections", "tensorflow_datasets", "tensorflow", "matplotlib", "sklearn", "mnist1d",
                  "tqdm", "PIL")
CHECK = """
import re, sys
readme = open(sys.argv[1]).read()
section = readme[readme.index("## Library in your own Flax loop"):]
exec(re.search(r"```python\\n(.*?)```", section, re.S).group(1))
engine = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print("ENGINE", ",".join(engine))
"""


def _setup_lists():
  text = open(os.path.join(REPO, "setup.py")).read()
  requires = re.search(r"INSTALL_REQUIRES = \[(.*?)\]", text, re.S).group(1)
  return [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in re.findall(r'"([^"]+)"', requires)]


def test_install_requires_only_what_the_library_needs():
  assert sorted(_setup_lists()) == ["flax", "jax", "numpy", "optax"]
  text = open(os.path.join(REPO, "setup.py")).read()
  assert 'include=["sparsejax", "sparsejax.*"]' in text and '"experiments"' not in text.split("packages=")[1]


def _run_example(python, cwd):
  proc = subprocess.run([python, "-c", CHECK, os.path.join(REPO, "README.md"), ",".join(ENGINE_MODULES)], cwd=cwd,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  engine = [line for line in proc.stdout.splitlines() if line.startswith("ENGINE")][0]
  return engine.split(" ", 1)[1] if " " in engine else ""


def test_the_readme_example_imports_nothing_of_the_engine(tmp_path):
  assert _run_example(sys.executable, str(tmp_path)) == ""


@pytest.mark.slow
def test_a_bare_install_in_a_fresh_venv_trains_the_readme_example(tmp_path):
  """pip install of the repository without extras into a new venv (wheels come from pip's cache or PyPI; about 35 s
  with a warm cache). In `make test-slow` (CI runs it), for the 15-minute budget of `make test`."""
  source = tmp_path / "src"  # a copy: building the wheel writes build/ beside setup.py
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                              "__pycache__"))
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = str(venv / "bin" / "python")
  install = subprocess.run([python, "-m", "pip", "install", "-q", str(source)], capture_output=True, text=True,
                           timeout=1200)
  assert install.returncode == 0, install.stderr[-3000:]
  assert _run_example(python, str(tmp_path)) == ""
  missing = subprocess.run([python, "-c", "import experiments"], cwd=str(tmp_path), capture_output=True, text=True)
  assert missing.returncode != 0  # no top-level `experiments` package in users' site-packages


@pytest.mark.slow
def test_a_pip_installed_user_launches_a_shipped_config_by_name(tmp_path):
  """The wheel (built from a copy of the repository) installed with --no-deps into a folder, run from elsewhere:
  `sparsejax.launch` (the `sparsejax-train` command) finds the shipped config by name; nothing of the checkout is on
  the path (the engine's dependencies come from this environment)."""
  source = tmp_path / "src"
  shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info",
                                                              "__pycache__"))
  wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
  elsewhere.mkdir()
  build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                         capture_output=True, text=True, timeout=600)
  assert build.returncode == 0, build.stderr[-3000:]
  (wheel,) = list(wheels.glob("sparsejax-*.whl"))
  install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                            str(wheel)], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  entry = (next(target.glob("sparsejax-*.dist-info")) / "entry_points.txt").read_text()
  assert "sparsejax-train = sparsejax.launch:main" in entry
  assert not (target / "experiments").exists() and not (target / "configs").exists()
  env = dict(os.environ, PYTHONPATH=str(target), XLA_FLAGS="", JAX_PLATFORMS="cpu")
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "sparsejax.launch", "--config=mnist1d_mlp_gmp", f"--workdir={workdir}",
                         "--config.training.num_steps=30", "--config.training.eval_every=30"],
                        cwd=str(elsewhere), env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "sparsity 0.9000" in proc.stdout and (workdir / "results.json").exists()
  where = subprocess.run([sys.executable, "-c", "import sparsejax; print(sparsejax.__file__)"], cwd=str(elsewhere),
                         env=env, capture_output=True, text=True)
  assert where.stdout.startswith(str(target))  # the installed copy ran, not the checkout
  bad = subprocess.run([sys.executable, "-m", "sparsejax.launch", "--config=no_such_config", f"--workdir={workdir}2"],
                       cwd=str(elsewhere), env=env, capture_output=True, text=True, timeout=600)
  assert bad.returncode == 2 and "shipped configs: cifar10_conv2," in bad.stderr and "Traceback" not in bad.stderr
  assert "mnist1d_mlp," in bad.stderr and "cifar10_conv2_lth" in bad.stderr  # family configs and the old aliases
  assert not os.path.exists(f"{workdir}2")
