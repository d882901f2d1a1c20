"""The CoLoR-Filter pool: documents of several domains, deduplicated, split.

  read     each domain's files (`pool_sources`), in the order of a hash of
           their names, until `oversample * docs_per_domain` documents (or
           the files run out);
  dedup    exact duplicates across all domains (text lower-cased, white space
           collapsed: `curation.dedup.exact_key`); the smallest id survives;
  sample   per domain, the `docs_per_domain` documents with the smallest
           h(seed, "sample", id);
  split    u = h(seed, "split", id) / 2^64 in [0, 1):
             u < heldout_fraction                            -> heldout
             domain = target and u < heldout + target_frac   -> target
             otherwise                                       -> pool
           so the held-out documents of every domain (and the target's held-
           out ones) are never in the pool or the target set.

Output (`out_dir`), in the curation output format (jsonl.zst, one JSON
object per line with `id`, `text`, `domain`, `source`, `url`, keys sorted):
  pool/output/pool-SSSSS-of-NNNNN.jsonl.zst   rows sorted by id, contiguous shards
  target/output/..., heldout/output/...
  pool.jsonl, target.jsonl, heldout.jsonl, heldout_target.jsonl
                     the same rows as plain JSONL (the LM runner's `files` source)
  manifest.json   parameters, files read per domain, counts, shard digests.
Everything is a function of the input files and the parameters: two builds
from the same files write the same bytes.
"""
from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
import subprocess
import sys
from typing import Iterable, Mapping, Optional, Sequence

from data_pipelines.color_filter import pool_sources
from data_pipelines.curation import dedup
from data_pipelines.curation import io as cio

SPLITS = ("pool", "target", "heldout")


def unit_hash(seed: int, purpose: str, doc_id: str) -> int:
  """A 64-bit hash of (seed, purpose, id)."""
  return int.from_bytes(hashlib.sha256(f"{seed}|{purpose}|{doc_id}".encode()).digest()[:8], "big")


def split_of(doc: Mapping, *, target_domain: str, target_fraction: float,
             heldout_fraction: float, seed: int) -> str:
  u = unit_hash(seed, "split", doc["id"]) / 2.0 ** 64
  if u < heldout_fraction:
    return "heldout"
  if doc["domain"] == target_domain and u < heldout_fraction + target_fraction:
    return "target"
  return "pool"


def read_domain(domain: str, root: str, *, limit: int, min_chars: int,
                max_chars: int) -> tuple[list[dict], int]:
  """(documents, files read) of one domain: files in hash order until `limit`
  documents (a file is read whole)."""
  files = sorted(pool_sources.domain_files(domain, root),
                 key=lambda f: pool_sources.file_order_key(f[1]))
  docs: list[dict] = []
  read = 0
  for path, source in files:
    if len(docs) >= limit:
      break
    docs.extend(pool_sources.documents(pool_sources.read_domain_file(domain, path, source),
                                       min_chars, max_chars))
    read += 1
  return docs, read


def dedup_exact(docs: Iterable[dict]) -> tuple[list[dict], int]:
  """Documents whose normalised text is unique (the smallest id of each
  group survives), in id order; and how many were dropped."""
  best: dict[str, dict] = {}
  n = 0
  for d in docs:
    n += 1
    k = dedup.exact_key(d["text"])
    if k not in best or d["id"] < best[k]["id"]:
      best[k] = d
  kept = sorted(best.values(), key=lambda d: d["id"])
  return kept, n - len(kept)


def shard_paths(split_dir: str, name: str, num_shards: int) -> list[str]:
  return [os.path.join(split_dir, "output", f"{name}-{i:05d}-of-{num_shards:05d}.jsonl.zst")
          for i in range(num_shards)]


