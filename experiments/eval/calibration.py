"""Calibration of classifiers' probabilities (numpy): errors, scores, recalibration.

Notation. Example i has label-restricted probabilities p_i over m labels
(`label_probs`: a softmax over the labels' log-likelihoods only) and gold y_i;
top-label confidence c_i = max_k p_ik, prediction yhat_i = argmax_k p_ik,
correctness a_i = 1[yhat_i = y_i]. A predictor is calibrated when
P(a = 1 | c) = c.

Calibration error with bins B_1..B_B over confidences (n_b points in B_b,
mean confidence s_b, accuracy o_b):
  ECE (plug-in, l1)   sum_b (n_b / n) |o_b - s_b|
  l2 CE (plug-in)     ( sum_b (n_b / n) (o_b - s_b)^2 )^(1/2)
  MCE                 max_b |o_b - s_b|   over non-empty bins
Binning: equal width (B_b = [(b-1)/B, b/B), the last closed) or equal mass
(edges at the empirical quantiles, so bins hold ~n/B points).

The plug-in estimators are biased upwards: o_b is a noisy mean, and
E|o_b - s_b| >= |E o_b - s_b|. Kumar, Liang & Ma (2019, "Verified
Uncertainty Calibration") debias them:
  squared l2: E(o_b - s_b)^2 = (mu_b - s_b)^2 + mu_b(1 - mu_b)/n_b, so
    sum_b (n_b/n) [ (o_b - s_b)^2 - o_b(1 - o_b)/(n_b - 1) ]
  is unbiased for the binned squared error (o_b(1-o_b) n_b/(n_b-1) is the
  unbiased variance of the a_i in the bin); its square root (clipped at 0) is
  the debiased l2 CE.
  l1: no closed form; the bias plugin - true is estimated by a parametric
  bootstrap, o*_b ~ N(o_b, o_b(1 - o_b)/n_b), as E* plugin(o*) - plugin(o),
  and subtracted: debiased = 2 plugin(o) - mean_r plugin(o*_r).
A bin with a single point has no variance estimate; it contributes its
plug-in term (never hiding error).

Proper scores: Brier = mean_i sum_k (p_ik - 1[k = y_i])^2; NLL = -mean_i log p_iy_i.

Recalibration, always fitted on examples other than those evaluated:
  temperature scaling (Guo et al. 2017): p_i = softmax(z_i / T), T minimising
    the NLL of a held-out split. With beta = 1/T the NLL
    f(beta) = mean_i [logsumexp(beta z_i) - beta z_iy_i] is convex
    (f'' = mean_i Var_{p_i(beta)}[z] >= 0), so the minimiser is the root of
    f'(beta) = mean_i (E_{p_i(beta)}[z] - z_iy_i), found by bisection
    (then Newton-polished) in [1/T_max, 1/T_min].
  Platt scaling: g(c) = sigmoid(a logit(c) + b) fitted to correctness a_i by
    logistic regression (Newton's method on the convex log loss).
  scaling-binning (Kumar et al. 2019): (1) fit g (Platt) on split T1;
    (2) on a DISJOINT split T2, put the values g(c) into B equal-mass bins
    and store each bin's mean of g(c) (T2's labels are not used); (3) map a
    new c to the stored mean of the bin g(c) falls in. The output takes at
    most B values, so its calibration error can be measured, and it keeps
    g's sharpness up to the bin width.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Sequence

import numpy as np

EPS = 1e-12


# ------------------------------------------------------------------ confidences

def label_probs(label_logliks: np.ndarray) -> np.ndarray:
  """softmax over each row's label log-likelihoods [N, m] -> probabilities [N, m]."""
  z = np.asarray(label_logliks, np.float64)
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def top_label(probs: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(confidence c_i, prediction, correctness a_i as float) of probabilities [N, m].
  Ties go to the lowest label id."""
  probs = np.asarray(probs, np.float64)
  pred = probs.argmax(axis=1)
  conf = probs[np.arange(len(pred)), pred]
  return conf, pred, (pred == np.asarray(gold)).astype(np.float64)


# ------------------------------------------------------------------ binning

def equal_width_bins(conf: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin index b in [0, B): [b/B, (b+1)/B), with 1.0 in the last bin."""
  conf = np.asarray(conf, np.float64)
  return np.clip(np.floor(conf * num_bins).astype(np.int64), 0, num_bins - 1)


def equal_mass_edges(values: np.ndarray, num_bins: int) -> np.ndarray:
  """The B - 1 interior edges at the empirical quantiles j/B, j = 1..B-1."""
  values = np.sort(np.asarray(values, np.float64))
  if not len(values):
    raise ValueError("equal_mass_edges: no values")
  return np.quantile(values, np.arange(1, num_bins) / num_bins, method="inverted_cdf")


def assign_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """Bin index of each value given sorted interior edges: values <= edge_j fall at or below j."""
  return np.searchsorted(np.asarray(edges), np.asarray(values, np.float64), side="left")


def equal_mass_bins(conf: np.ndarray, num_bins: int) -> np.ndarray:
  return assign_bins(conf, equal_mass_edges(conf, num_bins))


def make_bins(conf: np.ndarray, num_bins: int, scheme: str) -> np.ndarray:
  if scheme == "width":
    return equal_width_bins(conf, num_bins)
  if scheme == "mass":
    return equal_mass_bins(conf, num_bins)
  raise ValueError(f"binning scheme={scheme!r} must be 'width' or 'mass'")


@dataclasses.dataclass
class BinStats:
  """Per non-empty bin: count n_b, mean confidence s_b, accuracy o_b."""
  count: np.ndarray
  conf: np.ndarray
  acc: np.ndarray

  @property
  def weight(self) -> np.ndarray:
    return self.count / self.count.sum()


def bin_stats(conf: np.ndarray, correct: np.ndarray, bins: np.ndarray) -> BinStats:
  conf = np.asarray(conf, np.float64)
  correct = np.asarray(correct, np.float64)
  if conf.shape != correct.shape or conf.ndim != 1:
    raise ValueError(f"confidences {conf.shape} and correctness {correct.shape} must be "
                     "1-D arrays of the same length")
  if not len(conf):
    raise ValueError("calibration metrics need at least one example")
  ids, inverse = np.unique(bins, return_inverse=True)
  count = np.bincount(inverse).astype(np.float64)
  return BinStats(count=count,
                  conf=np.bincount(inverse, weights=conf) / count,
                  acc=np.bincount(inverse, weights=correct) / count)


# ------------------------------------------------------------------ errors

def plugin_ce(stats: BinStats, p: int = 1) -> float:
  gaps = np.abs(stats.acc - stats.conf) ** p
  return float(np.dot(stats.weight, gaps) ** (1.0 / p))


def ece(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15, scheme: str = "width") -> float:
  """Plug-in l1 expected calibration error with `num_bins` bins (module docstring)."""
  return plugin_ce(bin_stats(conf, correct, make_bins(conf, num_bins, scheme)), p=1)


def mce(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15, scheme: str = "width") -> float:
  stats = bin_stats(conf, correct, make_bins(conf, num_bins, scheme))
  return float(np.max(np.abs(stats.acc - stats.conf)))


def debiased_squared_ce(stats: BinStats) -> float:
  """Unbiased estimate of the binned squared l2 calibration error (may be < 0)."""
  sq = (stats.acc - stats.conf) ** 2
  n = stats.count
  var = np.where(n > 1, stats.acc * (1.0 - stats.acc) / np.maximum(n - 1.0, 1.0), 0.0)
  return float(np.dot(stats.weight, sq - var))


def debiased_l2_ce(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15,
                   scheme: str = "mass") -> float:
  stats = bin_stats(conf, correct, make_bins(conf, num_bins, scheme))
  return math.sqrt(max(debiased_squared_ce(stats), 0.0))


def debiased_ece(conf: np.ndarray, correct: np.ndarray, num_bins: int = 15,
                 scheme: str = "mass", resamples: int = 1000, seed: int = 0) -> float:
  """l1 ECE minus its bootstrap-estimated plug-in bias (module docstring)."""
  stats = bin_stats(conf, correct, make_bins(conf, num_bins, scheme))
  plugin = plugin_ce(stats, p=1)
  rng = np.random.default_rng(seed)
  std = np.sqrt(stats.acc * (1.0 - stats.acc) / stats.count)
  sims = rng.normal(stats.acc, std, size=(resamples, len(stats.count)))
  resampled = np.abs(sims - stats.conf) @ stats.weight
  return float(2.0 * plugin - resampled.mean())


def brier(probs: np.ndarray, gold: np.ndarray) -> float:
  probs = np.asarray(probs, np.float64)
  onehot = np.eye(probs.shape[1])[np.asarray(gold)]
  return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, gold: np.ndarray) -> float:
  probs = np.asarray(probs, np.float64)
  return float(-np.mean(np.log(np.maximum(probs[np.arange(len(probs)), np.asarray(gold)], EPS))))


