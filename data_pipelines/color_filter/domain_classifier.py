"""The fastText baseline (bridging to DCLM): a classifier of target vs pool.

Positives are the target documents, negatives the pool's (all of them, or a
seeded sample of `max_negatives`); features are word unigrams and bigrams of
`curation.quality.prepare`'s text, trained by `curation.quality.train`
(one thread, fixed seed and example order; fastText's trainer is still not
bit-reproducible, so a retrain gives close, not identical, probabilities). A pool document's score is P(__label__target | x); the selection
keeps the 1/tau most target-like (`selection.method_scores("fasttext", ...)`).
"""
from __future__ import annotations

import os
import types
from typing import Mapping, Sequence

import numpy as np

from data_pipelines.color_filter import pool_build
from data_pipelines.curation import quality

LABEL = "target"


def classifier_config(*, seed: int = 0, dim: int = 64, epoch: int = 10, lr: float = 0.5,
                      word_ngrams: int = 2, min_count: int = 1, bucket: int = 200_000):
  return types.SimpleNamespace(label=LABEL, seed=seed, dim=dim, epoch=epoch, lr=lr,
                               word_ngrams=word_ngrams, min_count=min_count, bucket=bucket)


def train_domain_classifier(target_rows: Sequence[Mapping], pool_rows: Sequence[Mapping],
                            work_dir: str, *, max_negatives: int = 0, **kw) -> str:
  """Trains on target (positive) vs pool (negative) rows; returns the model path."""
  if not target_rows or not pool_rows:
    raise ValueError(f"the domain classifier needs target and pool documents (got "
                     f"{len(target_rows)} and {len(pool_rows)})")
  c = classifier_config(**kw)
  neg = list(pool_rows)
  if max_negatives and len(neg) > max_negatives:
    order = np.random.default_rng(c.seed).permutation(len(neg))[:max_negatives]
    neg = [neg[i] for i in sorted(order)]
  os.makedirs(work_dir, exist_ok=True)
  pos_path = os.path.join(work_dir, "positives.jsonl")
  neg_path = os.path.join(work_dir, "negatives.jsonl")
  pool_build.write_plain_jsonl(pos_path, ({"id": r["id"], "text": r["text"]} for r in target_rows))
  pool_build.write_plain_jsonl(neg_path, ({"id": r["id"], "text": r["text"]} for r in neg))
  return quality.train([pos_path], [neg_path], os.path.join(work_dir, "domain_classifier.bin"), c)


def target_probabilities(model_path: str, rows: Sequence[Mapping]) -> dict[str, float]:
  """{id: P(target | text)} for the rows."""
  model = quality.load(model_path)
  return {r["id"]: quality.score(model, r["text"], LABEL) for r in rows}
