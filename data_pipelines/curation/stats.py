"""Per-step statistics (docs in/out, removals by rule, bytes, time) that merge
by addition across shards and workers, a printed table, and a progress line.

A stats object is a plain dict {step: {"in", "out", "bytes_in", "bytes_out",
"seconds", "removed": {rule: n}}}, so it travels through Beam and JSON as is.
"""
from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

STEP_ORDER = ("read", "extract", "url_filter", "modifiers", "langid", "heuristics",
              "line_modifiers", "exact_dedup", "minhash_dedup", "bloom_dedup", "quality",
              "write")


def new() -> dict:
  return {}


def _step(stats: dict, step: str) -> dict:
  return stats.setdefault(step, {"in": 0, "out": 0, "bytes_in": 0, "bytes_out": 0,
                                 "seconds": 0.0, "removed": {}})


def record(stats: dict, step: str, *, bytes_in: int = 0, bytes_out: int = 0,
           removed: Optional[str] = None, seconds: float = 0.0, n: int = 1) -> None:
  """Counts n documents through `step`; `removed` names the rule that dropped them."""
  s = _step(stats, step)
  s["in"] += n
  s["bytes_in"] += bytes_in
  s["seconds"] += seconds
  if removed is None:
    s["out"] += n
    s["bytes_out"] += bytes_out
  else:
    s["removed"][removed] = s["removed"].get(removed, 0) + n


def merge(parts: Iterable[dict]) -> dict:
  out: dict = {}
  for part in parts:
    for step, s in part.items():
      t = _step(out, step)
      for k in ("in", "out", "bytes_in", "bytes_out", "seconds"):
        t[k] += s[k]
      for rule, n in s["removed"].items():
        t["removed"][rule] = t["removed"].get(rule, 0) + n
  return out


def without_time(stats: dict) -> dict:
  """The counts only (what must agree between runners)."""
  return {step: {k: v for k, v in s.items() if k != "seconds"} for step, s in stats.items()}


def _ordered(stats: dict) -> list[str]:
  known = [s for s in STEP_ORDER if s in stats]
  return known + sorted(s for s in stats if s not in STEP_ORDER)


def table(stats: dict) -> str:
  """A fixed-width table: one row per step, one indented row per removal rule.
  Rates are per CPU-second spent in the step (summed over worker threads)."""
  head = f"{'step':<28}{'docs in':>9}{'docs out':>9}{'removed':>9}{'MB in':>9}{'MB out':>9}{'docs/s':>10}{'MB/s':>8}"
  rows = [head, "-" * len(head)]
  note = "(docs/s and MB/s per CPU-second of the step; MB of the step's input)"
  for step in _ordered(stats):
    s = stats[step]
    rate = s["in"] / s["seconds"] if s["seconds"] > 0 else float("nan")
    mbs = s["bytes_in"] / 1e6 / s["seconds"] if s["seconds"] > 0 else float("nan")
    rows.append(f"{step:<28}{s['in']:>9}{s['out']:>9}{s['in'] - s['out']:>9}"
                f"{s['bytes_in'] / 1e6:>9.3f}{s['bytes_out'] / 1e6:>9.3f}{rate:>10.1f}{mbs:>8.2f}")
    for rule, n in sorted(s["removed"].items(), key=lambda kv: (-kv[1], kv[0])):
      rows.append(f"  - {rule:<42}{n:>4}")
  return "\n".join(rows + [note])


class ProgressLine:
  """Prints `[desc] done/total units | rate | extra` to stderr at most every
  `every_s` seconds and once at the end."""

  def __init__(self, total: int, desc: str, unit: str = "shards", every_s: float = 2.0,
               stream=None):
    self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
    self.done, self.t0, self.last = 0, time.perf_counter(), -1e9
    self.stream = stream or sys.stderr

  def update(self, n: int = 1, **info) -> None:
    self.done += n
    now = time.perf_counter()
    if now - self.last >= self.every_s or self.done >= self.total:
      self.last = now
      elapsed = now - self.t0
      extra = " ".join(f"{k}={v}" for k, v in info.items())
      rate = self.done / elapsed if elapsed > 0 else 0.0
      print(f"[curate:{self.desc}] {self.done}/{self.total} {self.unit} | {rate:.2f} {self.unit}/s "
            f"| {elapsed:.1f}s {extra}", file=self.stream, flush=True)
