"""Writes notebooks/quickstart.ipynb from the cells below (edit here, then run this file).

  python notebooks/make_quickstart.py            # the notebook without outputs
  python notebooks/make_quickstart.py --execute  # run it top to bottom (nbclient) and keep the outputs

tests/test_notebook.py checks that the committed notebook's cells are these, and executes it.
"""
from __future__ import annotations

import os
import sys
import time

import nbformat

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.ipynb")

CELLS = [
    ("markdown", """\
# sparsejax quickstart: pruning in your own Flax loop

A small MLP on scikit-learn's handwritten digits (8x8 images, no download), trained by a plain JAX loop, pruned three
ways with library calls:

1. **gradual magnitude pruning** (Zhu & Gupta 2017): `sj.sparsify(optimizer, sj.create_pruner({"algorithm": "gmp", ...}))`,
2. **RigL** (Evci et al. 2020): the same line with `"algorithm": "rigl"`, sparse from the first step,
3. **a lottery ticket** (Frankle & Carbin 2019; late rewinding, Frankle et al. 2020) with `sj.tickets`,

then test accuracy against sparsity for all three. About a minute on a laptop CPU; the test suite runs it
(`tests/test_notebook.py`), and the `assert` lines are its checks.

**On Colab** the first cell installs sparsejax with pip (set `SPARSEJAX` to your fork's URL); anywhere else it does
nothing (run the notebook from a checkout where `pip install -e .` or `make test` has installed sparsejax)."""),
    ("code", """\
import subprocess, sys
SPARSEJAX = "git+https://github.com/<your-fork>/sparsejax"  # or a local path; only read on Colab
if "google.colab" in sys.modules:  # the library needs jax, flax, optax, numpy: Colab has them, and sklearn
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", SPARSEJAX], check=True)"""),
    ("code", """\
import time
import flax.linen as nn
import jax
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
import sparsejax as sj

start = time.time()
sj.tune_cpu_allocator()  # CPU only: lets XLA reuse its temporary buffers (README, "Benchmarks"); harmless elsewhere
digits = load_digits()
x_train, x_test, y_train, y_test = train_test_split(
    (digits.data / 16).astype(np.float32), digits.target.astype(np.int32), test_size=0.25, random_state=0,
    stratify=digits.target)
model = nn.Sequential([nn.Dense(128), nn.relu, nn.Dense(128), nn.relu, nn.Dense(10)])
init = model.init(jax.random.key(0), x_train[:1])["params"]
print(len(x_train), "train,", len(x_test), "test;", sum(p.size for p in jax.tree.leaves(init)), "parameters")"""),
    ("markdown", """\
## Your training loop
Nothing here knows about sparsity: a jitted step for any optax optimizer `tx`, a fixed order of minibatches (so a
rewound run sees the same batches from step k on), and the test accuracy."""),
    ("code", """\
STEPS, BATCH = 300, 64
batches = np.random.default_rng(0).integers(0, len(x_train), (STEPS, BATCH))

def make_step(tx):
  @jax.jit
  def step(params, opt_state, x, y):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step

def train(step, params, opt_state, begin=0, end=STEPS):
  for i in range(begin, end):
    params, opt_state = step(params, opt_state, x_train[batches[i]], y_train[batches[i]])
  return params, opt_state

@jax.jit
def accuracy(params):
  return (model.apply({"params": params}, x_test).argmax(-1) == y_test).mean()"""),
    ("markdown", """\
## 1. Gradual magnitude pruning
`sj.sparsify` wraps the optimizer (it must be the last transformation); the masks live in the optimizer state and
are updated inside the jitted step on the pruner's schedule: here from dense to the target between steps 0 and 200,
every 20 steps. `sj.summary(masks, params)` counts the zeros in the weights themselves."""),
    ("code", """\
TARGETS = [0.75, 0.9375]  # the sparsities of the lottery ticket's levels 2 and 4 below

def prune(config):
  tx = sj.sparsify(optax.adam(3e-3), sj.create_pruner(config))
  params, opt_state = sj.sparse_init(tx, init)  # tx.init; params masked if the pruner starts sparse (rigl)
  params, opt_state = train(make_step(tx), params, opt_state)
  return params, sj.get_masks(opt_state)

def sparsities(masks, params):  # (in the masks, counted in the weights)
  return sj.summary(masks)["total"]["sparsity"], sj.summary(masks, params)["total"]["sparsity"]

gmp = {}
for target in TARGETS:
  params, masks = prune({"algorithm": "gmp", "target": target, "end_step": 200, "update_every": 20})
  in_masks, in_weights = sparsities(masks, params)
  gmp[target] = (in_weights, float(accuracy(params)))
  print(f"gmp  target {target:.4f}: sparsity {in_weights:.4f} (counted in the weights), "
        f"test accuracy {gmp[target][1]:.3f}")
  assert abs(in_masks - target) < 1e-3 and abs(in_weights - target) < 1e-3  # the target, up to per-layer rounding
for layer, row in sj.summary(masks, params)["layers"].items():  # the last run, per layer
  print(f"  {layer}: {row['nnz']} of {row['size']} weights kept, sparsity {row['sparsity']:.4f}")"""),
    ("markdown", """\
## 2. RigL
Sparse from step 0 (an ERK random mask), then every 20 steps until step 200 it drops the smallest weights and grows
the same number where the gradient is largest. The masks keep the target exactly; a weight grown at 0 that gets no
gradient (behind a dead ReLU) stays 0, so the weights can count a little sparser."""),
    ("code", """\
rigl = {}  # each target compiles its step and its random start: a few seconds each on CPU
for target in TARGETS:
  params, masks = prune({"algorithm": "rigl", "target": target, "distribution": "erk", "end_step": 200,
                         "update_every": 20})
  in_masks, in_weights = sparsities(masks, params)
  rigl[target] = (in_weights, float(accuracy(params)))
  print(f"rigl target {target:.4f}: sparsity {in_weights:.4f} (counted in the weights), "
        f"test accuracy {rigl[target][1]:.3f}")
  assert abs(in_masks - target) < 1e-3 and in_weights >= in_masks"""),
    ("markdown", """\
## 3. A lottery ticket with `sj.tickets`
Iterative magnitude pruning: train, remove half of the remaining weights of each layer by magnitude
(`sj.tickets.next_masks`), rewind the survivors to their values at step 20 of the dense run (`sj.tickets.snapshot`,
then `sj.tickets.rewind`), train again from step 20. The `imp` pruner keeps whatever masks it is given, so every level
reuses one compiled step. The control: the same per-layer counts at random places (`sj.tickets.random_mask`),
rewound and trained the same way. Level 0, trained dense, is the baseline of the plot."""),
    ("code", """\
LEVELS, PRUNE_FRACTION, REWIND_STEP = 4, 0.5, 20
tx = sj.sparsify(optax.adam(3e-3), sj.create_pruner({"algorithm": "imp"}))
step = make_step(tx)

masks = sj.create_masks(init)  # level 0 trains dense (all True)
params, opt_state = train(step, *sj.tickets.rewind(init, tx.init(init), masks), end=REWIND_STEP)
saved = sj.tickets.snapshot((params, opt_state))  # late rewinding: the weights and optimizer state at step 20
params, opt_state = train(step, params, opt_state, begin=REWIND_STEP)
dense_acc = float(accuracy(params))  # level 0 is the dense baseline
print(f"imp level 0 (dense): test accuracy {dense_acc:.3f}")
assert dense_acc > 0.9
ticket, control = {}, {}
for level in range(1, LEVELS + 1):
  masks = sj.tickets.next_masks(params, masks, prune_fraction=PRUNE_FRACTION)
  params, opt_state = train(step, *sj.tickets.rewind(*saved, masks), begin=REWIND_STEP)
  sparsity = sj.summary(masks, params)["total"]["sparsity"]
  ticket[sparsity] = float(accuracy(params))
  random_masks = sj.tickets.random_mask(masks, seed=0, level=level)
  control_params, _ = train(step, *sj.tickets.rewind(*saved, random_masks), begin=REWIND_STEP)
  control[sj.summary(random_masks, control_params)["total"]["sparsity"]] = float(accuracy(control_params))
  print(f"imp level {level}: sparsity {sparsity:.4f}, test accuracy {ticket[sparsity]:.3f}, "
        f"random-mask control {list(control.values())[-1]:.3f}")
  assert abs(sparsity - (1 - (1 - PRUNE_FRACTION) ** level)) < 1e-3"""),
    ("markdown", "## 4. Test accuracy against sparsity"),
    ("code", """\
fig, ax = plt.subplots(figsize=(6, 4))
ax.axhline(dense_acc, color="gray", ls=":", label="dense")
for name, runs in [("gmp", dict(gmp.values())), ("rigl", dict(rigl.values())), ("lottery ticket (imp)", ticket),
                   ("imp, random-mask control", control)]:
  ax.plot(list(runs), list(runs.values()), "s--" if "control" in name else "o-", label=name)
ax.set_xlabel("sparsity (counted in the weights)")
ax.set_ylabel("test accuracy")
ax.set_title("MLP 64-128-128-10 on sklearn digits")
ax.legend()
plt.show()
print(f"notebook ran in {time.time() - start:.0f} s")"""),
    ("markdown", """\
Read it with care: the tickets cost a training run per level (five here), gmp and rigl one run each; this is one
seed and 450 test images, so a point of accuracy is noise. The same calls take any Flax, NNX or Equinox model and any
optax optimizer (README: "Library in your own Flax loop", "Flax NNX and Equinox", "Lottery tickets in your own
loop"); `sj.create_pruner` takes every field of the README's sparsity table (`distribution`, `granularity` such as
`2:4`, `prunable` regexes, ...)."""),
]


def build() -> nbformat.NotebookNode:
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
              for kind, src in CELLS]
  for i, cell in enumerate(nb.cells):
    cell.id = f"cell-{i}"  # stable ids: the generator writes the same file every time
  nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                 "language_info": {"name": "python"}}
  return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> float:
  """Runs `nb` in place in a python3 kernel (this interpreter's when no other is registered); returns seconds."""
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  NotebookClient(nb, timeout=timeout, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(PATH)}}).execute()
  return time.time() - t0


def main(argv) -> None:
  nb = build()
  if "--execute" in argv:
    print(f"executed in {execute(nb):.1f} s")
  nbformat.validate(nb)
  nbformat.write(nb, PATH)
  print("wrote", PATH)


if __name__ == "__main__":
  main(sys.argv[1:])
