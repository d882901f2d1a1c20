"""Optimal Kronecker approximation of a gradient covariance, dense and implicit.

Moved here from `optimizers.kronecker`, which keeps only what Shampoo and
SOAP run; this is the math of the Kronecker study (Morwani et al. 2024, "A
New Perspective on Shampoo's Preconditioner"). Notation as there: a weight W
(m x n) with gradient samples G_1..G_S, row-major vec, so
(A (x) B) vec(G) = vec(A G B^T), and

    H = E[vec(G) vec(G)^T]   (mn x mn).

The Frobenius-optimal A (x) B ~ H is the top singular pair of the Van Loan
rearrangement R(H) (m^2 x n^2, R(A (x) B) = vec(A) vec(B)^T), reached by the
two-sided power iteration

    A <- E[G B~ G^T],   B <- E[G^T A~ G],   F~ = F / (tr(F) / dim(F))

(`optimizers.kronecker.normalise_factor`, the optimizer's own normalisation).
One step from identities gives Shampoo's L = E[G G^T], R = E[G^T G]: L (x) R
("Shampoo^2") is one round of power iteration on R(H).

Dense helpers (`gradient_covariance`, `kronecker_fit`,
`optimal_kronecker_approximation`) form H and serve small checks; the implicit
ones never form it:

    <H, A (x) B>_F = (1/S) sum_i tr(G_i^T A G_i B^T) = <E[G^T A G], B>_F,
    ||A (x) B||_F  = ||A||_F ||B||_F,
    ||H||_F^2      = (1/S^2) sum_{i,j} <G_i, G_j>^2,
    R(H) vec(B) = vec(E[G B G^T]),   R(H)^T vec(A) = vec(E[G^T A G]).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from optimizers import kronecker as kr

_HI = jax.lax.Precision.HIGHEST
normalise_factor = kr.normalise_factor

# ----------------------------------------------------------------------------
# Dense helpers for analysis and tests: optimal Kronecker approximation.
# ----------------------------------------------------------------------------


def gradient_covariance(grads: jax.Array) -> jax.Array:
  """H = E[vec(G) vec(G)^T] from samples (S, m, n), row-major vec."""
  flat = grads.reshape(grads.shape[0], -1)
  return flat.T @ flat / grads.shape[0]


def shampoo_factors(grads: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """L = E[G G^T], R = E[G^T G] from samples (S, m, n)."""
  s = grads.shape[0]
  return (jnp.einsum("sij,skj->ik", grads, grads) / s,
          jnp.einsum("sji,sjk->ik", grads, grads) / s)


def power_iteration_factors(grads: jax.Array, num_iters: int = 10,
                            left: Optional[jax.Array] = None,
                            right: Optional[jax.Array] = None
                            ) -> Tuple[jax.Array, jax.Array]:
  """Optimal Kronecker factors of H from gradient samples (S, m, n).

  Alternates A <- E[G B~ G^T], B <- E[G^T A~ G] with F~ = F / (tr F / dim),
  starting from identities (one iteration gives L and G^T L~ G). Returns
  (A, B) with B = E[G^T A~ G]; A (x) B / (tr(A)/m) approximates H with the
  optimal direction. Use `kronecker_fit` for the scale and the error.
  """
  m, n = grads.shape[1:]
  b = jnp.eye(n) if right is None else right
  a = jnp.eye(m) if left is None else left
  s = grads.shape[0]

  def body(_, ab):
    a, b = ab
    a = jnp.einsum("sij,jk,slk->il", grads, normalise_factor(b), grads) / s
    b = jnp.einsum("sji,jk,skl->il", grads, normalise_factor(a), grads) / s
    return a, b

  return jax.lax.fori_loop(0, num_iters, body, (a.astype(grads.dtype),
                                                b.astype(grads.dtype)))


def kronecker_fit(h: jax.Array, a: jax.Array, b: jax.Array
                  ) -> Tuple[jax.Array, jax.Array]:
  """Best scale s and relative Frobenius error of s (a (x) b) against h.

  Uses <h, a (x) b> = tr-free contraction without forming the Kronecker
  product: h is viewed as (m, n, m, n) with h[i, j, k, l] ~ a[i, k] b[j, l].
  """
  m, n = a.shape[0], b.shape[0]
  h4 = h.reshape(m, n, m, n)
  inner = jnp.einsum("ijkl,ik,jl->", h4, a, b)
  kk = jnp.sum(a * a) * jnp.sum(b * b)
  scale = inner / kk
  err2 = jnp.sum(h * h) - inner ** 2 / kk
  return scale, jnp.sqrt(jnp.maximum(err2, 0.0) / jnp.sum(h * h))


def optimal_kronecker_approximation(h: jax.Array, m: int, n: int,
                                    num_iters: int = 50
                                    ) -> Tuple[jax.Array, jax.Array]:
  """Frobenius-optimal A (x) B ~ h (mn x mn) by power iteration (Van Loan).

  Works on the rearrangement R(h) (m^2 x n^2) whose top singular pair gives
  vec(A), vec(B); returns (A, B) with ||B||_F = 1 and the scale in A.
  """
  r = h.reshape(m, n, m, n).transpose(0, 2, 1, 3).reshape(m * m, n * n)
  b = jnp.eye(n, dtype=h.dtype).reshape(-1)

  def body(_, b):
    b = r.T @ (r @ b)
    return b / jnp.linalg.norm(b)

  b = jax.lax.fori_loop(0, num_iters, body, b / jnp.linalg.norm(b))
  a = r @ b
  return a.reshape(m, m), b.reshape(n, n)


# ----------------------------------------------------------------------------
# Implicit (sample-based) Kronecker fits: H is never formed.
#
# For samples G_1..G_S (m x n) and H = (1/S) sum_i vec(G_i) vec(G_i)^T:
#
#   <H, A (x) B>_F = (1/S) sum_i tr(G_i^T A G_i B^T) = <E[G^T A G], B>_F,
#   ||A (x) B||_F  = ||A||_F ||B||_F,
#   ||H||_F^2      = (1/S^2) sum_{i,j} <G_i, G_j>^2,
#
# and the Van Loan rearrangement R(H) = (1/S) sum_i G_i (x) G_i (m^2 x n^2)
# acts as R(H) vec(B) = vec(E[G B G^T]), R(H)^T vec(A) = vec(E[G^T A G]).
# ----------------------------------------------------------------------------


class GradientSamples(NamedTuple):
  """Samples G_1..G_S (m x n) in the two layouts that make E[G B G^T] and
  E[G^T A G] two plain GEMMs each (no per-call transposes):

    left[i, s, j] = G_s[i, j]   (m, S, n),
    right[j, s, i] = G_s[i, j]  (n, S, m).
  """
  left: jax.Array
  right: jax.Array

  @property
  def num(self) -> int:
    return self.left.shape[1]


def gradient_samples(grads: jax.Array) -> GradientSamples:
  """GradientSamples from stacked samples (S, m, n)."""
  return GradientSamples(jnp.transpose(grads, (1, 0, 2)), jnp.transpose(grads, (2, 0, 1)))


def _samples(x) -> GradientSamples:
  return x if isinstance(x, GradientSamples) else gradient_samples(x)


def contract_left(samples, b: jax.Array) -> jax.Array:
  """E[G B G^T] (m x m) = R(H) vec(B) for any n x n B; samples: (S, m, n) or GradientSamples."""
  g = _samples(samples).left
  m, s, n = g.shape
  gb = jnp.matmul(g.reshape(m * s, n), b.astype(g.dtype), precision=_HI)
  return jnp.matmul(gb.reshape(m, s * n), g.reshape(m, s * n).T, precision=_HI) / s


def contract_right(samples, a: jax.Array) -> jax.Array:
  """E[G^T A G] (n x n) = R(H)^T vec(A) for any m x m A."""
  g = _samples(samples).right
  n, s, m = g.shape
  ga = jnp.matmul(g.reshape(n * s, m), a.astype(g.dtype), precision=_HI)
  return jnp.matmul(ga.reshape(n, s * m), g.reshape(n, s * m).T, precision=_HI) / s


class KroneckerFit(NamedTuple):
  """How well s (A (x) B) matches H (Frobenius).

  scale: the best s = <H, A (x) B> / ||A (x) B||^2.
  rel_error: ||H - s A (x) B|| / ||H|| at that s (= sqrt(1 - cosine^2)).
  cosine: <H, A (x) B> / (||H|| ||A (x) B||).
  """
  scale: jax.Array
  rel_error: jax.Array
  cosine: jax.Array


def van_loan_rearrange(h: jax.Array, m: int, n: int) -> jax.Array:
  """R(H) (m^2 x n^2) with R(A (x) B) = vec(A) vec(B)^T (row-major vec).

  ||H - A (x) B||_F = ||R(H) - vec(A) vec(B)^T||_F, so the optimal Kronecker
  approximation is the top singular pair of R(H) (Van Loan & Pitsianis 1993).
  """
  return h.reshape(m, n, m, n).transpose(0, 2, 1, 3).reshape(m * m, n * n)


def kronecker_inner_from_samples(samples, a: jax.Array, b: jax.Array) -> jax.Array:
  """<H, A (x) B>_F = (1/S) sum_i tr(G_i^T A G_i B^T) = <E[G^T A G], B>_F."""
  return jnp.sum(contract_right(samples, a) * b)


def covariance_sq_norm_from_samples(samples, unbiased: bool = False) -> jax.Array:
  """||H||_F^2 through the Gram matrix K_ij = <G_i, G_j>.

  unbiased=False: (1/S^2) sum_{i,j} K_ij^2, exactly ||H_S||^2 of the sample
  matrix H_S. unbiased=True: mean over i != j of K_ij^2, an unbiased estimate
  of ||E[vec G vec G^T]||^2 for i.i.d. samples (the i = j terms carry the
  sampling noise of H_S; needs S >= 2).
  """
  g = _samples(samples).left
  s = g.shape[1]
  flat = jnp.transpose(g, (1, 0, 2)).reshape(s, -1)
  k = jnp.matmul(flat, flat.T, precision=_HI)
  total = jnp.sum(k * k)
  if not unbiased:
    return total / (s * s)
  return (total - jnp.sum(jnp.diagonal(k) ** 2)) / (s * (s - 1))


def kronecker_fit_from_samples(samples, a: jax.Array, b: jax.Array,
                               h_sq_norm: Optional[jax.Array] = None,
                               unbiased: bool = False) -> KroneckerFit:
  """`kronecker_fit` without forming H: best scale, error and cosine of A (x) B.

  h_sq_norm: ||H||_F^2 if already known (else from
  `covariance_sq_norm_from_samples(samples, unbiased)`). With unbiased=True
  and A, B independent of the samples, the inner product and the norm are
  unbiased estimates for the population H (the cosine is then a ratio
  estimate and may slightly exceed 1).
  """
  if h_sq_norm is None:
    h_sq_norm = covariance_sq_norm_from_samples(samples, unbiased)
  inner = kronecker_inner_from_samples(samples, a, b)
  kk = jnp.sum(a * a) * jnp.sum(b * b)
  denom = jnp.maximum(h_sq_norm * kk, 1e-30)
  cosine = inner / jnp.sqrt(denom)
  err2 = 1.0 - inner ** 2 / denom
  return KroneckerFit(inner / kk, jnp.sqrt(jnp.maximum(err2, 0.0)), cosine)


def power_iteration_samples(samples, num_iters: int, right: jax.Array
                            ) -> Tuple[jax.Array, jax.Array]:
  """`power_iteration_factors` on GradientSamples (same iteration, GEMM layout).

  Alternates A <- E[G B~ G^T], B <- E[G^T A~ G] starting from B = right.
  """
  samples = _samples(samples)
  m = samples.left.shape[0]

  def body(_, ab):
    _, b = ab
    a = contract_left(samples, normalise_factor(b))
    return a, contract_right(samples, normalise_factor(a))

  a0 = jnp.zeros((m, m), samples.left.dtype)
  return jax.lax.fori_loop(0, num_iters, body, (a0, right.astype(samples.left.dtype)))


def simultaneous_power_iteration(samples, num_iters: int = 1,
                                 init: Optional[Tuple[jax.Array, jax.Array]] = None
                                 ) -> Tuple[jax.Array, jax.Array]:
  """k steps of the two-sided power iteration from identities, both sides at once.

      A_k = E[G B~_{k-1} G^T],   B_k = E[G^T A~_{k-1} G],   A_0 = I, B_0 = I,

  (F~ = F / (tr F / dim)). One step gives Shampoo's factors (L, R) exactly,
  so L (x) R ("Shampoo^2") is one round of power iteration on R(H); more
  steps converge to the optimal Kronecker factors (A_k and B_k each follow
  the power iteration on R R^T resp. R^T R, advancing every second step).
  init: (A_0, B_0) to continue from instead of identities.
  """
  samples = _samples(samples)
  m, n = samples.left.shape[0], samples.right.shape[0]
  dt = samples.left.dtype
  if init is None:
    init = (jnp.eye(m, dtype=dt), jnp.eye(n, dtype=dt))

  def body(_, ab):
    a, b = ab
    return (contract_left(samples, normalise_factor(b)),
            contract_right(samples, normalise_factor(a)))

  return jax.lax.fori_loop(0, num_iters, body, init)
