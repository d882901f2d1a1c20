"""Deduplication: exact (normalised-text hash), DCLM's Bloom-filter n-gram
dedup, and MinHash LSH near-dedup. All hashing is numpy-vectorised.

Documents are visited in a canonical order (`order` keys, sortable strings);
every survivor choice depends on that order only, so every runner keeps the
same documents.
"""
from __future__ import annotations

import functools
import hashlib
import math
import re
from typing import Iterable, Iterator, NamedTuple, Optional

import numpy as np

from data_pipelines.curation import heuristics

_U64 = np.uint64


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """Bijective 64-bit mixer (Steele et al.'s SplitMix64 finaliser)."""
  with np.errstate(over="ignore"):
    x = (x + _U64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


@functools.lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
  return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def word_hashes(words: list[str]) -> np.ndarray:
  return np.fromiter((_word_hash(w) for w in words), dtype=_U64, count=len(words))


def ngram_hashes(words: list[str], n: int) -> np.ndarray:
  """64-bit hashes of the word n-grams; fewer than n words hash as one n-gram.

  h_i = mix(sum_j w_{i+j} P^(n-1-j) mod 2^64), w the word hashes.
  """
  wh = word_hashes(words)
  if len(wh) == 0:
    return np.zeros(0, _U64)
  n = min(n, len(wh))
  h = np.zeros(len(wh) - n + 1, dtype=_U64)
  with np.errstate(over="ignore"):
    for j in range(n):
      h = h * _U64(0x100000001B3) + wh[j:len(wh) - n + 1 + j]
  return _splitmix64(h ^ _U64(n))


# ----------------------------------------------------------------------------
# Exact dedup.

_SPACE = re.compile(r"\s+")


def exact_key(text: str) -> str:
  """Hash of the text lower-cased with white space collapsed."""
  return hashlib.sha1(_SPACE.sub(" ", text.lower()).strip().encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------
# Bloom filter.

def bloom_size(expected_items: int, fp_rate: float) -> tuple[int, int]:
  """Bits m and hash count k for n items at false-positive rate p:
  m = ceil(-n ln p / (ln 2)^2), k = max(1, round((m / n) ln 2))."""
  n = max(int(expected_items), 1)
  m = int(math.ceil(-n * math.log(fp_rate) / math.log(2) ** 2))
  k = max(1, int(round(m / n * math.log(2))))
  return m, k


class BloomFilter:
  """A bit array of m bits with k hash positions per item (double hashing
  g_i(x) = h1(x) + i h2(x) mod m over a 64-bit item hash)."""

  def __init__(self, expected_items: int, fp_rate: float):
    self.m, self.k = bloom_size(expected_items, fp_rate)
    self.bits = np.zeros((self.m + 7) // 8, dtype=np.uint8)

  @property
  def nbytes(self) -> int:
    return self.bits.nbytes

  def _positions(self, h: np.ndarray) -> np.ndarray:
    h2 = _splitmix64(h) | _U64(1)
    with np.errstate(over="ignore"):
      pos = h[:, None] + np.arange(self.k, dtype=_U64)[None, :] * h2[:, None]
    return pos % _U64(self.m)

  def contains(self, h: np.ndarray) -> np.ndarray:
    if h.size == 0:
      return np.zeros(0, bool)
    pos = self._positions(h)
    bit = (self.bits[(pos >> _U64(3)).astype(np.int64)] >> (pos & _U64(7)).astype(np.uint8)) & 1
    return bit.all(axis=1)

  def add(self, h: np.ndarray) -> None:
    if h.size == 0:
      return
    pos = self._positions(h).ravel()
    np.bitwise_or.at(self.bits, (pos >> _U64(3)).astype(np.int64),
                     (np.uint8(1) << (pos & _U64(7)).astype(np.uint8)))


def _paragraph_hashes(text: str, n: int) -> list[tuple[str, np.ndarray]]:
  return [(p, ngram_hashes([w.lower() for w in heuristics.split_words(p)], n))
          for p in text.split("\n")]


def count_ngrams(text: str, n: int) -> int:
  """Number of n-gram hashes `bloom_dedup` would insert for `text`."""
  total = 0
  for p in text.split("\n"):
    w = len(heuristics.split_words(p))
    total += max(w - n + 1, 1) if w else 0
  return total


class BloomDecision(NamedTuple):
  text: Optional[str]        # None: the whole document is a duplicate
  doc_fraction: float        # share of its n-grams already seen
  removed_paragraphs: int


def bloom_dedup_one(bloom: BloomFilter, text: str, c) -> BloomDecision:
  """DCLM's paragraph + document Bloom-filter dedup for one document.

  Paragraphs are lines; each is hashed into 13-gram hashes (a line shorter than
  13 words is one n-gram). With f_p the fraction of a paragraph's n-grams
  already in the filter and f_d the document's, the document goes if
  f_d >= document_threshold, else paragraphs with f_p >= paragraph_threshold go.
  All the document's n-grams are then added, so the first copy survives.
  """
  paras = _paragraph_hashes(text, c.ngram)
  sizes = np.array([h.size for _, h in paras], dtype=np.int64)
  allh = np.concatenate([h for _, h in paras]) if paras else np.zeros(0, _U64)
  hit = bloom.contains(allh)
  bloom.add(allh)
  total, seen = int(allh.size), int(hit.sum())
  doc_frac = seen / total if total else 0.0
  if total and doc_frac >= c.document_threshold:
    return BloomDecision(None, doc_frac, 0)
  ends = np.cumsum(sizes)
  kept, removed = [], 0
  for (p, h), end, size in zip(paras, ends, sizes):
    if size and hit[end - size:end].mean() >= c.paragraph_threshold and (
        len(heuristics.split_words(p)) >= c.min_paragraph_words):
      removed += 1
      continue
    kept.append(p)
  new = heuristics.limit_newlines("\n".join(kept), 2).strip()
  return BloomDecision(new or None, doc_frac, removed)


# ----------------------------------------------------------------------------
# MinHash LSH.

class MinHasher(NamedTuple):
  a: np.ndarray   # [P] odd uint64 multipliers
  b: np.ndarray   # [P] uint64 offsets
  ngram: int


def make_minhasher(num_perm: int, ngram: int, seed: int) -> MinHasher:
  rng = np.random.default_rng(seed)
  a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | _U64(1)
  b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
  return MinHasher(a, b, ngram)


def shingles(text: str, n: int) -> np.ndarray:
  """Unique hashes of the lower-cased word n-grams."""
  return np.unique(ngram_hashes([w.lower() for w in heuristics.split_words(text)], n))


def signature(mh: MinHasher, hashes: np.ndarray, block: int = 4096) -> np.ndarray:
  """MinHash signature s_p = min_x ((a_p x + b_p) mod 2^64) >> 32, uint32 [P].

  Multiply-shift hashing stands in for random permutations; an empty set gets
  all-ones (matches nothing but another empty set).
  """
  sig = np.full(len(mh.a), np.iinfo(np.uint32).max, dtype=np.uint64)
  with np.errstate(over="ignore"):
    for i in range(0, len(hashes), block):
      x = hashes[i:i + block]
      v = (mh.a[:, None] * x[None, :] + mh.b[:, None]) >> _U64(32)
      sig = np.minimum(sig, v.min(axis=1))
  return sig.astype(np.uint32)


def estimated_jaccard(s1: np.ndarray, s2: np.ndarray) -> float:
  return float(np.mean(s1 == s2))


def lsh_collision_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
  """P(candidate | Jaccard s) = 1 - (1 - s^r)^b."""
  return 1.0 - (1.0 - s ** rows) ** bands


def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.5,
                       fn_weight: float = 0.5) -> tuple[int, int]:
  """(b, r) with b r <= num_perm minimising
  fp_w * int_0^t P(s) ds + fn_w * int_t^1 (1 - P(s)) ds."""
  best, best_err = (1, 1), float("inf")
  lo = np.linspace(0.0, threshold, 257)
  hi = np.linspace(threshold, 1.0, 257)
  for b in range(1, num_perm + 1):
    for r in range(1, num_perm // b + 1):
      fp = np.trapezoid(lsh_collision_probability(lo, b, r), lo)
      fn = np.trapezoid(1.0 - lsh_collision_probability(hi, b, r), hi)
      err = fp_weight * fp + fn_weight * fn
      if err < best_err - 1e-12:
        best, best_err = (b, r), err
  return best


def bands_rows(c) -> tuple[int, int]:
  if c.bands and c.rows:
    if c.bands * c.rows > c.num_perm:
      raise ValueError(f"minhash bands*rows={c.bands * c.rows} > num_perm={c.num_perm}")
    return int(c.bands), int(c.rows)
  return _cached_bands_rows(float(c.threshold), int(c.num_perm))


@functools.lru_cache(maxsize=16)
def _cached_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
  return optimal_bands_rows(threshold, num_perm)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[str]:
  """One bucket key per band: band index + hash of its r signature values."""
  return [f"{i}:{hashlib.blake2b(sig[i * rows:(i + 1) * rows].tobytes(), digest_size=8).hexdigest()}"
          for i in range(bands)]


def bucket_pairs(members: list[tuple[str, np.ndarray]], threshold: float, verify: bool
                 ) -> Iterator[tuple[str, str]]:
  """Edges (first member, other) within one LSH bucket, members sorted by order
  key; with `verify`, only pairs whose estimated Jaccard >= threshold.
  Linking every member to the bucket's first keeps edges linear in size."""
  members = sorted(members, key=lambda m: m[0])
  for i, (key, sig) in enumerate(members):
    for key0, sig0 in members[:i]:
      if not verify or estimated_jaccard(sig0, sig) >= threshold:
        yield key0, key
        break


def connected_components(edges: Iterable[tuple[str, str]]) -> dict[str, str]:
  """{node: smallest node of its component} by union-find (nodes in edges only)."""
  parent: dict[str, str] = {}

  def find(x):
    root = x
    while parent.setdefault(root, root) != root:
      root = parent[root]
    while parent[x] != root:
      parent[x], x = root, parent[x]
    return root

  for u, v in edges:
    ru, rv = find(u), find(v)
    if ru != rv:
      lo, hi = (ru, rv) if ru < rv else (rv, ru)
      parent[hi] = lo
  return {x: find(x) for x in list(parent)}


def minhash_clusters(items: Iterable[tuple[str, np.ndarray]], c) -> dict[str, str]:
  """{order key: survivor order key} for documents in a near-duplicate cluster.

  In-process reference of what the Beam runner does with a GroupByKey on
  band keys. The survivor is the cluster's first document in canonical order.
  """
  bands, rows = bands_rows(c)
  buckets: dict[str, list[tuple[str, np.ndarray]]] = {}
  for key, sig in items:
    for bk in band_keys(sig, bands, rows):
      buckets.setdefault(bk, []).append((key, sig))
  edges = []
  for members in buckets.values():
    if len(members) > 1:
      edges.extend(bucket_pairs(members, c.threshold, c.verify))
  return connected_components(edges)
