"""Fault injection for the engine's own tests (`tests/test_faults.py`): kill points set through environment variables.

A module of its own so that the train loop and the checkpoint writer can both pass kill points without importing
each other. Real users never set these variables.
"""
from __future__ import annotations

import os
import signal

_COUNTS: dict = {}


def point(name: str, sig: int = signal.SIGKILL) -> None:
  """Send `sig` (SIGKILL) to this process the Nth time it passes point `name`, where N is the environment variable
  `name` (unset: never)."""
  at = os.environ.get(name)
  if at is None:
    return
  _COUNTS[name] = _COUNTS.get(name, 0) + 1
  if _COUNTS[name] == int(at):
    os.kill(os.getpid(), sig)