def summary(probs: np.ndarray, gold: np.ndarray, *, seed: int = 0) -> dict[str, float]:
  """Every metric of one set of predictions (the study's table columns)."""
  conf, _, correct = top_label(probs, gold)
  return {
      "accuracy": float(correct.mean()),
      "confidence": float(conf.mean()),
      "ece_10": ece(conf, correct, 10, "width"),
      "ece_15": ece(conf, correct, 15, "width"),
      "ece_mass_15": ece(conf, correct, 15, "mass"),
      "debiased_ece_15": debiased_ece(conf, correct, 15, "mass", seed=seed),
      "debiased_l2_ce_15": debiased_l2_ce(conf, correct, 15, "mass"),
      "mce_15": mce(conf, correct, 15, "width"),
      "brier": brier(probs, gold),
      "nll": nll(probs, gold),
  }


# ------------------------------------------------------------------ recalibration

def _tempered_nll_grad(beta: float, z: np.ndarray, gold: np.ndarray) -> tuple[float, float, float]:
  """(f, f', f'') of f(beta) = mean_i [logsumexp(beta z_i) - beta z_iy_i]."""
  bz = beta * z
  top = bz.max(axis=1, keepdims=True)
  e = np.exp(bz - top)
  s = e.sum(axis=1, keepdims=True)
  p = e / s
  zy = z[np.arange(len(z)), gold]
  f = float(np.mean(top[:, 0] + np.log(s[:, 0]) - beta * zy))
  mean_z = (p * z).sum(axis=1)
  g = float(np.mean(mean_z - zy))
  h = float(np.mean((p * z * z).sum(axis=1) - mean_z ** 2))
  return f, g, h


