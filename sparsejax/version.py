"""The package version, in a module of its own: modules that the package's `__init__` imports (`sparsejax.export`)
read it from here, since `from sparsejax import __version__` would import the package back (an import cycle)."""
__version__ = "0.1.0"
