"""Test settings: 8 host CPU devices (set before jax is imported) and strict promotion."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: end-to-end runs of a minute or more (still run by make test)")
