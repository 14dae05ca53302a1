"""CPU runtime settings that change a step's cost: glibc's allocator and XLA:CPU's temporary buffers.

XLA:CPU allocates the temporary buffers of a compiled program (its "arena") at every execution. glibc serves a block
above its mmap threshold (at most 32 MiB by default) with fresh pages from mmap and returns them at free, so a
program whose temporaries pass that size touches fresh pages, and pays a page fault per 4 KiB page it writes, at
every step. A `sparsify` step holds the mask-update code (run every `update_every` steps), whose temporaries (the
packed sort keys of all weights) enlarge the arena: measured on the MLP 784-4096-10 with SGD momentum, 25.5 ms per
step against 17.9 ms dense with glibc's defaults (about 4,900 minor page faults per step against 370), and 18.1 ms
against 18.4 ms after `tune_allocator()`. GPUs and TPUs pool device memory and are not affected.

>>> import sparsejax as sj
>>> sj.tune_cpu_allocator() in (True, False)
True
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def tune_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1,
                   arenas: Optional[int] = None) -> bool:
  """Keeps blocks up to `mmap_threshold` bytes in glibc's heap, so XLA:CPU reuses the pages of its temporary buffers
  from one step to the next instead of faulting fresh ones in; memory freed stays with the process up to
  `trim_threshold`. The same as starting Python with MALLOC_MMAP_THRESHOLD_=1073741824
  MALLOC_TRIM_THRESHOLD_=2147483647. Process-wide; call it once, before the first computation. Returns whether glibc
  accepted the settings (False on other C libraries and platforms, where it does nothing).

  `arenas=1` (MALLOC_ARENA_MAX=1) also serves every thread from the main heap, for large models on several CPU
  devices: glibc gives other threads heaps of at most 64 MiB that it shrinks or unmaps when they empty, and the
  temporaries of each device's step were faulted in afresh at every step. Measured on the bench_scale MLP (24M
  params, Adam, FSDP on 8 CPU devices, under load): ~21,000 minor page faults per dense step and 0.40 s, against
  about 0 and 0.33 s with one arena. It costs small single-device steps, whose XLA threads then share one heap's
  lock: the MLP 784-1024-10 Adam step took 6.2-6.6 ms against 4.8-5.5 ms (bench_steady, alternating runs), so it
  is not the default. Threads that already have a heap keep it."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  return all([bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))),
              bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))),
              arenas is None or bool(mallopt(_M_ARENA_MAX, int(arenas)))])
