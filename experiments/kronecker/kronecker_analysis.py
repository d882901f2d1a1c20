"""How Kronecker-factored the curvature of each layer is (Morwani et al. 2024).

"A New Perspective on Shampoo's Preconditioner" (Morwani, Shapira, Vyas,
Malach, Kakade, Janson 2024). For a weight W (m x n) with gradient samples
G_1..G_S, H = (1/S) sum_i vec(G_i) vec(G_i)^T (row-major vec). Two views:

  * Gauss-Newton: G_i are per-example gradients with labels y_i sampled from
    the model, y_i ~ p(. | x_i), so H estimates the Fisher = the GN matrix
    E_x[J^T (diag p - p p^T) J] of the cross-entropy loss. For a classifier
    with few classes the expectation over y can be taken exactly instead:
    samples sqrt(p(y|x)) G_xy for every label y, in groups of one input;
  * Adagrad: G_t are the mini-batch gradients of training (real labels), H =
    the (normalised) sum of their outer products.

Approximations H~ = A (x) B (all scale-free here; the fit picks the scale):
  optimal   top singular pair of the Van Loan rearrangement R(H), by the
            two-sided power iteration A <- E[G B G^T], B <- E[G^T A G] run
            to convergence (`kronecker_fits.power_iteration_samples`);
  pi<k>     k steps of that iteration from identities on both sides at once
            (`simultaneous_power_iteration`): pi1 = L (x) R, so
  shampoo2  L (x) R with L = E[G G^T], R = E[G^T G] is one power step;
  shampoo   L^{1/2} (x) R^{1/2}, classic Shampoo's implied H
            (its update L^{-1/4} G R^{-1/4} = (L^{1/2} (x) R^{1/2})^{-1/2} vec G);
  kfac      E[sum_p a_p a_p^T] (x) E[sum_p d_p d_p^T] for G = sum_p a_p d_p^T
            (a: layer input rows, d: gradient at the layer output; p runs
            over positions (tokens, pixels) -- "K-FAC expand" for shared weights).

Metrics: cosine <H, H~>_F / (|H| |H~|), relative Frobenius error at the best
scale (= sqrt(1 - cosine^2)), and sigma_2 / sigma_1 of R(H), the rate of the
power iteration. All through the implicit formulas of `kronecker_fits`
(never forming H): <H, A (x) B> = mean_i tr(G_i^T A G_i B^T),
|A (x) B| = |A| |B|, |H|^2 = mean_{i,j} <G_i, G_j>^2; R(H) is applied as
vec(B) -> vec(E[G B G^T]).


The gradient samples come from `layer_taps`.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.kronecker import kronecker_fits as kf

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------
# Approximations and metrics.
#
# `analyze` runs everything that needs the samples (layouts, Gram statistics,
# Shampoo's factors, k-step and converged power iterations) in one jitted
# call per sample shape; the metrics below reuse its `Analysis`.
# ----------------------------------------------------------------------------

Samples = kf.GradientSamples

_fit = jax.jit(kf.kronecker_fit_from_samples)
_left = jax.jit(kf.contract_left)
_right = jax.jit(kf.contract_right)


class Analysis(NamedTuple):
  """One sample set (S, m, n) of one layer and view, analysed.

  samples: GEMM layouts of the samples. stats: "v" = |H_S|^2, "u" = the
  unbiased U-statistic of |E H|^2 over independent groups of `group`
  consecutive samples, "diag_frac" = share of |H_S|^2 from within-group
  pairs, "trace" = tr(H_S). factors: {name: (A, B)}. optimal_iters: power
  iterations run to reach the optimum.
  """
  samples: Samples
  stats: Dict[str, float]
  factors: Dict[str, Tuple[Array, Array]]
  optimal_iters: int
  group: int


def _gram_stats(samples: Samples, group: int) -> Dict[str, Array]:
  g = samples.left
  s = g.shape[1]
  flat = jnp.transpose(g, (1, 0, 2)).reshape(s, -1)
  k = jnp.matmul(flat, flat.T, precision=_HI)
  k2 = k * k
  total = jnp.sum(k2)
  gid = jnp.arange(s) // group
  same = jnp.sum(jnp.where(gid[:, None] == gid[None, :], k2, 0.0))
  return {"v": total / (s * s), "u": (total - same) / max(s * (s - group), 1),
          "diag_frac": same / total, "trace": jnp.trace(k) / s}


def _unit(x: Array) -> Array:
  return x / jnp.maximum(jnp.linalg.norm(x), 1e-30)


@functools.partial(jax.jit, static_argnames=("pi_steps", "max_iters", "group"))
def _analyze(grads: Array, tol: Array, *, pi_steps: Tuple[int, ...], max_iters: int,
             group: int):
  samples = kf.gradient_samples(grads)
  m, n = grads.shape[1:]
  stats = _gram_stats(samples, group)
  factors = {}
  # k simultaneous steps from identities; k = 1 gives Shampoo's L, R exactly.
  ab, done = (jnp.eye(m), jnp.eye(n)), 0
  for k in sorted({1, *pi_steps}):
    ab = kf.simultaneous_power_iteration(samples, k - done, init=ab)
    done = k
    factors["shampoo2" if k == 1 else f"pi{k}"] = ab
  # Converged: the alternating iteration (kf.power_iteration_samples)
  # until the direction of A moves by less than tol: 1 - cos = |a - a'|^2 / 2.

  def cond(c):
    it, _, _, _, delta = c
    return (it < max_iters) & (delta >= tol)

  def body(c):
    it, a_prev, _, b, _ = c
    a, b = kf.power_iteration_samples(samples, 1, b)
    ua = _unit(a)
    return it + 1, ua, a, b, 0.5 * jnp.sum(jnp.square(ua - a_prev))

  init = (0, jnp.zeros((m, m)), jnp.zeros((m, m)), jnp.eye(n), jnp.asarray(jnp.inf))
  iters, _, a, b, _ = jax.lax.while_loop(cond, body, init)
  factors["optimal"] = (a, b)
  return samples, stats, factors, iters


def psd_sqrt(m) -> np.ndarray:
  """Principal square root of a symmetric PSD matrix (float64 eigh, negatives clipped)."""
  m = np.asarray(m, np.float64)
  w, v = np.linalg.eigh(0.5 * (m + m.T))
  return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def analyze(grads, kfac: Optional[Tuple[Array, Array]] = None, *,
            pi_steps: Sequence[int] = (2, 5), tol: float = 1e-7, max_iters: int = 500,
            group: int = 1) -> Analysis:
  """All approximations of H = mean_i vec(G_i) vec(G_i)^T for samples (S, m, n).

  factors: optimal (alternating power iteration run until 1 - cos between
  successive A's < tol, at most max_iters), shampoo2 = (L, R), shampoo =
  (L^{1/2}, R^{1/2}), pi<k> for k in pi_steps, and kfac if given.
  """
  grads = np.asarray(grads, np.float32) if not isinstance(grads, jax.Array) else grads
  samples, stats, factors, iters = _analyze(
      grads, jnp.float32(tol), pi_steps=tuple(sorted(int(k) for k in pi_steps if k != 1)),
      max_iters=int(max_iters), group=int(group))
  factors = dict(factors)
  l, r = factors["shampoo2"]
  factors["shampoo"] = (psd_sqrt(l), psd_sqrt(r))
  if kfac is not None:
    factors["kfac"] = kfac
  return Analysis(samples, {k: float(v) for k, v in jax.device_get(stats).items()},
                  factors, int(iters), int(group))


def _cos(x, y) -> float:
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))


def fit_all(an: Analysis, factors: Mapping[str, Tuple[Array, Array]],
            unbiased: bool = False) -> Dict[str, Dict[str, float]]:
  """Cosine, best-scale relative error and scale of every A (x) B against the H of `an`.

  unbiased: |H|^2 by the U-statistic over independent groups (factors must
  not come from these samples), else the sample matrix H_S itself.
  """
  h2 = np.float32(an.stats["u" if unbiased else "v"])
  out = {}
  for name, (a, b) in factors.items():
    fit = jax.device_get(_fit(an.samples, np.asarray(a, np.float32),
                              np.asarray(b, np.float32), h2))
    out[name] = {"cos": float(fit.cosine), "err": float(fit.rel_error),
                 "scale": float(fit.scale)}
  return out


def van_loan_singular_values(samples, k: int = 2, tol: float = 1e-4) -> np.ndarray:
  """Top-k singular values of R(H) = (1/S) sum_i G_i (x) G_i without forming it.

  ARPACK (scipy svds) on the operator vec(B) -> vec(E[G B G^T]) and its
  adjoint vec(A) -> vec(E[G^T A G]); the start vector is vec(I).
  samples: GradientSamples or an (S, m, n) stack.
  """
  from scipy.sparse.linalg import LinearOperator, svds  # pylint: disable=g-import-not-at-top
  if not isinstance(samples, kf.GradientSamples):
    samples = kf.gradient_samples(jnp.asarray(np.asarray(samples, np.float32)))
  m, n = samples.left.shape[0], samples.right.shape[0]
  mv = lambda v: np.asarray(_left(samples, np.reshape(v, (n, n)).astype(np.float32)),
                            np.float64).ravel()
  rmv = lambda u: np.asarray(_right(samples, np.reshape(u, (m, m)).astype(np.float32)),
                             np.float64).ravel()
  op = LinearOperator((m * m, n * n), matvec=mv, rmatvec=rmv, dtype=np.float64)
  if min(m * m, n * n) <= k + 1:  # ARPACK needs k < min(shape); tiny: dense columns
    r = np.stack([mv(e) for e in np.eye(n * n)], axis=1)
    return np.linalg.svd(r, compute_uv=False)[:k]
  v0 = np.eye(min(m, n)).ravel()
  sv = svds(op, k=k, tol=tol, v0=v0 / np.linalg.norm(v0), maxiter=5000,
            return_singular_vectors=False)
  return np.sort(sv)[::-1]


def layer_metrics(an: Analysis, svd: bool = True) -> Dict[str, float]:
  """In-sample metrics of one layer and view: H = H_S of the analysed samples.

  Keys: <approx>/cos, <approx>/err (best scale), shampoo2/err_natural (the
  error of L (x) R / tr(H), the scale at which tr(L (x) R)/tr(H) = tr(H)),
  optimal_iters, h_norm, diag_frac and, with svd, sigma1, sigma2,
  sigma_ratio = sigma2/sigma1 of R(H_S) and optimal/cos_svd = sigma1/|H_S|
  (the best possible cosine: an independent check of the power iteration).
  """
  fits = fit_all(an, an.factors)
  out: Dict[str, float] = {}
  for name, f in fits.items():
    out[f"{name}/cos"] = f["cos"]
    out[f"{name}/err"] = f["err"]
  h2, tr_h = an.stats["v"], an.stats["trace"]
  l, r = an.factors["shampoo2"]
  lr2 = float(np.sum(np.square(l, dtype=np.float64)) * np.sum(np.square(r, dtype=np.float64)))
  inner = fits["shampoo2"]["scale"] * lr2
  c = 1.0 / tr_h
  out["shampoo2/err_natural"] = math.sqrt(max(h2 - 2 * c * inner + c * c * lr2, 0.0) / h2)
  out["optimal_iters"] = an.optimal_iters
  out["h_norm"] = math.sqrt(h2)
  out["diag_frac"] = an.stats["diag_frac"]
  if svd:
    sv = van_loan_singular_values(an.samples, 2)
    out["sigma1"], out["sigma2"] = float(sv[0]), float(sv[1])
    out["sigma_ratio"] = float(sv[1] / sv[0])
    out["optimal/cos_svd"] = float(sv[0] / math.sqrt(h2))
  return out


def heldout_metrics(fit: Analysis, evaluate: Analysis) -> Dict[str, float]:
  """Factors of `fit` against the population H estimated by independent samples.

  The eval samples give an unbiased <H, A (x) B> and |H|^2 (U-statistic), so
  this removes the in-sample optimism of `layer_metrics` (factors fitted to
  the same noisy H_S they are compared with). Keys: <approx>/cos_heldout.
  """
  fits = fit_all(evaluate, fit.factors, unbiased=True)
  return {f"{k}/cos_heldout": v["cos"] for k, v in fits.items()}


def shortcut_metrics(ref: Analysis, est: Analysis, batch_size: int) -> Dict[str, float]:
  """How well factors from mini-batch gradients fit the per-example H.

  ref: the GN reference samples (per-example, grouped per input); est: N_b
  independent batch gradients of batch size B. Keys: shampoo2/cos,
  optimal/cos (factors of the batch-gradient H against H_ref, unbiased
  |H_ref|^2), L/cos, R/cos (factor directions vs the reference L, R),
  trace_ratio = B tr(L_B) / tr(L_ref) with L_ref per input (a group's
  weights sum to 1): 1 in expectation for sampled labels, since
  E[G_B G_B^T] = L / B; real labels add (B - 1) |E G|^2 / tr L.
  """
  lb, rb = est.factors["shampoo2"]
  fits = fit_all(ref, {"shampoo2": (lb, rb), "optimal": est.factors["optimal"]},
                 unbiased=True)
  l, r = ref.factors["shampoo2"]
  return {
      "shampoo2/cos": fits["shampoo2"]["cos"],
      "optimal/cos": fits["optimal"]["cos"],
      "L/cos": _cos(lb, l), "R/cos": _cos(rb, r),
      "trace_ratio": float(batch_size * np.trace(np.asarray(lb, np.float64))
                           / (ref.group * np.trace(np.asarray(l, np.float64)))),
  }


def dense_check(grads, an: Analysis) -> float:
  """Max |implicit - dense| over the cosines of all factors and sigma_2/sigma_1.

  Forms H = mean_i vec(G_i) vec(G_i)^T in float64 and A (x) B with np.kron
  (small layers only) and compares with the implicit formulas.
  """
  g64 = np.asarray(grads, np.float64)
  s, m, n = g64.shape
  h = g64.reshape(s, -1).T @ g64.reshape(s, -1) / s
  implicit = fit_all(an, an.factors)
  diffs = []
  for name, (a, b) in an.factors.items():
    k = np.kron(np.asarray(a, np.float64), np.asarray(b, np.float64))
    diffs.append(abs(_cos(h, k) - implicit[name]["cos"]))
  sv = np.linalg.svd(np.asarray(kf.van_loan_rearrange(h, m, n)), compute_uv=False)
  sv_imp = van_loan_singular_values(an.samples, 2)
  diffs.append(abs(sv[1] / sv[0] - sv_imp[1] / sv_imp[0]))
  return float(max(diffs))
