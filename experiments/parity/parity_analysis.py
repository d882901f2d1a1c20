"""Analysis of the parity study: success tables, frontier findings, tabular comparison.

A cell of the (init, width, m) grid is a Binomial(N, p) experiment (N seeds,
each succeeding with probability p). Its estimate k/N is reported with a
Wilson 95% band (`frontier_plots.wilson_interval`); the median steps to
success counts a failed run as infinitely slow, so it is defined only where
at least half the seeds succeed. The findings state, with numbers, the two
claims the grid tests: P(success) rises with width at fixed m (width is
parallel search for lucky neurons), and sparse init succeeds with fewer
samples than dense at the same width.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from experiments.parity import frontier_plots as plots


def as_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """A markdown table."""
  out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(out)


def success_cells(records: Sequence[Dict], keys: Sequence[str]) -> Dict[tuple, Tuple[int, int]]:
  """Groups per-run records by `keys`: {key tuple: (successes, trials)}."""
  out: Dict[tuple, Tuple[int, int]] = {}
  for r in records:
    kk = tuple(r[k] for k in keys)
    s, t = out.get(kk, (0, 0))
    out[kk] = (s + int(bool(r["success"])), t + 1)
  return out


def fmt_cell(k: int, n: int) -> str:
  """'p (k/n) [lo, hi]' with the Wilson 95% band."""
  lo, hi = plots.wilson_interval(k, n)
  return f"{k / n:.1f} ({k}/{n}) [{float(lo):.2f}, {float(hi):.2f}]"


def median_steps(success: np.ndarray, steps: np.ndarray) -> float:
  """Median steps to success, failures counted as infinite (NaN if < half succeed)."""
  v = float(np.median(np.where(np.asarray(success), np.asarray(steps), np.inf)))
  return v if np.isfinite(v) else float("nan")


def frontier_grids(records: Sequence[Dict], inits: Sequence[str], widths: Sequence[int],
                   samples: Sequence[int]):
  """(cells, P(success) [init][width, m], median steps {(init, width): [m]})."""
  cells = success_cells(records, ("init", "width", "m"))
  prob = {i: np.array([[cells[(i, w, m)][0] / cells[(i, w, m)][1] for m in samples]
                       for w in widths]) for i in inits}
  med = {}
  for i, w in itertools.product(inits, widths):
    row = []
    for m in samples:
      rs = [r for r in records if (r["init"], r["width"], r["m"]) == (i, w, m)]
      row.append(median_steps([r["success"] for r in rs], [r["steps_to_success"] for r in rs]))
    med[(i, w)] = np.array(row)
  return cells, prob, med


def frontier_findings(prob, med, inits, widths, samples) -> List[str]:
  """Plain statements, with numbers, of the two claims the grid tests."""
  out = []
  for i in inits:
    for j, m in enumerate(samples):
      col = prob[i][:, j]
      if col.max() - col.min() >= 0.2:
        trend = ("rises" if np.all(np.diff(col) >= 0) else
                 "changes (not monotonically)")
        out.append(f"{i}, m={m}: P(success) {trend} with width: " + ", ".join(
            f"{p:.1f} (width {w})" for p, w in zip(col, widths)) + ".")
  for a, w in enumerate(widths):
    firsts = {}
    for i in inits:
      ok = [m for j, m in enumerate(samples) if prob[i][a, j] >= 0.5]
      firsts[i] = ok[0] if ok else None
    desc = ", ".join(f"{i}: {('m=' + str(v)) if v else 'none of the m'}"
                     for i, v in firsts.items())
    out.append(f"width {w}: smallest m with P(success) >= 0.5 - {desc}.")
  dense = [i for i in inits if i == "dense"]
  for i in inits:
    if not dense or i == "dense":
      continue
    better = [(w, m) for a, w in enumerate(widths) for j, m in enumerate(samples)
              if prob[i][a, j] - prob["dense"][a, j] >= 0.3]
    worse = [(w, m) for a, w in enumerate(widths) for j, m in enumerate(samples)
             if prob["dense"][a, j] - prob[i][a, j] >= 0.3]
    out.append(f"{i} beats dense by >= 0.3 in P(success) at (width, m) = {better or 'none'}; "
               f"dense beats it by >= 0.3 at {worse or 'none'}.")
    faster = [(w, m) for (w, m) in itertools.product(widths, samples)
              if not np.isnan(med[(i, w)][samples.index(m)])
              and not np.isnan(med[("dense", w)][samples.index(m)])]
    if faster:
      ratios = [med[("dense", w)][samples.index(m)] / med[(i, w)][samples.index(m)]
                for w, m in faster]
      out.append(f"where both succeed (median), dense needs {np.median(ratios):.2f}x the "
                 f"steps of {i} (median over {len(faster)} cells).")
  return out


TABULAR_MODELS = ("random forest", "dense MLP", "sparse MLP")


def tabular_summary(records: Sequence[Mapping], fractions: Sequence[float],
                    tolerance: float = 0.005):
  """Per data set x fraction: mean/std test accuracy of each model, and win counts.

  Returns (stats {(label, model, fraction): (mean, std)}, labels, wins) where
  wins counts rows in which the sparse MLP beats / loses to the random forest
  and the dense MLP by more than `tolerance` (or ties with the forest).
  """
  labels = list(dict.fromkeys(r["dataset"] for r in records))
  stats = {}
  wins = {"sparse>RF": 0, "sparse<RF": 0, "tie": 0, "sparse>dense": 0, "sparse<dense": 0}
  for label in labels:
    for model in TABULAR_MODELS:
      for f in fractions:
        accs = [r["test_acc"] for r in records
                if (r["dataset"], r["model"], r["fraction"]) == (label, model, f)]
        stats[(label, model, f)] = (float(np.mean(accs)), float(np.std(accs)))
    for f in fractions:
      diff = stats[(label, "sparse MLP", f)][0] - stats[(label, "random forest", f)][0]
      wins["sparse>RF" if diff > tolerance else "sparse<RF" if diff < -tolerance else "tie"] += 1
      dd = stats[(label, "sparse MLP", f)][0] - stats[(label, "dense MLP", f)][0]
      if abs(dd) > tolerance:
        wins["sparse>dense" if dd > 0 else "sparse<dense"] += 1
  return stats, labels, wins
