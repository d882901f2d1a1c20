"""Selection: keep the best 1/tau of a pool by a per-document score.

CoLoR-Filter (Brandfonbrener et al. 2024). With a prior model
theta_prior (trained on the pool) and a conditional model theta_cond (the
prior fine-tuned on target data D_down), a candidate sequence x scores

    s(x) = log p(x | theta_cond) - log p(x | theta_prior)
         = L_prior(x) - L_cond(x),

here with L the mean token loss of x (nats per token), and the selection is
the n/tau sequences of highest s. Baselines (same machinery, other scores):
  cond_only  s(x) = -L_cond(x)      (lowest conditional loss)
  random     s(x) = h(seed, id) / 2^64, a uniform draw fixed by the id
  fasttext   s(x) = P(target | x) of a fastText classifier, target vs pool.

Exact top-k. n candidates, k = max(1, floor(n / tau)); documents are ordered
by (-s, id) and the first k kept: ties in s go to the smaller id, so the
selection is a function of the set of (id, s) pairs alone (not of shard
count, file order or runner). `mode="per_shard"` applies the same rule in
each input shard (k_j = max(1, floor(n_j / tau))), as a streaming
approximation of the global rule.

Output (`out_dir`), in the curation output format:
  output/selected-SSSSS-of-NNNNN.jsonl.zst  the kept rows plus `select_score`
      (s as a float) and `select_rank` (0 = best; within its shard for
      per_shard); row -> shard by a hash of its id, rows sorted by id;
  selection.json  method, tau, mode, counts (per `domain` where rows have one),
      UTF-8 bytes of the kept text, the k-th score, the SHA-256 of every shard.
Both runners (`select` here, `selection_beam.select_beam`) call the same
functions below and write the same bytes.
"""
from __future__ import annotations

import collections
import hashlib
import heapq
import json
import math
import os
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from data_pipelines.curation import io as cio

METHODS = ("color", "cond_only", "random", "fasttext")
MODES = ("global", "per_shard")
SUMMARY = "selection.json"


class SelectionError(ValueError):
  pass


# ----------------------------------------------------------------------------
# Scores.

def random_score(doc_id: str, seed: int) -> float:
  """A uniform number in [0, 1) fixed by (seed, id)."""
  h = hashlib.sha256(f"random|{seed}|{doc_id}".encode()).digest()[:8]
  return int.from_bytes(h, "big") / 2.0 ** 64


def method_scores(method: str, ids: Sequence[str], *,
                  prior_loss: Optional[Mapping[str, float]] = None,
                  cond_loss: Optional[Mapping[str, float]] = None,
                  target_prob: Optional[Mapping[str, float]] = None,
                  seed: int = 0) -> dict[str, float]:
  """{id: s(id)} for a method (see the module docstring); a missing or
  non-finite input value is an error naming the id."""
  if method not in METHODS:
    raise SelectionError(f"method={method!r} must be one of {', '.join(METHODS)}")
  need = {"color": ("prior_loss", "cond_loss"), "cond_only": ("cond_loss",),
          "fasttext": ("target_prob",), "random": ()}[method]
  given = {"prior_loss": prior_loss, "cond_loss": cond_loss, "target_prob": target_prob}
  for name in need:
    if given[name] is None:
      raise SelectionError(f"method {method!r} needs {name}")
  out = {}
  for i in ids:
    vals = {}
    for name in need:
      if i not in given[name]:
        raise SelectionError(f"{name}: no score for document {i!r}")
      v = float(given[name][i])
      if not math.isfinite(v):
        raise SelectionError(f"{name}: document {i!r} has a non-finite score {v}")
      vals[name] = v
    if method == "color":
      out[i] = vals["prior_loss"] - vals["cond_loss"]
    elif method == "cond_only":
      out[i] = -vals["cond_loss"]
    elif method == "fasttext":
      out[i] = vals["target_prob"]
    else:
      out[i] = random_score(i, seed)
  return out


# ----------------------------------------------------------------------------
# The rule.

def num_to_keep(n: int, tau: float) -> int:
  if not tau >= 1:
    raise SelectionError(f"tau={tau} must be >= 1 (keep 1/tau of the pool)")
  return 0 if n == 0 else max(1, int(math.floor(n / tau + 1e-9)))


def sort_key(item: tuple[str, float]) -> tuple[float, str]:
  doc_id, score = item
  return (-score, doc_id)


def top_k(items: Iterable[tuple[str, float]], k: int) -> list[tuple[str, float]]:
  """The k best (id, score) pairs by (-score, id), best first."""
  return heapq.nsmallest(k, items, key=sort_key)


def ranks(chosen: Sequence[tuple[str, float]]) -> dict[str, tuple[int, float]]:
  """{id: (rank, score)} of a best-first list."""
  return {i: (r, s) for r, (i, s) in enumerate(chosen)}


def output_shard(doc_id: str, num_shards: int) -> int:
  return int.from_bytes(hashlib.sha256(f"out|{doc_id}".encode()).digest()[:8], "big") % num_shards


def output_row(row: Mapping, score: float, rank: int) -> dict:
  out = dict(row)
  out["select_score"] = float(score)
  out["select_rank"] = int(rank)
  return out


def shard_path(out_dir: str, index: int, num_shards: int) -> str:
  return os.path.join(out_dir, "output", f"selected-{index:05d}-of-{num_shards:05d}.jsonl.zst")


