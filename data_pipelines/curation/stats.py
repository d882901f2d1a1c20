"""Per-step statistics (docs in/out, removals by rule, bytes, time) that merge
by addition across shards and workers, a printed table, and a progress line.

A stats object is a plain dict {step: {"in", "out", "bytes_in", "bytes_out",
"seconds", "removed": {rule: n}, "changed": {reason: n}}} ("changed": kept
documents the step altered, e.g. invalid UTF-8 replaced), so it travels
through Beam and JSON as is. `seconds` are CPU seconds of the thread that did
the step, summed over worker processes and threads.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

STEP_ORDER = ("files", "read", "extract", "url_filter", "modifiers", "langid", "heuristics",
              "line_modifiers", "exact_dedup", "minhash_dedup", "bloom_dedup", "quality",
              "write")


def new() -> dict:
  return {}


def _step(stats: dict, step: str) -> dict:
  return stats.setdefault(step, {"in": 0, "out": 0, "bytes_in": 0, "bytes_out": 0,
                                 "seconds": 0.0, "removed": {}, "changed": {}})


def record(stats: dict, step: str, *, bytes_in: int = 0, bytes_out: int = 0,
           removed: Optional[str] = None, seconds: float = 0.0, n: int = 1,
           changed: Optional[str] = None) -> None:
  """Counts n documents through `step`; `removed` names the rule that dropped
  them, `changed` why a kept one was altered."""
  s = _step(stats, step)
  s["in"] += n
  s["bytes_in"] += bytes_in
  s["seconds"] += seconds
  if removed is None:
    s["out"] += n
    s["bytes_out"] += bytes_out
    if changed is not None:
      s["changed"][changed] = s["changed"].get(changed, 0) + n
  else:
    s["removed"][removed] = s["removed"].get(removed, 0) + n


def merge(parts: Iterable[dict]) -> dict:
  out: dict = {}
  for part in parts:
    for step, s in part.items():
      t = _step(out, step)
      for k in ("in", "out", "bytes_in", "bytes_out", "seconds"):
        t[k] += s[k]
      for kind in ("removed", "changed"):
        for rule, n in s.get(kind, {}).items():
          t[kind][rule] = t[kind].get(rule, 0) + n
  return out


def without_time(stats: dict) -> dict:
  """The counts only (what must agree between runners)."""
  return {step: {k: v for k, v in s.items() if k != "seconds"} for step, s in stats.items()}


def _ordered(stats: dict) -> list[str]:
  known = [s for s in STEP_ORDER if s in stats]
  return known + sorted(s for s in stats if s not in STEP_ORDER)


RATE_NOTE = ("docs/CPU-s, MB/CPU-s: documents (MB of the step's input) per CPU-second spent "
             "in the step, summed over worker processes: per-core speed, not wall-clock throughput")


def table(stats: dict, wall_seconds: Optional[float] = None, workers: Optional[int] = None) -> str:
  """A fixed-width table: one row per step, one indented row per removal rule
  ("- rule") and per kind of change ("~ reason"). Rates are per CPU-second of
  the step; with `wall_seconds`, a last line gives the end-to-end wall-clock rate."""
  head = (f"{'step':<28}{'docs in':>9}{'docs out':>9}{'removed':>9}{'MB in':>9}{'MB out':>9}"
          f"{'docs/CPU-s':>11}{'MB/CPU-s':>10}")
  rows = [head, "-" * len(head)]
  for step in _ordered(stats):
    s = stats[step]
    rate = s["in"] / s["seconds"] if s["seconds"] > 0 else float("nan")
    mbs = s["bytes_in"] / 1e6 / s["seconds"] if s["seconds"] > 0 else float("nan")
    rows.append(f"{step:<28}{s['in']:>9}{s['out']:>9}{s['in'] - s['out']:>9}"
                f"{s['bytes_in'] / 1e6:>9.3f}{s['bytes_out'] / 1e6:>9.3f}{rate:>11.1f}{mbs:>10.2f}")
    for rule, n in sorted(s["removed"].items(), key=lambda kv: (-kv[1], kv[0])):
      rows.append(f"  - {rule:<42}{n:>4}")
    for why, n in sorted(s.get("changed", {}).items(), key=lambda kv: (-kv[1], kv[0])):
      rows.append(f"  ~ {why:<42}{n:>4}")
  rows.append(RATE_NOTE)
  if wall_seconds is not None and "read" in stats:
    docs = stats["read"]["in"]
    rate = docs / wall_seconds if wall_seconds > 0 else float("nan")
    w = f" (workers={workers})" if workers else ""
    rows.append(f"end to end: {docs} documents read in {wall_seconds:.2f} s wall-clock{w} "
                f"= {rate:.1f} docs/s (wall)")
  return "\n".join(rows)


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
  """Progress of a stage over shards, within shards too: prints

    [curate:<stage>] <done>/<total> shards | <docs> docs <rate> docs/s | <MB>/<MB> MB <pct>% | <elapsed> ETA <eta>

  to `stream` (stderr) at most every `every_s` seconds and when a shard
  finishes. Work is measured in input bytes (for stage A the bytes of the input
  files read so far, compressed as stored), so the ETA,
  elapsed * (total - done) / done, moves while a big shard is being read.
  Rates are wall-clock, since the start of the stage.
  """

  def __init__(self, stage: str, shards: int, total_bytes: int, every_s: float = 2.0,
               stream=None, clock=time.perf_counter):
    self.stage, self.shards, self.total_bytes, self.every_s = stage, shards, total_bytes, every_s
    self.stream = stream or sys.stderr
    self.clock = clock
    self.t0 = clock()
    self.last = -float("inf")
    self.finished = 0
    self._done_docs = self._done_bytes = 0
    self._open: dict[str, tuple[int, int]] = {}   # shard -> (docs, bytes) so far

  @property
  def docs(self) -> int:
    return self._done_docs + sum(d for d, _ in self._open.values())

  @property
  def nbytes(self) -> int:
    return self._done_bytes + sum(b for _, b in self._open.values())

  def update(self, shard: str, docs: int, nbytes: int) -> None:
    """Position inside an unfinished shard (docs and input bytes so far)."""
    self._open[shard] = (docs, nbytes)
    self.maybe_print()

  def shard_done(self, shard: str, docs: int, nbytes: int) -> None:
    self._open.pop(shard, None)
    self.finished += 1
    self._done_docs += docs
    self._done_bytes += nbytes
    self.maybe_print(force=True)

  def line(self) -> str:
    elapsed = self.clock() - self.t0
    docs, nb = self.docs, min(self.nbytes, self.total_bytes)
    rate = docs / elapsed if elapsed > 0 else 0.0
    frac = nb / self.total_bytes if self.total_bytes > 0 else (1.0 if self.finished >= self.shards else 0.0)
    if self.finished >= self.shards:
      eta = "done"
    elif nb > 0:
      eta = "ETA " + _duration(elapsed * (self.total_bytes - nb) / nb)
    else:
      eta = "ETA ?"
    return (f"[curate:{self.stage}] {self.finished}/{self.shards} shards | {docs} docs "
            f"{rate:.1f} docs/s | {nb / 1e6:.2f}/{self.total_bytes / 1e6:.2f} MB {100 * frac:.0f}% | "
            f"{_duration(elapsed)} {eta}")

  def maybe_print(self, force: bool = False) -> None:
    now = self.clock()
    if force or now - self.last >= self.every_s:
      self.last = now
      print(self.line(), file=self.stream, flush=True)
