"""sparsejax: sparse neural network training in JAX (pruning, lottery tickets, dynamic sparse training)."""
import setuptools

# The library: masks, selection, pruners and `sparsify` need only these.
INSTALL_REQUIRES = [
    "jax>=0.4.30,<0.11",
    "flax>=0.10,<0.13",
    "optax>=0.2.3,<0.3",
    "numpy>=1.26",
]
# The engine (launcher, data sets, checkpoints, reports, reproductions): `pip install sparsejax[engine]`; `make run` and
# `make test` install it.
ENGINE_REQUIRES = [
    "orbax-checkpoint>=0.11,<0.13",
    "ml-collections>=0.1.1,<1.2",
    "tensorflow-datasets>=4.9.6,<4.10",
    "importlib_resources>=6",
    "pillow>=10",
    "mnist1d>=0.0.2",
    "scikit-learn>=1.3",
    "matplotlib>=3.7",
    "absl-py>=2",
    "tqdm>=4.60",
]

setuptools.setup(
    name="sparsejax",
    version="0.1.0",
    description="Sparse neural network training in JAX: GMP, lottery tickets, DST and pruning at init.",
    # experiments/ runs from the repository (`python -m experiments.train`): a top-level package named `experiments`
    # in users' site-packages would shadow their own. The launcher is `sparsejax.launch` (the `sparsejax-train`
    # command) and the shipped configs install as `sparsejax.configs` (from configs/), so a pip install can launch
    # them by name: `sparsejax-train --config=mnist1d_mlp_gmp --workdir=...`.
    packages=setuptools.find_packages(include=["sparsejax", "sparsejax.*"]) + ["sparsejax.configs"],
    package_dir={"sparsejax.configs": "configs"},
    entry_points={"console_scripts": ["sparsejax-train=sparsejax.launch:main"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "engine": ENGINE_REQUIRES,
        "test": ["pytest>=7", "pytest-xdist>=3", "chex>=0.1.86", "hypothesis>=6", "equinox>=0.11", "safetensors>=0.4",
                 "tensorboardX>=2.6", "nbclient>=0.7", "nbformat>=5.7", "ipykernel>=6"],  # the last 3: notebooks
        "tf": ["tensorflow-cpu>=2.16"],
        # config.training.tensorboard: event files beside metrics.jsonl. tensorboardX needs only numpy and protobuf;
        # clu.metric_writers imports TensorFlow (sparsejax/tensorboard_events.py).
        "tensorboard": ["tensorboardX>=2.6"],
    },
)