def tempered_nll(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
  return _tempered_nll_grad(1.0 / temperature, np.asarray(logits, np.float64), np.asarray(gold))[0]


def fit_temperature(logits: np.ndarray, gold: np.ndarray, t_min: float = 0.01,
                    t_max: float = 100.0) -> float:
  """argmin_T NLL(softmax(z / T)) over [t_min, t_max] (module docstring)."""
  z = np.asarray(logits, np.float64)
  gold = np.asarray(gold)
  if z.ndim != 2 or len(z) != len(gold) or not len(z):
    raise ValueError(f"fit_temperature: logits {z.shape} must be [N, m] with N = len(gold) "
                     f"= {len(gold)} > 0")
  lo, hi = 1.0 / t_max, 1.0 / t_min
  if _tempered_nll_grad(lo, z, gold)[1] >= 0:
    return t_max
  if _tempered_nll_grad(hi, z, gold)[1] <= 0:
    return t_min
  for _ in range(60):
    mid = 0.5 * (lo + hi)
    if _tempered_nll_grad(mid, z, gold)[1] > 0:
      hi = mid
    else:
      lo = mid
  beta = 0.5 * (lo + hi)
  for _ in range(3):   # Newton polish, kept inside the bracket
    _, g, h = _tempered_nll_grad(beta, z, gold)
    if h <= 0:
      break
    step = beta - g / h
    if not lo <= step <= hi:
      break
    beta = step
  return 1.0 / beta


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
  return label_probs(np.asarray(logits, np.float64) / temperature)


def _logit(c: np.ndarray) -> np.ndarray:
  c = np.clip(np.asarray(c, np.float64), 1e-7, 1 - 1e-7)
  return np.log(c) - np.log1p(-c)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclasses.dataclass
class Platt:
  """g(c) = sigmoid(a logit(c) + b)."""
  a: float
  b: float

  def __call__(self, conf: np.ndarray) -> np.ndarray:
    return _sigmoid(self.a * _logit(conf) + self.b)


def platt_loss(conf: np.ndarray, correct: np.ndarray, a: float, b: float) -> float:
  x = _logit(conf)
  t = a * x + b
  y = np.asarray(correct, np.float64)
  return float(np.mean(np.logaddexp(0.0, t) - y * t))


def fit_platt(conf: np.ndarray, correct: np.ndarray, ridge: float = 1e-6,
              iters: int = 100) -> Platt:
  """Logistic regression of correctness on logit(confidence), Newton with backtracking."""
  x = _logit(conf)
  y = np.asarray(correct, np.float64)
  if x.shape != y.shape or not len(x):
    raise ValueError(f"fit_platt: confidences {x.shape} and correctness {y.shape} must "
                     "match and be non-empty")
  w = np.array([1.0, 0.0])
  feats = np.stack([x, np.ones_like(x)], axis=1)

  def loss(w):
    t = feats @ w
    return float(np.mean(np.logaddexp(0.0, t) - y * t) + 0.5 * ridge * w @ w)

  current = loss(w)
  for _ in range(iters):
    p = _sigmoid(feats @ w)
    grad = feats.T @ (p - y) / len(y) + ridge * w
    hess = (feats * (p * (1 - p))[:, None]).T @ feats / len(y) + ridge * np.eye(2)
    step = np.linalg.solve(hess, grad)
    t = 1.0
    while t > 1e-8:
      cand = w - t * step
      value = loss(cand)
      if value <= current:
        break
      t *= 0.5
    if current - value < 1e-14 and np.abs(grad).max() < 1e-10:
      w, current = cand, value
      break
    w, current = cand, value
  return Platt(float(w[0]), float(w[1]))


@dataclasses.dataclass
class ScalingBinning:
  """The fitted scaling-binning calibrator: Platt g, g-value bin edges, bin means."""
  scaler: Platt
  edges: np.ndarray
  means: np.ndarray
  fit_indices: np.ndarray
  bin_indices: np.ndarray

  def __call__(self, conf: np.ndarray) -> np.ndarray:
    return self.means[assign_bins(self.scaler(conf), self.edges)]


def fit_scaling_binning(conf: np.ndarray, correct: np.ndarray, fit_indices: Sequence[int],
                        bin_indices: Sequence[int], num_bins: int = 10) -> ScalingBinning:
  """Scaling-binning (module docstring): Platt on `fit_indices`, bins and bin means
  of g(c) on `bin_indices`, which must be disjoint (the bin split's labels are unused)."""
  fit_indices = np.asarray(fit_indices, np.int64)
  bin_indices = np.asarray(bin_indices, np.int64)
  overlap = np.intersect1d(fit_indices, bin_indices)
  if overlap.size:
    raise ValueError(f"scaling-binning: {overlap.size} example(s) (first {int(overlap[0])}) "
                     "are in both the scaling split and the binning split; they must be disjoint")
  conf = np.asarray(conf, np.float64)
  scaler = fit_platt(conf[fit_indices], np.asarray(correct, np.float64)[fit_indices])
  g = scaler(conf[bin_indices])
  edges = equal_mass_edges(g, num_bins)
  idx = assign_bins(g, edges)
  counts = np.bincount(idx, minlength=num_bins)
  sums = np.bincount(idx, weights=g, minlength=num_bins)
  # A bin left empty by ties takes its neighbours' edge value (never used by the fit split's g).
  means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
  for b in range(num_bins):
    if np.isnan(means[b]):
      means[b] = edges[min(b, len(edges) - 1)] if len(edges) else float(g.mean())
  return ScalingBinning(scaler, edges, means, fit_indices, bin_indices)


def with_top_confidence(probs: np.ndarray, new_conf: np.ndarray) -> np.ndarray:
  """Probabilities whose top label (unchanged) gets `new_conf`; the rest of the
  mass is split among the other labels in their current proportions."""
  probs = np.asarray(probs, np.float64)
  pred = probs.argmax(axis=1)
  rows = np.arange(len(probs))
  rest = 1.0 - probs[rows, pred]
  out = probs * ((1.0 - new_conf) / np.maximum(rest, EPS))[:, None]
  even = (1.0 - new_conf)[:, None] / (probs.shape[1] - 1)
  out = np.where((rest <= EPS)[:, None], even, out)
  out[rows, pred] = new_conf
  return out


# ------------------------------------------------------------------ intervals

def bootstrap_interval(stat: Callable[[np.ndarray], float], n: int, *, groups: Optional[
    Sequence[np.ndarray]] = None, resamples: int = 500, alpha: float = 0.05,
                       seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap (1 - alpha) interval of stat(indices) over n examples.

  With `groups` (a list of index arrays, e.g. one per training seed), the
  bootstrap is two-level: resample groups, then examples within each drawn group.
  """
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(resamples):
    if groups is None:
      idx = rng.integers(n, size=n)
    else:
      picks = rng.integers(len(groups), size=len(groups))
      idx = np.concatenate([groups[g][rng.integers(len(groups[g]), size=len(groups[g]))]
                            for g in picks])
    values.append(stat(idx))
  lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
  return float(lo), float(hi)


# ------------------------------------------------------------------ plots

def reliability_axes(ax, conf: np.ndarray, correct: np.ndarray, num_bins: int = 10,
                     title: str = "") -> None:
  """Accuracy per equal-width bin against the diagonal, on one matplotlib Axes."""
  bins = equal_width_bins(conf, num_bins)
  width = 1.0 / num_bins
  centers = (np.arange(num_bins) + 0.5) * width
  count = np.bincount(bins, minlength=num_bins)
  acc = np.bincount(bins, weights=correct, minlength=num_bins) / np.maximum(count, 1)
  mean_conf = np.bincount(bins, weights=conf, minlength=num_bins) / np.maximum(count, 1)
  shown = count > 0
  ax.bar(centers[shown], acc[shown], width=width, edgecolor="black", color="tab:blue",
         alpha=0.8, label="accuracy")
  ax.bar(centers[shown], (mean_conf - acc)[shown], bottom=acc[shown], width=width,
         edgecolor="tab:red", color="tab:red", alpha=0.25, hatch="//", label="gap")
  ax.plot([0, 1], [0, 1], "k--", lw=1)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  e = ece(conf, correct, num_bins, "width")
  ax.set_title(f"{title}\nECE({num_bins}) {e:.3f}, n={len(conf)}" if title else
               f"ECE({num_bins}) {e:.3f}, n={len(conf)}", fontsize=8)


def reliability_diagram(conf: np.ndarray, correct: np.ndarray, path: str, *,
                        num_bins: int = 10, title: str = "") -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4, 4))
  reliability_axes(ax, np.asarray(conf), np.asarray(correct), num_bins, title)
  ax.legend(loc="upper left", fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