def write_split(out_dir: str, split: str, rows: Sequence[dict], num_shards: int) -> list[str]:
  """Rows (already in id order) as `num_shards` contiguous jsonl.zst shards."""
  paths = shard_paths(os.path.join(out_dir, split), split, num_shards)
  per = -(-len(rows) // num_shards) if rows else 0
  for i, path in enumerate(paths):
    cio.write_jsonl_zst(path, rows[i * per:(i + 1) * per])
  return paths


def write_plain_jsonl(path: str, rows: Iterable[dict]) -> int:
  """Rows as plain JSONL (keys sorted), written atomically; returns the count."""
  tmp = f"{path}.tmp-{os.getpid()}"
  n = 0
  with open(tmp, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def build_pool(roots: Mapping[str, str], out_dir: str, *, target_domain: str,
               docs_per_domain: int | Mapping[str, int] = 1000, min_chars: int = 300,
               max_chars: int = 1500, target_fraction: float = 0.2,
               heldout_fraction: float = 0.1, oversample: float = 2.0, seed: int = 0,
               num_shards: int = 4, sources: Optional[Mapping[str, str]] = None,
               log=print) -> dict:
  """Builds the pool from `roots` ({domain: filesystem root holding its
  files}) into `out_dir`; returns the manifest. `sources` ({domain: where the
  root came from}) goes into the manifest as is."""
  if target_domain not in roots:
    raise ValueError(f"target_domain={target_domain!r} is not among the domains read "
                     f"({', '.join(sorted(roots)) or 'none'})")
  if not (0 < heldout_fraction < 1 and 0 < target_fraction < 1
          and heldout_fraction + target_fraction < 1):
    raise ValueError(f"heldout_fraction={heldout_fraction} and target_fraction={target_fraction} "
                     "must be in (0, 1) with a sum below 1")
  caps = ({d: int(docs_per_domain) for d in roots} if isinstance(docs_per_domain, int)
          else {d: int(docs_per_domain[d]) for d in roots})
  read: list[dict] = []
  files_read = {}
  for domain in sorted(roots):
    docs, nfiles = read_domain(domain, roots[domain], limit=int(caps[domain] * oversample),
                               min_chars=min_chars, max_chars=max_chars)
    if not docs:
      raise ValueError(f"domain {domain!r}: no documents under {roots[domain]!r}")
    files_read[domain] = nfiles
    read.extend(docs)
    log(f"pool: {domain}: {len(docs)} documents from {nfiles} file(s) under {roots[domain]}")
  unique, dropped = dedup_exact(read)
  by_domain: dict[str, list[dict]] = collections.defaultdict(list)
  for d in unique:
    by_domain[d["domain"]].append(d)
  kept = []
  for domain, docs in sorted(by_domain.items()):
    docs.sort(key=lambda d: (unit_hash(seed, "sample", d["id"]), d["id"]))
    kept.extend(docs[:caps[domain]])
  kept.sort(key=lambda d: d["id"])
  splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
  for d in kept:
    splits[split_of(d, target_domain=target_domain, target_fraction=target_fraction,
                    heldout_fraction=heldout_fraction, seed=seed)].append(d)
  shards = {s: write_split(out_dir, s, rows, num_shards if s == "pool" else 1)
            for s, rows in splits.items()}
  write_plain_jsonl(os.path.join(out_dir, "pool.jsonl"), splits["pool"])
  write_plain_jsonl(os.path.join(out_dir, "target.jsonl"), splits["target"])
  write_plain_jsonl(os.path.join(out_dir, "heldout.jsonl"), splits["heldout"])
  write_plain_jsonl(os.path.join(out_dir, "heldout_target.jsonl"),
                    (d for d in splits["heldout"] if d["domain"] == target_domain))
  counts = {s: dict(sorted(collections.Counter(d["domain"] for d in rows).items()))
            for s, rows in splits.items()}
  chars = {s: sum(len(d["text"]) for d in rows) for s, rows in splits.items()}
  manifest = {
      "params": {"target_domain": target_domain, "docs_per_domain": caps, "min_chars": min_chars,
                 "max_chars": max_chars, "target_fraction": target_fraction,
                 "heldout_fraction": heldout_fraction, "oversample": oversample, "seed": seed,
                 "num_shards": num_shards},
      "sources": dict(sources or {d: r for d, r in roots.items()}),
      "files_read": files_read, "documents_read": len(read), "exact_duplicates_dropped": dropped,
      "counts": counts, "chars": chars,
      "shards": {s: {os.path.relpath(p, out_dir): file_sha256(p) for p in ps}
                 for s, ps in shards.items()},
  }
  cio.write_json(os.path.join(out_dir, "manifest.json"), manifest)
  for s in SPLITS:
    log(f"pool: {s}: {sum(counts[s].values())} documents, {chars[s]} chars, {counts[s]}")
  return manifest


def read_split(out_dir: str, split: str) -> list[dict]:
  """All rows of a split of a built pool, in shard order."""
  paths = cio.output_shards(os.path.join(out_dir, split))
  if not paths:
    raise FileNotFoundError(f"no shards {os.path.join(out_dir, split, 'output', '*.jsonl.zst')} "
                            "(build the pool with tools/build_color_pool.py)")
  return [r for p in paths for r in cio.read_rows(p)]


# ----------------------------------------------------------------------------
# Where each domain's files are: installed, or in apt's download cache.

# domain -> .deb name patterns in the apt cache, first match wins
DEB_PATTERNS = {
    "python": ["python3.*-doc_*.deb", "python3-doc_*.deb"],
    "dictionary": ["dict-gcide_*.deb"],
    "fortunes": ["fortunes_*.deb", "fortunes-min_*.deb"],
    "man-c-api": ["manpages-dev_*.deb"],
    "man-commands": ["manpages_*.deb"],
    "debian-changelog": [],
}


def find_deb(apt_cache: str, domain: str) -> str:
  for pattern in DEB_PATTERNS.get(domain, []):
    found = sorted(glob.glob(os.path.join(apt_cache, pattern)))
    if found:
      return found[-1]
  return ""


def unpack_deb(deb: str, staging: str) -> str:
  """`dpkg-deb -x` into staging/<deb name>/ (once); returns that root.
  Nothing is installed."""
  root = os.path.join(staging, os.path.basename(deb)[:-len(".deb")])
  done = os.path.join(root, ".unpacked")
  if not os.path.exists(done):
    os.makedirs(root, exist_ok=True)
    try:
      subprocess.run(["dpkg-deb", "-x", deb, root], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as err:
      raise RuntimeError(f"apt_cache: could not unpack {deb}: {err}") from None
    with open(done, "w", encoding="utf-8") as f:
      f.write(deb + "\n")
  return root


def resolve_roots(domains: Sequence[str], root: str, apt_cache: str, staging: str
                  ) -> tuple[dict[str, str], dict[str, str]]:
  """({domain: root}, {domain: where its files come from}): files installed
  under `root` first, else the domain's .deb in `apt_cache` unpacked into
  `staging`; a domain found in neither is left out with a warning."""
  roots, sources = {}, {}
  for domain in domains:
    if pool_sources.domain_files(domain, root):
      roots[domain], sources[domain] = root, f"installed under {root}"
      continue
    deb = find_deb(apt_cache, domain)
    if deb:
      unpacked = unpack_deb(deb, staging)
      if pool_sources.domain_files(domain, unpacked):
        roots[domain], sources[domain] = unpacked, os.path.basename(deb)
        continue
    print(f"color pool: domain {domain!r}: no files installed under {root} and no "
          f"package in {apt_cache}; left out", file=sys.stderr)
  return roots, sources