def write_output_shard(out_dir: str, index: int, num_shards: int, rows: Iterable[dict]) -> str:
  path = shard_path(out_dir, index, num_shards)
  cio.write_jsonl_zst(path, sorted(rows, key=lambda r: r["id"]))
  return path


def check_params(method: str, tau: float, mode: str, num_shards: int) -> None:
  if method not in METHODS:
    raise SelectionError(f"method={method!r} must be one of {', '.join(METHODS)}")
  if mode not in MODES:
    raise SelectionError(f"mode={mode!r} must be one of {', '.join(MODES)}")
  if num_shards < 1:
    raise SelectionError(f"num_output_shards={num_shards} must be >= 1")
  num_to_keep(1, tau)


def read_shard_rows(path: str) -> Iterator[dict]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"pool shard not found: {path}")
  for row in cio.read_rows(path):
    if "id" not in row or "text" not in row:
      raise SelectionError(f"{path}: a row without `id` or `text` (keys {sorted(row)})")
    yield row


def lookup(scores: Mapping[str, float], doc_id: str, path: str) -> float:
  try:
    return float(scores[doc_id])
  except KeyError:
    raise SelectionError(f"{path}: document {doc_id!r} has no score") from None


def prepare_output(out_dir: str) -> None:
  """Removes an earlier selection's shards and summary from out_dir, so a
  shard this run leaves empty is not an old one."""
  out = os.path.join(out_dir, "output")
  if os.path.isdir(out):
    for name in os.listdir(out):
      if name.startswith("selected-") and ".jsonl.zst" in name:
        os.remove(os.path.join(out, name))
  if os.path.exists(os.path.join(out_dir, SUMMARY)):
    os.remove(os.path.join(out_dir, SUMMARY))


def finish(out_dir: str, *, method: str, tau: float, mode: str, num_candidates: int,
           num_shards: int, extra: Optional[Mapping] = None) -> dict:
  """Fills shards no row went to, then writes selection.json from the shards."""
  counts: collections.Counter = collections.Counter()
  kth = None
  digests = {}
  kept = nbytes = 0
  for i in range(num_shards):
    path = shard_path(out_dir, i, num_shards)
    if not os.path.exists(path):
      write_output_shard(out_dir, i, num_shards, [])
    for row in cio.read_rows(path):
      kept += 1
      nbytes += len(row["text"].encode("utf-8"))
      counts[str(row.get("domain", ""))] += 1
      kth = row["select_score"] if kth is None else min(kth, row["select_score"])
    with open(path, "rb") as f:
      digests[os.path.relpath(path, out_dir)] = hashlib.sha256(f.read()).hexdigest()
  summary = {"method": method, "tau": float(tau), "mode": mode,
             "num_candidates": int(num_candidates), "num_selected": kept,
             "text_bytes": nbytes,
             "lowest_selected_score": kth, "domains": dict(sorted(counts.items())),
             "shards": digests, **(dict(extra) if extra else {})}
  cio.write_json(os.path.join(out_dir, SUMMARY), summary)
  return summary


# ----------------------------------------------------------------------------
# The in-process runner.

def select(pool_shards: Sequence[str], scores: Mapping[str, float], out_dir: str, *,
           tau: float, method: str = "color", mode: str = "global",
           num_output_shards: int = 4, extra: Optional[Mapping] = None) -> dict:
  """Selects from the rows of `pool_shards` by `scores` ({id: s}) and writes
  `out_dir` (see the module docstring). Returns the summary."""
  check_params(method, tau, mode, num_output_shards)
  prepare_output(out_dir)
  seen: set[str] = set()
  per_shard: list[list[tuple[str, float]]] = []
  for path in pool_shards:
    items = []
    for row in read_shard_rows(path):
      if row["id"] in seen:
        raise SelectionError(f"{path}: document id {row['id']!r} appears twice in the pool")
      seen.add(row["id"])
      items.append((row["id"], lookup(scores, row["id"], path)))
    per_shard.append(items)
  n = len(seen)
  if mode == "global":
    chosen = ranks(top_k((it for items in per_shard for it in items), num_to_keep(n, tau)))
  else:
    chosen = {}
    for items in per_shard:
      chosen.update(ranks(top_k(items, num_to_keep(len(items), tau))))
  buckets: dict[int, list[dict]] = collections.defaultdict(list)
  for path in pool_shards:
    for row in read_shard_rows(path):
      if row["id"] in chosen:
        rank, score = chosen[row["id"]]
        buckets[output_shard(row["id"], num_output_shards)].append(output_row(row, score, rank))
  for index, rows in buckets.items():
    write_output_shard(out_dir, index, num_output_shards, rows)
  return finish(out_dir, method=method, tau=tau, mode=mode, num_candidates=n,
                num_shards=num_output_shards, extra=extra)


def read_selection(out_dir: str) -> list[dict]:
  """The rows of a selection, in shard order."""
  paths = cio.output_shards(out_dir)
  if not paths:
    raise FileNotFoundError(f"no selection shards under {os.path.join(out_dir, 'output')}")
  return [r for p in paths for r in cio.read_rows(p)]


def write_selection_jsonl(out_dir: str, path: str) -> int:
  """The selection as one plain JSONL file (for the LM runner's `files`
  source); returns the row count."""
  tmp = f"{path}.tmp-{os.getpid()}"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for row in read_selection(out_dir):
      f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
      n += 1
  os.replace(tmp, path)
  return n
