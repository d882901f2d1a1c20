"""Frontier plots with binomial confidence bands (Edelman et al., NeurIPS 2023).

A cell of the (width, m, init) grid is a Binomial(N, p) experiment: N seeds,
each succeeding with probability p. Its success rate k/N gets a 95% band:

* Wilson score interval (default for the plots):
      (p^ + z^2/2N +- z sqrt(p^(1-p^)/N + z^2/4N^2)) / (1 + z^2/N);
* Clopper-Pearson ("exact") interval via Beta quantiles:
      [Beta(a/2; k, N-k+1), Beta(1-a/2; k+1, N-k)], with 0 / 1 at k = 0 / N.

Figures are matplotlib with the Agg backend (PNG files, no display).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from scipy import stats


def wilson_interval(k, n, confidence: float = 0.95) -> Tuple[np.ndarray, np.ndarray]:
  """Wilson score interval of k successes out of n (arrays broadcast)."""
  k = np.asarray(k, np.float64)
  n = np.asarray(n, np.float64)
  z = stats.norm.ppf(0.5 + confidence / 2)
  with np.errstate(invalid="ignore", divide="ignore"):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  # Exact at the edges (rounding would otherwise leave 1 - 1e-16 at k = n).
  lo = np.where(k == 0, 0.0, np.clip(centre - half, 0, 1))
  hi = np.where(k == n, 1.0, np.clip(centre + half, 0, 1))
  return lo, hi


def clopper_pearson_interval(k, n, confidence: float = 0.95
                             ) -> Tuple[np.ndarray, np.ndarray]:
  """Exact (Clopper-Pearson) interval of k successes out of n."""
  k = np.asarray(k, np.float64)
  n = np.asarray(n, np.float64)
  alpha = 1 - confidence
  with np.errstate(invalid="ignore"):
    lo = np.where(k > 0, stats.beta.ppf(alpha / 2, k, n - k + 1), 0.0)
    hi = np.where(k < n, stats.beta.ppf(1 - alpha / 2, k + 1, n - k), 1.0)
  return lo, hi


def interval(k, n, method: str = "wilson", confidence: float = 0.95):
  if method == "wilson":
    return wilson_interval(k, n, confidence)
  if method in ("clopper_pearson", "exact"):
    return clopper_pearson_interval(k, n, confidence)
  raise ValueError(f"unknown interval {method!r}; use 'wilson' or 'clopper_pearson'")


def plot_success_vs_samples(path: str, samples: Sequence[int],
                            cells: Mapping[Tuple[str, int], Tuple[np.ndarray, np.ndarray]],
                            *, title: str = "", method: str = "wilson") -> None:
  """Success probability vs m, one curve per (init, width), with bands.

  cells[(init, width)] = (successes [len(samples)], trials [len(samples)]).
  One panel per init; widths share colours across panels.
  """
  inits = sorted({i for i, _ in cells}, key=lambda s: (s != "dense", s))
  widths = sorted({w for _, w in cells})
  colours = plt.cm.viridis(np.linspace(0.1, 0.9, max(len(widths), 1)))
  fig, axes = plt.subplots(1, len(inits), figsize=(5 * len(inits), 4), sharey=True,
                           squeeze=False)
  for ax, init in zip(axes[0], inits):
    for colour, width in zip(colours, widths):
      if (init, width) not in cells:
        continue
      k, n = (np.asarray(a, float) for a in cells[(init, width)])
      lo, hi = interval(k, n, method)
      ax.plot(samples, k / n, "o-", color=colour, label=f"width {width}")
      ax.fill_between(samples, lo, hi, color=colour, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training samples m")
    ax.set_title(init)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel(f"P(success) ({method.replace('_', '-').title()} 95% band)")
  axes[0, -1].legend(loc="lower right", fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_frontier_heatmap(path: str, widths: Sequence[int], samples: Sequence[int],
                          prob: Mapping[str, np.ndarray], *, title: str = "") -> None:
  """Success probability over the (width, m) grid, one panel per init.

  prob[init]: [len(widths), len(samples)]; the 0.5 contour is the frontier.
  """
  inits = sorted(prob, key=lambda s: (s != "dense", s))
  fig, axes = plt.subplots(1, len(inits), figsize=(4.5 * len(inits), 3.6), squeeze=False)
  for ax, init in zip(axes[0], inits):
    p = np.asarray(prob[init])
    im = ax.imshow(p, origin="lower", cmap="magma", vmin=0, vmax=1, aspect="auto")
    for i in range(p.shape[0]):
      for j in range(p.shape[1]):
        ax.text(j, i, f"{p[i, j]:.1f}", ha="center", va="center",
                color="white" if p[i, j] < 0.6 else "black", fontsize=9)
    if p.shape[0] > 1 and p.shape[1] > 1 and p.min() < 0.5 < p.max():
      ax.contour(p, levels=[0.5], colors="cyan", linewidths=1.5)
    ax.set_xticks(range(len(samples)), [str(m) for m in samples])
    ax.set_yticks(range(len(widths)), [str(w) for w in widths])
    ax.set_xlabel("training samples m")
    ax.set_ylabel("width")
    ax.set_title(init)
  fig.colorbar(im, ax=axes[0].tolist(), shrink=0.9, label="P(success)")
  if title:
    fig.suptitle(title, y=1.03)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)


def plot_median_steps(path: str, samples: Sequence[int],
                      steps: Mapping[Tuple[str, int], np.ndarray], *,
                      max_steps: Optional[int] = None, title: str = "") -> None:
  """Median steps-to-success vs m (NaN where fewer than half succeeded)."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  widths = sorted({w for _, w in steps})
  colours = dict(zip(widths, plt.cm.viridis(np.linspace(0.1, 0.9, max(len(widths), 1)))))
  for (init, width), med in sorted(steps.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    style = "o--" if init == "dense" else "s-"
    ax.plot(samples, med, style, color=colours[width], label=f"{init}, width {width}")
  if max_steps:
    ax.axhline(max_steps, color="gray", lw=0.8, ls=":", label="step budget")
  ax.set_xscale("log")
  ax.set_xlim(min(samples) / 1.25, max(samples) * 1.25)  # also when every curve is NaN.
  ax.set_xlabel("training samples m")
  ax.set_ylabel("median steps to success")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_bars(path: str, labels: Sequence[str], successes: Sequence[int],
              trials: Sequence[int], *, title: str = "", method: str = "wilson") -> None:
  """Success rates with confidence error bars (lottery-ticket comparison)."""
  k = np.asarray(successes, float)
  n = np.asarray(trials, float)
  p = k / n
  lo, hi = interval(k, n, method)
  fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(labels), 3.8))
  ax.bar(range(len(labels)), p, color="tab:blue", alpha=0.7)
  yerr = np.maximum([p - lo, hi - p], 0.0)
  ax.errorbar(range(len(labels)), p, yerr=yerr, fmt="none", color="k", capsize=4)
  ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
  ax.set_ylim(0, 1.05)
  ax.set_ylabel(f"P(success) ({method.replace('_', '-').title()} 95%)")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_tabular(path: str, fractions: Sequence[float],
                 curves: Mapping[str, Mapping[str, Tuple[np.ndarray, np.ndarray]]]) -> None:
  """Test accuracy vs training fraction; curves[dataset][model] = (mean, std)."""
  names = list(curves)
  cols = min(4, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    for model, (mean, std) in curves[name].items():
      mean, std = np.asarray(mean), np.asarray(std)
      ax.plot(fractions, mean, "o-", label=model, ms=3)
      ax.fill_between(fractions, mean - std, mean + std, alpha=0.15)
    ax.set_xscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("training fraction")
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(names):]:
    ax.axis("off")
  axes.flat[0].set_ylabel("test accuracy")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
