"""A real text corpus that installs offline, byte-level tokens, and language-model windows.

The corpus is the reStructuredText source of the Python 3.11 documentation, as Debian's `python3.11-doc` package
installs it under /usr/share/doc/python3.11/html/_sources (`sudo apt-get install python3.11-doc`): 497 files, 11.1 MB
of English prose with Python code, the same bytes on every machine that installs the package (Debian 12 ships
3.11.2). We chose it over Debian's `fortunes` (about 2.5 MB of short quotes) because it is four times larger, its
documents are long enough for contexts of several hundred tokens, and it mixes prose and code the way the corpora of
the pruning papers do; it needs no network once the package is installed, and no synthetic text.

Tokenizer: bytes. Token b (0..255) is the byte b; token 256 (`EOS`) ends every document, so the vocabulary has 257
entries (`VOCAB_SIZE`, the dataset's num_classes). `encode` and `decode` round-trip any bytes.

Splits, by document: a file goes to validation when the first 8 bytes of sha256 of its path (relative to the corpus
directory) mod 100 is below 5, to test when below 10, and to train otherwise; adding or removing a file moves no
other file. With the Debian package: train 440 files (9,521,778 bytes), validation 25 (703,267), test 32 (823,230).
Each split's documents, in sorted path order, each followed by EOS, form one token stream.

Examples: window i of a stream is its tokens [i * T, i * T + T + 1) for the context T (`config.data.context`); the
input ("image") is the first T tokens and the label the last T, both int32 of shape (T,), so every token but a
stream's first is predicted exactly once per epoch. `eval_windows` keeps that many windows of validation and test,
evenly spaced (None: all of them), which makes a periodic evaluation cheap.

>>> decode(encode("héllo")) == "héllo".encode()
True
>>> source = WindowSource(np.arange(10, dtype=np.uint16), context=3)
>>> x, y = source.read(np.array([0, 2]))
>>> len(source), x.tolist(), y.tolist()
(3, [[0, 1, 2], [6, 7, 8]], [[1, 2, 3], [7, 8, 9]])
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional, Union

import numpy as np

from sparsejax.data.base import Loaded, SubsetSource

PACKAGE = "python3.11-doc"
CORPUS_DIR = "/usr/share/doc/python3.11/html/_sources"
EOS = 256
VOCAB_SIZE = 257
# Hash buckets (of 100) of the validation and test documents: [0, 5) validation, [5, 10) test, the rest train.
VALIDATION_BUCKETS, TEST_BUCKETS = 5, 10
# Config fields only the text corpus accepts.
TEXT_OPTIONS = {"context": 256, "eval_windows": None}


def encode(text: Union[str, bytes]) -> np.ndarray:
  """The byte tokens (uint16) of `text` (a str is UTF-8 encoded first); no EOS is added."""
  data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
  return np.frombuffer(data, np.uint8).astype(np.uint16)


def decode(tokens: np.ndarray) -> bytes:
  """The bytes of `tokens`; EOS tokens (document ends) are dropped."""
  tokens = np.asarray(tokens)
  if tokens.size and (tokens.min() < 0 or tokens.max() > EOS):
    raise ValueError(f"decode: tokens must be in [0, {EOS}], got values in [{tokens.min()}, {tokens.max()}]")
  return tokens[tokens < EOS].astype(np.uint8).tobytes()


def split_of(path: str) -> str:
  """'train', 'validation' or 'test' for a document, from the sha256 of its path relative to the corpus."""
  bucket = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") % 100
  return "validation" if bucket < VALIDATION_BUCKETS else "test" if bucket < TEST_BUCKETS else "train"


def list_documents(directory: str) -> list[str]:
  """Paths (relative, '/'-separated, sorted) of the .txt files under `directory`."""
  out = []
  for root, _, files in os.walk(directory):
    for name in files:
      if name.endswith(".txt"):
        out.append(os.path.relpath(os.path.join(root, name), directory).replace(os.sep, "/"))
  return sorted(out)


def read_stream(directory: str, paths: list[str]) -> np.ndarray:
  """The documents `paths` in order, each as bytes followed by EOS, as one uint16 token array."""
  pieces = []
  for path in paths:
    with open(os.path.join(directory, path), "rb") as f:
      pieces += [encode(f.read()), np.array([EOS], np.uint16)]
  return np.concatenate(pieces) if pieces else np.zeros(0, np.uint16)


class WindowSource:
  """The language-model windows of a token stream: example i is (tokens[iT : iT+T], tokens[iT+1 : iT+T+1])."""

  def __init__(self, stream: np.ndarray, context: int):
    self.stream, self.context = np.asarray(stream), int(context)

  def __len__(self) -> int:
    return max(len(self.stream) - 1, 0) // self.context

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(indices, np.int64)[:, None] * self.context + np.arange(self.context + 1)
    windows = self.stream[starts]
    return windows[:, :-1], windows[:, 1:].astype(np.int32)


class TokenIds:
  """The "normalizer" of token data: raw uint16 tokens -> int32 model inputs (no scaling)."""

  def __call__(self, raw: np.ndarray) -> np.ndarray:
    return np.asarray(raw, np.int32)

  def __repr__(self) -> str:
    return "TokenIds()"


def _evenly_spaced(source: WindowSource, count: Optional[int]):
  if count is None or count >= len(source):
    return source
  return SubsetSource(source, np.linspace(0, len(source) - 1, count).round().astype(np.int64))


def load_pydocs(opts: dict) -> Loaded:
  """The Python documentation corpus as language-model windows (see the module docstring).

  Args:
    opts: the resolved `config.data`: data_dir (None: `CORPUS_DIR`), context, eval_windows.

  Raises:
    FileNotFoundError: the corpus is not installed; the message says how to install it.
    ValueError: a split too short for one window of `context + 1` tokens.
  """
  directory = opts["data_dir"] or CORPUS_DIR
  paths = list_documents(directory) if os.path.isdir(directory) else []
  if not paths:
    raise FileNotFoundError(f"config.data.name='pydocs': no .txt files under {directory}; install the corpus with "
                            f"`sudo apt-get install {PACKAGE}` (Debian/Ubuntu), or set config.data.data_dir to a "
                            "directory of .txt files")
  context = opts["context"]
  sources = {}
  for split in ("train", "validation", "test"):
    source = WindowSource(read_stream(directory, [p for p in paths if split_of(p) == split]), context)
    if not len(source):
      raise ValueError(f"config.data.context: {context}; the {split} split of {directory} has fewer than "
                       f"{context + 1} tokens")
    sources[split] = source if split == "train" else _evenly_spaced(source, opts["eval_windows"])
  return Loaded(train=sources["train"], test=sources["test"], num_classes=VOCAB_SIZE, input_shape=(context,),
                normalizer=TokenIds(), validation=sources["validation"])
