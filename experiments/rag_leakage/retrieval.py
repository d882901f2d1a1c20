"""BM25 retrieval over the datastore's chunks, with the `bm25s` library.

BM25 (Robertson et al.) scores chunk D for query Q as
  sum_{t in Q} IDF(t) * f(t, D) (k1 + 1) / (f(t, D) + k1 (1 - b + b |D| / avgdl)),
with f(t, D) the count of term t in D; bm25s's defaults (Lucene variant,
k1 = 1.5, b = 0.75) and its English stopword list, lower-cased, no stemming.
Recall@k of a set of (query, relevant chunk) pairs is the fraction whose
relevant chunk is among the query's top k.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class BM25Index:
  """bm25s over a list of texts; `search` gives (indices, scores) best first."""

  def __init__(self, texts: Sequence[str]):
    try:
      import bm25s  # pylint: disable=g-import-not-at-top
    except ImportError as err:
      raise ImportError("the RAG leakage study needs bm25s: pip install -e '.[studies]'") from err
    if not texts:
      raise ValueError("BM25Index: no texts to index")
    self._bm25s = bm25s
    self.size = len(texts)
    self.retriever = bm25s.BM25()
    self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False),
                         show_progress=False)

  def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k chunk indices [Q, k] and their BM25 scores [Q, k], best first."""
    k = min(int(k), self.size)
    tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False)
    docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
    return np.asarray(docs), np.asarray(scores)


def recall_at_k(retrieved: np.ndarray, relevant: Sequence[int], k: int) -> float:
  """Fraction of queries whose relevant index is among their first k retrieved."""
  hits = [int(rel) in set(int(i) for i in row[:k]) for row, rel in zip(retrieved, relevant)]
  return float(np.mean(hits)) if hits else float("nan")
