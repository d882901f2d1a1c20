"""Analysis of the parity study: success tables, frontier findings, tabular comparison.

A cell of the (init, width, m) grid is a Binomial(N, p) experiment (N seeds,
each succeeding with probability p). Its estimate k/N is reported with a
Wilson 95% band (`frontier_plots.wilson_interval`); the median steps to
success counts a failed run as infinitely slow, so it is defined only where
at least half the seeds succeed. The findings state, with counts, the two
claims the grid tests: P(success) rises with width at fixed m (width is
parallel search for lucky neurons), and sparse init succeeds with fewer
samples than dense at the same width. Two cells differ only where their
Wilson 95% intervals are disjoint (`effect`); otherwise the difference is
"not resolved" (1/4 vs 0/4 is not a finding).
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


def effect(k_a: int, n_a: int, k_b: int, n_b: int, confidence: float = 0.95) -> str:
  """How a's success rate k_a/n_a compares with b's k_b/n_b, as far as the
  counts resolve it: "higher" / "lower" when the Wilson intervals are
  disjoint, "not resolved" when they overlap (e.g. 1/4 vs 0/4)."""
  lo_a, hi_a = (float(v) for v in plots.wilson_interval(k_a, n_a, confidence))
  lo_b, hi_b = (float(v) for v in plots.wilson_interval(k_b, n_b, confidence))
  if lo_a > hi_b:
    return "higher"
  if lo_b > hi_a:
    return "lower"
  return "not resolved"


def compare_counts(label_a: str, a: Tuple[int, int], label_b: str, b: Tuple[int, int],
                   confidence: float = 0.95) -> str:
  """'<a> k/n [lo, hi] vs <b> k/n [lo, hi]: <verdict>' with Wilson bands."""
  def cell(label, kn):
    lo, hi = plots.wilson_interval(kn[0], kn[1], confidence)
    return f"{label} {kn[0]}/{kn[1]} [{float(lo):.2f}, {float(hi):.2f}]"
  word = effect(a[0], a[1], b[0], b[1], confidence)
  pct = f"{100 * confidence:g}%"
  verdict = (f"{word} (Wilson {pct} intervals disjoint)" if word != "not resolved" else
             f"not resolved (Wilson {pct} intervals overlap)")
  return f"{cell(label_a, a)} vs {cell(label_b, b)}: {verdict}"


def frontier_findings(cells: Mapping[tuple, Tuple[int, int]], med, inits, widths,
                      samples) -> List[str]:
  """Plain statements, with counts, of the two claims the grid tests.

  cells[(init, width, m)] = (successes, trials). An effect is stated only
  where the Wilson 95% intervals of the two cells are disjoint; otherwise
  it is "not resolved" (N seeds per cell bound what the grid can show).
  """
  out = []
  prob = {i: np.array([[cells[(i, w, m)][0] / cells[(i, w, m)][1] for m in samples]
                       for w in widths]) for i in inits}
  for i in inits:
    for j, m in enumerate(samples):
      col = prob[i][:, j]
      if len(widths) < 2 or col.max() - col.min() < 0.2:
        continue
      hi_w, lo_w = widths[-1], widths[0]
      word = effect(*cells[(i, hi_w, m)], *cells[(i, lo_w, m)])
      claim = {"higher": "P(success) rises with width",
               "lower": "P(success) falls with width",
               "not resolved": "width effect not resolved"}[word]
      out.append(f"{i}, m={m}: {claim}: " + compare_counts(
          f"width {hi_w}", cells[(i, hi_w, m)], f"width {lo_w}", cells[(i, lo_w, m)])
          + " (all widths: " + ", ".join(
              f"{cells[(i, w, m)][0]}/{cells[(i, w, m)][1]} (width {w})" for w in widths)
          + ").")
  for a, w in enumerate(widths):
    firsts = {}
    for i in inits:
      ok = [m for j, m in enumerate(samples) if prob[i][a, j] >= 0.5]
      firsts[i] = ok[0] if ok else None
    desc = ", ".join(f"{i}: {('m=' + str(v)) if v else 'none of the m'}"
                     for i, v in firsts.items())
    out.append(f"width {w}: smallest m with estimated P(success) >= 0.5 - {desc}.")
  dense = [i for i in inits if i == "dense"]
  for i in inits:
    if not dense or i == "dense":
      continue
    grid = list(itertools.product(widths, samples))
    words = {(w, m): effect(*cells[(i, w, m)], *cells[("dense", w, m)]) for w, m in grid}
    better = [c for c in grid if words[c] == "higher"]
    worse = [c for c in grid if words[c] == "lower"]
    unresolved = [c for c in grid if words[c] == "not resolved"
                  and abs(prob[i][widths.index(c[0]), samples.index(c[1])]
                          - prob["dense"][widths.index(c[0]), samples.index(c[1])]) > 0]
    out.append(f"{i} vs dense, P(success) (Wilson 95% intervals disjoint): higher at "
               f"(width, m) = {better or 'none'}; lower at {worse or 'none'}; "
               f"differences not resolved at {unresolved or 'none'}.")
    faster = [(w, m) for (w, m) in grid
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
