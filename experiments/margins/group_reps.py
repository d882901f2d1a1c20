"""Real irreducible representations of a finite group, computed numerically.

Nothing is tabulated: the representations come from the regular
representation of the group's multiplication table.

1. Isotypic components. Functions on G carry the left and right regular
   actions (L_g e_h = e_{gh}, R_g e_h = e_{h g^-1}). A generic symmetric
   element of the centre of the group algebra,
       Z = sum_C r_C sum_{g in C} (L_g + L_g^T),   r_C random,
   acts on each real isotypic component by a scalar (2 r . Re omega_rho), so
   the eigenspaces of Z are exactly the real isotypic components V_rho (a
   complex-type pair rho, conj(rho) merges into one real component).
2. One irreducible copy. A generic symmetric element H of the right action
   restricted to V_rho commutes with every L_g, so its eigenspaces are
   L-invariant; for generic H they are irreducible. With an orthonormal basis
   B (|G| x d) of one eigenspace, rho(g) = B^T L_g B is a real orthogonal
   irreducible representation.
3. Type. kappa = <chi, chi> = dim_R End_G(rho) is 1 (real type), 2 (complex
   type) or 4 (quaternionic type), and dim V_rho = d^2 / kappa.

This is simultaneous block-diagonalisation of the regular representation by
random central / commutant elements; everything is checked (homomorphism,
orthogonality, dimension count sum d^2/kappa = |G|) before it is returned.
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence

import numpy as np

from data_pipelines.algebraic_tasks import FiniteGroup


class RealIrrep(NamedTuple):
  """A real irreducible representation rho of G.

  matrices: (|G|, d, d) orthogonal, matrices[g] = rho(g).
  character: (|G|,) real trace of rho(g).
  kappa: dim of the commutant (1 real, 2 complex, 4 quaternionic type).
  isotypic_basis: (|G|, d^2/kappa) orthonormal basis of the functions on G
    whose Fourier transform lives on rho (the real isotypic component).
  """
  dim: int
  kappa: int
  matrices: np.ndarray
  character: np.ndarray
  isotypic_basis: np.ndarray

  @property
  def is_trivial(self) -> bool:
    return self.dim == 1 and bool(np.allclose(self.character, 1.0))

  @property
  def label(self) -> str:
    kind = {1: "", 2: "c", 4: "h"}[self.kappa]
    sign = "triv" if self.is_trivial else ""
    return sign or f"d{self.dim}{kind}"


def conjugacy_classes(group: FiniteGroup) -> List[np.ndarray]:
  """Conjugacy classes as sorted index arrays; the identity's class first."""
  n = group.order
  seen = np.full(n, -1)
  classes = []
  for x in [group.identity] + [i for i in range(n) if i != group.identity]:
    if seen[x] >= 0:
      continue
    conj = np.unique(group.table[group.table[:, x], group.inverse])
    seen[conj] = len(classes)
    classes.append(conj)
  return classes


def left_regular(group: FiniteGroup) -> np.ndarray:
  """(|G|, |G|, |G|) permutation matrices L_g with L_g e_h = e_{gh}."""
  n = group.order
  mats = np.zeros((n, n, n))
  for g in range(n):
    mats[g, group.table[g], np.arange(n)] = 1.0
  return mats


def right_regular(group: FiniteGroup) -> np.ndarray:
  """(|G|, |G|, |G|) permutation matrices R_g with R_g e_h = e_{h g^-1}."""
  n = group.order
  mats = np.zeros((n, n, n))
  for g in range(n):
    mats[g, group.table[:, group.inverse[g]], np.arange(n)] = 1.0
  return mats


def _clusters(values: np.ndarray, tol: float) -> List[np.ndarray]:
  order = np.argsort(values)
  groups, start = [], 0
  for i in range(1, len(order) + 1):
    if i == len(order) or values[order[i]] - values[order[i - 1]] > tol:
      groups.append(order[start:i])
      start = i
  return groups


