"""Model-based quality filtering with a fastText bigram classifier (DCLM's
fastText OH-2.5+ELI5-vs-RefinedWeb recipe, with whatever positive and
negative JSONL files the config names).

Score = P(label = hq | doc) from a linear model over word uni+bigram
embeddings; documents are kept by an absolute threshold or by a global
top fraction (the threshold then is the (1 - f) quantile of all scores).
"""
from __future__ import annotations

import os
import re
import tempfile
import uuid
from typing import Iterable, Sequence

import numpy as np

from data_pipelines.curation import io as cio

_PUNCT = re.compile(r"([.!?,;:()\[\]{}\"'])")


def prepare(text: str) -> str:
  """One line, lower case, punctuation split off as tokens."""
  return " ".join(_PUNCT.sub(r" \1 ", text.lower()).split())


def _texts(paths: Sequence[str]) -> list[str]:
  out = []
  for p in paths:
    out.extend(r["text"] for r in cio.read_jsonl(p) if "malformed" not in r)
  return out


def train(positive: Sequence[str], negative: Sequence[str], out_path: str, c) -> str:
  """Trains on JSONL files (`text` field) and saves the model to out_path.

  Single-threaded with a fixed seed and a seeded example order. fastText's
  trainer is still not bit-reproducible run to run (scores move by ~1e-4 and
  occasionally more), so callers compare selections, not raw floats.
  """
  import fasttext  # pylint: disable=g-import-not-at-top
  pos, neg = _texts(positive), _texts(negative)
  if not pos or not neg:
    raise ValueError(f"quality training needs positive and negative documents "
                     f"(got {len(pos)} and {len(neg)})")
  lines = [f"__label__{c.label} {prepare(t)}" for t in pos] + [f"__label__other {prepare(t)}" for t in neg]
  order = np.random.default_rng(c.seed).permutation(len(lines))
  os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
    f.write("\n".join(lines[i] for i in order) + "\n")
    train_file = f.name
  try:
    model = fasttext.train_supervised(input=train_file, wordNgrams=int(c.word_ngrams), dim=int(c.dim),
                                      epoch=int(c.epoch), lr=float(c.lr), minCount=int(c.min_count),
                                      bucket=int(c.bucket),
                                      thread=1, seed=int(c.seed), verbose=0)
  finally:
    os.unlink(train_file)
  tmp = f"{out_path}.tmp-{uuid.uuid4().hex[:6]}"
  model.save_model(tmp)
  os.replace(tmp, out_path)
  return out_path


def load(path: str):
  import fasttext  # pylint: disable=g-import-not-at-top
  fasttext.FastText.eprint = lambda *a, **k: None   # silence a load-time warning
  return fasttext.load_model(path)


def score(model, text: str, label: str = "hq") -> float:
  """P(__label__<label> | text)."""
  labels, probs = model.predict(prepare(text), k=-1)
  for l, p in zip(labels, probs):
    if l == f"__label__{label}":
      return float(min(max(p, 0.0), 1.0))
  return 0.0


def top_fraction_threshold(scores: Iterable[float], fraction: float) -> float:
  """Smallest score among the top `fraction` (at least one document kept)."""
  s = np.sort(np.asarray(list(scores), dtype=np.float64))[::-1]
  if s.size == 0:
    return float("inf")
  k = max(1, int(np.ceil(fraction * s.size)))
  return float(s[k - 1])
