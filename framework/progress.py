"""A periodic progress line with rate and ETA, for long loops on any terminal.

Prints at most every `every_s` seconds (and at the end), e.g.

  [train] 120/600 (20.0%) | 3.41 it/s | elapsed 0:00:35 | eta 0:02:21 | loss 2.31
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import Any, Callable, Optional


def _fmt_seconds(seconds: float) -> str:
  if seconds != seconds or seconds == float("inf"):
    return "?"
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _fmt_value(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


class Progress:
  """Progress reporter: `update(n, **info)` after each unit of work."""

  def __init__(self, total: Optional[int], desc: str = "", *, every_s: float = 5.0,
               unit: str = "it", start: int = 0,
               print_fn: Callable[[str], None] | None = None):
    self.total = total
    self.desc = desc
    self.every_s = every_s
    self.unit = unit
    self.count = start
    self._start_count = start
    self._t0 = time.perf_counter()
    self._last_print = -float("inf")
    self._print = print_fn or (lambda s: print(s, file=sys.stderr, flush=True))

  def rate(self) -> float:
    elapsed = time.perf_counter() - self._t0
    done = self.count - self._start_count
    return done / elapsed if elapsed > 0 else 0.0

  def line(self, **info: Any) -> str:
    elapsed = time.perf_counter() - self._t0
    rate = self.rate()
    parts = [f"[{self.desc}]" if self.desc else ""]
    if self.total:
      pct = 100.0 * self.count / self.total
      parts.append(f"{self.count}/{self.total} ({pct:.1f}%)")
      eta = (self.total - self.count) / rate if rate > 0 else float("inf")
    else:
      parts.append(f"{self.count}")
      eta = float("nan")
    parts.append(f"{rate:.3g} {self.unit}/s")
    parts.append(f"elapsed {_fmt_seconds(elapsed)}")
    if self.total:
      parts.append(f"eta {_fmt_seconds(eta)}")
    parts.extend(f"{k} {_fmt_value(v)}" for k, v in info.items())
    return " | ".join(p for p in parts if p)

  def update(self, n: int = 1, force: bool = False, skipped: bool = False,
             **info: Any) -> None:
    """Counts n units done; skipped=True: done without work (reused, resumed),
    so they count toward the total but not toward the rate and ETA."""
    self.count += n
    if skipped:
      self._start_count += n
    now = time.perf_counter()
    done = self.total is not None and self.count >= self.total
    if force or done or now - self._last_print >= self.every_s:
      self._last_print = now
      self._print(self.line(**info))