def _random_symmetric(mats: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
  m = np.tensordot(coeffs, mats, axes=1)
  return m + m.T


def real_irreps(group: FiniteGroup, seed: int = 0,
                max_tries: int = 5) -> List[RealIrrep]:
  """All real irreducible representations of G (trivial first, then by dim)."""
  rng = np.random.default_rng(seed)
  n = group.order
  left = left_regular(group)
  right = right_regular(group)
  classes = conjugacy_classes(group)
  for _ in range(max_tries):
    coeffs = np.zeros(n)
    for cls in classes:
      coeffs[cls] = rng.normal()
    z = _random_symmetric(left, coeffs)
    vals, vecs = np.linalg.eigh(z)
    tol = 1e-7 * (1.0 + np.abs(vals).max())
    irreps = []
    ok = True
    for idx in _clusters(vals, tol):
      basis = vecs[:, idx]
      h = basis.T @ _random_symmetric(right, rng.normal(size=n)) @ basis
      hv, hvec = np.linalg.eigh(h)
      sub = _clusters(hv, 1e-7 * (1.0 + np.abs(hv).max()))
      d = len(sub[0])
      if any(len(s) != d for s in sub):
        ok = False
        break
      b = basis @ hvec[:, sub[0]]
      mats = np.einsum("ia,gij,jb->gab", b, left, b)
      chars = np.trace(mats, axis1=1, axis2=2)
      kappa = int(round(float(chars @ chars[group.inverse]) / n))
      if kappa not in (1, 2, 4) or d * d != basis.shape[1] * kappa:
        ok = False
        break
      irreps.append(RealIrrep(d, kappa, mats, chars, basis))
    if ok and sum(r.dim ** 2 // r.kappa for r in irreps) == n:
      irreps.sort(key=lambda r: (not r.is_trivial, r.dim, r.kappa,
                                 -float(r.character.sum())))
      _check(group, irreps)
      return irreps
  raise RuntimeError(f"could not decompose the regular rep of {group.name}")


def _check(group: FiniteGroup, irreps: Sequence[RealIrrep]) -> None:
  t = group.table
  for r in irreps:
    prod = np.einsum("aij,bjk->abik", r.matrices, r.matrices)
    if not np.allclose(prod, r.matrices[t], atol=1e-8):
      raise RuntimeError("computed representation is not a homomorphism")
    eye = np.einsum("gji,gjk->gik", r.matrices, r.matrices)
    if not np.allclose(eye, np.eye(r.dim), atol=1e-8):
      raise RuntimeError("computed representation is not orthogonal")


def class_characters(group: FiniteGroup,
                     irreps: Sequence[RealIrrep]) -> np.ndarray:
  """(num_irreps, num_classes) real characters evaluated on the classes."""
  classes = conjugacy_classes(group)
  return np.array([[r.character[c[0]] for c in classes] for r in irreps])


def isotypic_power(x: np.ndarray, irreps: Sequence[RealIrrep]) -> np.ndarray:
  """||P_rho x||^2 for vectors x (..., |G|) -> (..., num_irreps).

  The powers sum to ||x||^2 because the isotypic components are orthogonal
  and span R^G.
  """
  x = np.asarray(x, dtype=np.float64)
  return np.stack([np.sum((x @ r.isotypic_basis) ** 2, axis=-1)
                   for r in irreps], axis=-1)


def neuron_irrep_power(params, irreps: Sequence[RealIrrep]) -> np.ndarray:
  """Per-neuron power in each irrep, pooled over u, v and w: (m, num_irreps)."""
  return sum(isotypic_power(np.asarray(params[k]), irreps)
             for k in ("u", "v", "w"))


def neuron_irrep_shares(params, irreps: Sequence[RealIrrep]):
  """Share of each neuron's weights in its dominant single irrep.

  Returns (share (m,), dominant irrep index (m,)), with
  share_i = max_rho sum_{x in u,v,w} ||P_rho x_i||^2 / ||theta_i||^2.
  """
  power = neuron_irrep_power(params, irreps)
  total = power.sum(axis=1)
  share = power.max(axis=1) / np.maximum(total, 1e-30)
  return share, power.argmax(axis=1)
