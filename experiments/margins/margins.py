"""Normalised margins, their theoretical maxima, and max-margin constructions.

Morwani et al. (ICLR 2024), "Feature emergence via margin maximization".

Margin of a network on a dataset D (multi-class):
    gamma(theta) = min_{(x, y) in D} ( f(theta; x)[y] - max_{y' != y} f(theta; x)[y'] ).
For a network that is nu-homogeneous neuron by neuron, the normalised margin
is gamma(theta) / ||theta||_{2,nu}^nu with the L_{2,nu} norm
    ||theta||_{2,nu} = ( sum_i ||theta_i||_2^nu )^(1/nu),
theta_i = all weights of neuron i ((u_i, v_i, w_i) or (u_i, w_i)). It is
invariant to rescaling theta and to moving norm between neurons' layers only
through the per-neuron Euclidean norm. nu = 3 for the quadratic two-input
nets, k + 1 for the x^k parity nets.

Theoretical maxima (max over theta of the normalised margin):
* modular addition mod p (p odd), quadratic net:
      gamma* = sqrt(2/27) / ( sqrt(p) (p - 1) ).
* (n, k) sparse parity, x^k net with two logits:
      gamma* = k! sqrt( 2 (k+1)^-(k+1) ).
* composition in a finite group G, quadratic net. Derived in the paper's
  framework (single-neuron optimisation against a symmetric dual
  distribution q; q is uniform over inputs and puts a class-function weight
  tau(t) on the wrong label ab.t, t != e):
      gamma* = 2 / (3 sqrt(3) |G|^{3/2}) * min_tau max_{rho != 1} lambda_rho(tau) / sqrt(d_rho),
      lambda_rho(tau) = 1 - sum_t tau(t) chi_rho(t) / d_rho,
  over real irreducible representations rho (dimension d_rho, real character
  chi_rho). This is a small linear programme (`group_max_margin_lp`).
  Because sum_{rho != 1} (d_rho^2 / kappa_rho) lambda_rho = |G| for every tau
  (kappa_rho = 1, 2, 4 for real / complex / quaternionic type), its value is
  at least the closed form
      gamma*_closed = 2 / ( 3 sqrt(3 |G|) sum_{rho != 1} d_rho^{2.5} / kappa_rho ),
  with equality exactly when the equalising tau, proportional to
  -sum_{rho != 1} d_rho^{1.5} chi_rho(t) / kappa_rho, is non-negative (the
  paper's condition on the characters). For groups whose irreps are all of
  real type (S_n, D_n) this is the paper's 2 / (3 sqrt(3|G|) sum_{n>=2}
  d_n^{2.5}); for the cyclic group (all non-trivial real irreps of complex
  type, d = 2, kappa = 2) it reduces to the modular-addition value.

Constructions (networks attaining gamma* exactly, from the proofs):
* `modular_addition_construction`: for every frequency j = 1..(p-1)/2 and
  phases (phi_u, phi_v) on a 3 x 3 grid of multiples of 2 pi / 3, a neuron
      u(a) = cos(phi_u + w_j a), v(b) = cos(phi_v + w_j b),
      w(c) = cos(phi_u + phi_v + w_j c),  w_j = 2 pi j / p.
  Averaging over the grid cancels every term except (1/4) cos(w_j (a+b-c))
  (the grid kills every phase combination m phi_u + n phi_v with 3 not
  dividing both m and n), so f(a, b)[c] ~ sum_j cos(w_j (a + b - c)).
* `parity_construction`: one neuron per sign vector s in {+-1}^k,
  u_s = a s / sqrt(k) on S (zero elsewhere), w_s = b prod(s) (1, -1) / sqrt(2)
  with a^2 = k / (k+1), b^2 = 1 / (k+1) (unit norm, optimal layer balance).
  Summing over s leaves only the monomial prod_{i in S} x_i (coefficient
  2^k k! (a / sqrt(k))^k b), so f[0] - f[1] = y * const for every x.
* `group_construction`: for each non-trivial real irrep rho and orthonormal
  basis indices (x, y, z), neurons u(a) = rho(a)[x, y], v(b) = rho(b)[y, z],
  w(c) = +-rho(c)[x, z] (the +- pair cancels the square terms), so that
  sum_i u v w = chi_rho(a b c^-1); irreps weighted by d_rho / kappa_rho make
  f(a, b)[c] proportional to |G| [c = ab] - 1.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np
from scipy import optimize

from data_pipelines.algebraic_tasks import FiniteGroup
from experiments.margins import group_reps
from models import algebraic_nets

# Per-example f[y] - max_{y' != y} f[y'], (N,) (the models' accuracy uses it).
margins = algebraic_nets.margins
# ||theta||_{2,nu}^nu = sum_i ||theta_i||_2^nu (neuron axis first).
l2nu_norm_pow = algebraic_nets.l2nu_penalty


def normalized_margin(model, params, inputs, labels):
  """min margin / ||theta||_{2,nu}^nu with nu = model.homogeneity."""
  logits = model.apply(params, jnp.asarray(inputs))
  return jnp.min(margins(logits, labels)) / l2nu_norm_pow(
      params, model.homogeneity)


# --------------------------------------------------------------------------
# Theoretical maxima.


def max_margin_modular_addition(p: int) -> float:
  """sqrt(2/27) / (sqrt(p) (p - 1)) for the quadratic net, p odd."""
  if p % 2 == 0:
    raise ValueError(f"p={p} is even: sqrt(2/27) / (sqrt(p) (p - 1)) is the max "
                     "margin for odd p only")
  return math.sqrt(2.0 / 27.0) / (math.sqrt(p) * (p - 1))


def max_margin_parity(k: int) -> float:
  """k! sqrt(2 (k+1)^-(k+1)) for the x^k net on (n, k)-parity."""
  return math.factorial(k) * math.sqrt(2.0 * (k + 1.0) ** (-(k + 1.0)))


def group_max_margin_closed_form(group: FiniteGroup,
                                 irreps: Optional[Sequence] = None) -> float:
  """2 / (3 sqrt(3|G|) sum_{rho != 1} d^{2.5} / kappa) (see module doc)."""
  irreps = irreps or group_reps.real_irreps(group)
  s = sum(r.dim ** 2.5 / r.kappa for r in irreps if not r.is_trivial)
  return 2.0 / (3.0 * math.sqrt(3.0 * group.order) * s)


def group_equalizing_tau(group: FiniteGroup,
                         irreps: Optional[Sequence] = None) -> np.ndarray:
  """Per-element tau(t) proportional to -sum_{rho!=1} d^{1.5} chi(t)/kappa.

  Normalised to sum 1 over t != e (tau(e) = 0). Non-negative iff the closed
  form is the maximum margin.
  """
  irreps = irreps or group_reps.real_irreps(group)
  tau = -sum(r.dim ** 1.5 * r.character / r.kappa
             for r in irreps if not r.is_trivial)
  tau[group.identity] = 0.0
  return tau / tau.sum()


def group_max_margin_lp(group: FiniteGroup,
                        irreps: Optional[Sequence] = None) -> float:
  """gamma* = 2/(3 sqrt3 |G|^1.5) min_tau max_rho lambda_rho(tau)/sqrt(d_rho).

  tau ranges over probability weights on the non-identity conjugacy classes.
  """
  irreps = irreps or group_reps.real_irreps(group)
  classes = group_reps.conjugacy_classes(group)[1:]  # drop {e}
  nontrivial = [r for r in irreps if not r.is_trivial]
  # Variables: tau_C (mass of class C) and t. Minimise t subject to
  # (1 - sum_C tau_C chi(C)/d)/sqrt(d) <= t, sum tau = 1, tau >= 0.
  nc = len(classes)
  c = np.zeros(nc + 1)
  c[-1] = 1.0
  a_ub, b_ub = [], []
  for r in nontrivial:
    row = np.zeros(nc + 1)
    row[:nc] = -np.array([r.character[cl[0]] for cl in classes]) / (
        r.dim * math.sqrt(r.dim))
    row[-1] = -1.0
    a_ub.append(row)
    b_ub.append(-1.0 / math.sqrt(r.dim))
  a_eq = np.concatenate([np.ones(nc), [0.0]])[None]
  res = optimize.linprog(c, A_ub=np.array(a_ub), b_ub=np.array(b_ub),
                         A_eq=a_eq, b_eq=[1.0],
                         bounds=[(0, None)] * nc + [(None, None)],
                         method="highs")
  if not res.success:
    raise RuntimeError(f"margin LP failed: {res.message}")
  return 2.0 * res.fun / (3.0 * math.sqrt(3.0) * group.order ** 1.5)


def max_margin_group(group: FiniteGroup,
                     irreps: Optional[Sequence] = None) -> float:
  """Maximum L_{2,3} normalised margin of the quadratic net on G (the LP)."""
  return group_max_margin_lp(group, irreps)


# --------------------------------------------------------------------------
# Constructions from the proofs.


def modular_addition_construction(p: int, phases: int = 3) -> dict:
  """A quadratic net with normalised margin exactly max_margin_modular_addition(p).

  `phases` x `phases` phase grid per frequency (any phases >= 3 cancels all
  unwanted terms); width = phases^2 (p - 1) / 2.
  """
  a = np.arange(p)
  grid = 2 * np.pi * np.arange(phases) / phases
  us, vs, ws = [], [], []
  for j in range(1, (p - 1) // 2 + 1):
    om = 2 * np.pi * j / p
    for pu in grid:
      for pv in grid:
        us.append(np.cos(pu + om * a))
        vs.append(np.cos(pv + om * a))
        ws.append(np.cos(pu + pv + om * a))
  return {"u": np.array(us), "v": np.array(vs), "w": np.array(ws)}


def parity_construction(n: int, k: int,
                        support: Optional[Sequence[int]] = None) -> dict:
  """An x^k net with normalised margin exactly max_margin_parity(k).

  Neuron s in {+-1}^k: u_s = sqrt(k/(k+1)) s / sqrt(k) on S (zero elsewhere),
  w_s = sqrt(1/(k+1)) prod(s) (1, -1) / sqrt(2): ||theta_s|| = 1 with the
  optimal layer balance ||u|| : ||w|| = sqrt(k) : 1. Summed over s, only the
  monomial prod_{i in S} x_i survives, with coefficient k! 2^k.
  """
  support = np.arange(k) if support is None else np.asarray(support)
  signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
  u = np.zeros((2 ** k, n))
  u[:, support] = signs / math.sqrt(k) * math.sqrt(k / (k + 1.0))
  w = np.prod(signs, axis=1)[:, None] * np.array([1.0, -1.0]) / math.sqrt(2)
  w = w * math.sqrt(1.0 / (k + 1.0))
  return {"u": u, "w": w}


def group_construction(group: FiniteGroup,
                       irreps: Optional[Sequence] = None) -> dict:
  """A quadratic net with f(a, b)[c] = |G| [c = ab] - 1 (margin |G|).

  Its normalised margin equals group_max_margin_closed_form(G).
  """
  irreps = irreps or group_reps.real_irreps(group)
  us, vs, ws = [], [], []
  for r in irreps:
    if r.is_trivial:
      continue
    d = r.dim
    # Each (x, y, z) pair of +-neurons contributes 4 s^3 rho(a)[x,y]
    # rho(b)[y,z] rho(c)[x,z]; summed over x,y,z that is 4 s^3 chi(a b c^-1).
    scale = (d / (4.0 * r.kappa)) ** (1.0 / 3.0)
    m = r.matrices
    for x in range(d):
      for y in range(d):
        for z in range(d):
          for sign in (1.0, -1.0):
            us.append(scale * m[:, x, y])
            vs.append(sign * scale * m[:, y, z])
            ws.append(sign * scale * m[:, x, z])
  return {"u": np.array(us), "v": np.array(vs), "w": np.array(ws)}
