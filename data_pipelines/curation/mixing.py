"""Mixing curated sources by rates into new shards.

Rates are relative weights w_s. With unit "docs" (or "chars") and a target
total T, source s contributes n_s = round(T w_s / sum w) documents (or
characters). Without T, T is the largest total that needs no upsampling,
T = min_s N_s sum(w) / w_s. A source asked for more than it has is repeated
(whole epochs, then a sample). Every choice comes from a seeded generator per
source, and the mixed stream is a seeded shuffle, so a mix is reproducible.
"""
from __future__ import annotations

import glob
import hashlib
import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from data_pipelines.curation import io as cio


def _expand(paths: Union[str, Sequence[str]]) -> list[str]:
  if isinstance(paths, str):
    paths = [paths]
  out = sorted({p for pat in paths for p in glob.glob(pat)})
  return [p for p in out if not p.endswith(".attrs.jsonl.zst")]


def _rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)])


def _take(docs: list[dict], target: int, unit: str, rng: np.random.Generator) -> tuple[list[dict], float]:
  """Documents from `docs` in seeded random order (epoch after epoch) until the
  target count of docs or characters is reached; returns them and the epochs."""
  if not docs or target <= 0:
    return [], 0.0
  sizes = np.array([1 if unit == "docs" else len(d["text"]) for d in docs])
  out, got, epochs = [], 0, 0
  while got < target:
    order = rng.permutation(len(docs))
    for i in order:
      if got >= target:
        break
      out.append(docs[i])
      got += int(sizes[i])
    epochs += 1
  total = sizes.sum()
  return out, got / total


def plan(available: Mapping[str, int], rates: Mapping[str, float], total: Optional[int]) -> dict[str, int]:
  """Target size per source (see module docstring)."""
  w = {s: float(rates[s]) for s in rates if rates[s] > 0}
  if not w:
    raise ValueError("mixing rates must have a positive entry")
  z = sum(w.values())
  if total is None:
    total = min(available[s] * z / w[s] for s in w)
  return {s: int(round(total * w[s] / z)) for s in w}


def mix(sources: Mapping[str, Union[str, Sequence[str]]], rates: Mapping[str, float], out_dir: str, *,
        total: Optional[int] = None, unit: str = "docs", seed: int = 0, docs_per_shard: int = 10_000,
        zstd_level: int = 3) -> dict:
  """Writes mixed-NNNNN.jsonl.zst shards to out_dir; returns per-source figures."""
  if unit not in ("docs", "chars"):
    raise ValueError(f"unit {unit!r} must be docs or chars")
  missing = set(rates) - set(sources)
  if missing:
    raise ValueError(f"rates name unknown sources {sorted(missing)}")
  docs = {s: [dict(r, source=r.get("source") or s) for p in _expand(sources[s]) for r in cio.read_rows(p)]
          for s in rates}
  available = {s: (len(d) if unit == "docs" else sum(len(x["text"]) for x in d)) for s, d in docs.items()}
  targets = plan(available, rates, total)
  chosen, summary = [], {}
  for s in sorted(targets):
    taken, epochs = _take(docs[s], targets[s], unit, _rng(seed, s))
    chosen.extend(taken)
    summary[s] = {"available": available[s], "target": targets[s], "docs": len(taken),
                  "chars": sum(len(d["text"]) for d in taken), "epochs": round(epochs, 4)}
  order = _rng(seed, "__mix__").permutation(len(chosen))
  chosen = [chosen[i] for i in order]
  os.makedirs(out_dir, exist_ok=True)
  n_shards = max(1, -(-len(chosen) // docs_per_shard))
  for k in range(n_shards):
    cio.write_jsonl_zst(os.path.join(out_dir, f"mixed-{k:05d}.jsonl.zst"),
                        chosen[k * docs_per_shard:(k + 1) * docs_per_shard], zstd_level)
  denom = sum(v["docs" if unit == "docs" else "chars"] for v in summary.values()) or 1
  for v in summary.values():
    v["share"] = v["docs" if unit == "docs" else "chars"] / denom
  result = {"unit": unit, "rates": dict(rates), "sources": summary, "shards": n_shards,
            "docs": len(chosen)}
  cio.write_json(os.path.join(out_dir, "mix.json"), result)
  return result
