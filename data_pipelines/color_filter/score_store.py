"""Per-document scores on disk: memory-mapped numpy columns keyed by doc id,
written in blocks and resumable after a kill.

A store is a directory:
  meta.json       num_docs, block_size, columns {name: dtype}, fingerprint
                  (what the scores are of: model checkpoint, data), format
  ids.npy         the document ids (UTF-8 bytes, fixed width), row order
  <column>.npy    one array per column, shape [num_docs] (float columns start NaN)
  done.npy        uint8 [num_blocks]: block b = rows [b * block_size, (b + 1) * block_size)

Commit protocol: a block's column values are written and flushed to disk,
then its `done` flag is set and flushed. A kill at any point leaves every
block either committed (values complete, flag set) or not (flag unset;
whatever values were written get overwritten when the block is redone), so
a resumed run scores exactly the uncommitted blocks: nothing is lost and no
committed block is scored again. Runs that split the blocks between
processes (`pending(shard_index, num_shards)`) write disjoint rows.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Mapping, Optional, Sequence

import numpy as np

_FORMAT = 1
META = "meta.json"


class ScoreStoreError(ValueError):
  pass


def _write_json(path: str, obj) -> None:
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:6]}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _encode_ids(ids: Sequence[str]) -> np.ndarray:
  raw = [str(i).encode("utf-8") for i in ids]
  width = max((len(r) for r in raw), default=1)
  return np.asarray(raw, dtype=f"S{max(width, 1)}")


class ScoreStore:
  """A store opened for writing (`create_or_resume`) or reading (`open`)."""

  def __init__(self, directory: str, meta: dict, mode: str):
    self.directory = directory
    self.meta = meta
    self.block_size = int(meta["block_size"])
    self.num_docs = int(meta["num_docs"])
    self.num_blocks = -(-self.num_docs // self.block_size)
    self._ids = np.load(os.path.join(directory, "ids.npy"), mmap_mode="r")
    self.columns = {c: np.load(os.path.join(directory, f"{c}.npy"), mmap_mode=mode)
                    for c in meta["columns"]}
    self.done = np.load(os.path.join(directory, "done.npy"), mmap_mode=mode)

  # ------------------------------------------------------------------ creating

  @classmethod
  def create_or_resume(cls, directory: str, ids: Sequence[str], columns: Mapping[str, str], *,
                       block_size: int, fingerprint: str) -> "ScoreStore":
    """A new store for `ids`, or the existing one at `directory` if it was
    made for the same ids, columns, block size and fingerprint (then its
    committed blocks are kept). A store of anything else is an error naming
    what differs (delete the directory to start over)."""
    if block_size < 1:
      raise ScoreStoreError(f"block_size={block_size} must be >= 1")
    if len(set(ids)) != len(ids):
      seen, dup = set(), None
      for i in ids:
        if i in seen:
          dup = i
          break
        seen.add(i)
      raise ScoreStoreError(f"document ids must be unique; {dup!r} appears twice")
    enc = _encode_ids(ids)
    meta = {"format": _FORMAT, "num_docs": len(ids), "block_size": int(block_size),
            "columns": dict(columns), "fingerprint": fingerprint}
    meta_path = os.path.join(directory, META)
    if os.path.exists(meta_path):
      with open(meta_path, encoding="utf-8") as f:
        old = json.load(f)
      differ = [k for k in meta if old.get(k) != meta[k]]
      old_ids = np.load(os.path.join(directory, "ids.npy"), mmap_mode="r")
      if old_ids.shape != enc.shape or not np.array_equal(old_ids.astype(object), enc.astype(object)):
        differ.append("ids")
      if differ:
        raise ScoreStoreError(
            f"score store {directory} was written for other " + ", ".join(differ)
            + f" ({', '.join(f'{k}: {old.get(k)!r} now {meta[k]!r}' for k in differ if k in meta)})"
            + "; delete it to score again")
      return cls(directory, old, "r+")
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, "ids.npy"), enc)
    num_blocks = -(-len(ids) // block_size)
    for name, dtype in columns.items():
      arr = np.lib.format.open_memmap(os.path.join(directory, f"{name}.npy"), mode="w+",
                                      dtype=np.dtype(dtype), shape=(len(ids),))
      arr[:] = np.nan if np.issubdtype(arr.dtype, np.floating) else 0
      arr.flush()
      del arr
    np.save(os.path.join(directory, "done.npy"), np.zeros((num_blocks,), np.uint8))
    _write_json(meta_path, meta)   # last: a store without meta.json is not a store
    return cls(directory, meta, "r+")

  @classmethod
  def open(cls, directory: str, *, require_complete: bool = True) -> "ScoreStore":
    meta_path = os.path.join(directory, META)
    if not os.path.exists(meta_path):
      raise FileNotFoundError(f"no score store at {directory} (missing {META})")
    with open(meta_path, encoding="utf-8") as f:
      meta = json.load(f)
    store = cls(directory, meta, "r")
    if require_complete and not store.complete():
      raise ScoreStoreError(f"score store {directory}: {store.num_blocks - int(store.done.sum())} "
                            f"of {store.num_blocks} blocks not scored yet (resume the scoring)")
    return store

  # ------------------------------------------------------------------- blocks

  def block_rows(self, block: int) -> tuple[int, int]:
    start = block * self.block_size
    return start, min(start + self.block_size, self.num_docs)

  def pending(self, shard_index: int = 0, num_shards: int = 1) -> list[int]:
    """Uncommitted blocks b with b mod num_shards == shard_index."""
    return [b for b in range(self.num_blocks)
            if b % num_shards == shard_index and not self.done[b]]

  def commit(self, block: int, values: Mapping[str, np.ndarray]) -> None:
    """Writes a block's values for every column, flushes, then marks it done."""
    start, stop = self.block_rows(block)
    missing = set(self.columns) - set(values)
    if missing:
      raise ScoreStoreError(f"block {block}: no values for column(s) {sorted(missing)}")
    for name, arr in self.columns.items():
      v = np.asarray(values[name])
      if v.shape != (stop - start,):
        raise ScoreStoreError(f"block {block}, column {name!r}: shape {v.shape}, expected "
                              f"({stop - start},)")
      arr[start:stop] = v
      arr.flush()
    self.done[block] = 1
    self.done.flush()

  def complete(self) -> bool:
    return bool(self.done.all())

  # ------------------------------------------------------------------ reading

  def ids(self, start: int = 0, stop: Optional[int] = None) -> list[str]:
    return [b.decode("utf-8") for b in self._ids[start:stop]]

  def column(self, name: str) -> np.ndarray:
    if name not in self.columns:
      raise KeyError(f"score store {self.directory} has no column {name!r} "
                     f"(columns: {sorted(self.columns)})")
    return self.columns[name]

  def as_dict(self, name: str) -> dict[str, float]:
    """{doc id: value} of one column."""
    return dict(zip(self.ids(), (float(x) for x in self.column(name))))
