"""sparsejax: sparse neural network training in JAX.

>>> import optax, sparsejax as sj
>>> pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.9, "end_step": 1000, "update_every": 100})
>>> tx = sj.sparsify(optax.adam(1e-3), pruner)
"""
from sparsejax import distributions, export, granularity, masks, posttrain, schedules, select, tickets
from sparsejax.cpu import tune_allocator as tune_cpu_allocator
from sparsejax.masks import apply_masks, create_masks, summary
from sparsejax.pruners import REGISTRY, Pruner, PrunerState, create_pruner
from sparsejax.pruners.pai import layer_collapse, prune_at_init
from sparsejax.transform import SparseState, check_pruned, get_masks, get_step, hyperparams, set_masks, sparse_init, sparsify
from sparsejax.version import __version__  # noqa: F401 (sparsejax.__version__)

__all__ = [
    "apply_masks", "check_pruned", "create_masks", "create_pruner", "distributions", "export", "get_masks", "get_step", "granularity",
    "hyperparams", "layer_collapse", "masks", "posttrain", "prune_at_init", "Pruner", "PrunerState", "REGISTRY", "schedules",
    "select", "set_masks", "sparse_init", "SparseState", "sparsify", "summary", "tickets", "tune_cpu_allocator",
]
