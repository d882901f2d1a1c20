"""Kronecker-factored curvature: factor statistics, blocking, matrix roots.

Shared by `optimizers.shampoo` and `optimizers.soap` (the analysis of how well
these factors approximate the optimal Kronecker approximation lives in
`experiments/kronecker`). Every function here is pure (arrays in, arrays out)
and imports only jax and numpy.

Notation (Morwani et al. 2024, "A New Perspective on Shampoo's Preconditioner")
---------------------------------------------------------------------------
A matrix parameter W (m x n) has gradient G. We use the row-major vec, so
`(A (x) B) vec(G) = vec(A G B^T)` with `vec = ravel`. The gradient second
moment is H = E[vec(G) vec(G)^T] (mn x mn). Its optimal Kronecker
approximation A (x) B (in Frobenius norm) is the top singular pair of the
rearranged H, found by the power iteration

    A <- E[G B G^T],   B <- E[G^T A G]   (then normalise one factor).

One step from B = I (resp. A = I) gives Shampoo's factors

    L = E[G G^T],   R = E[G^T G],

and L (x) R / tr(H) approximates H (note tr(L) = tr(R) = tr(H)). So the
product of Shampoo's factors approximates H, not H^{1/2}:

  * classic Shampoo  L^{-1/4} G R^{-1/4}  ~  H^{-1/4} vec(G),
  * "Shampoo^2"      L^{-1/2} G R^{-1/2}  ~  H^{-1/2} vec(G)  (Adagrad/Adam's
    power of H),
  * Newton-style     L^{-1}   G R^{-1}    ~  H^{-1}   vec(G).

For an order-k tensor with factors F_1..F_k (F_i = E[G_(i) G_(i)^T], G_(i) the
mode-i unfolding), (x)_i F_i / tr(H)^{k-1} approximates H, so Shampoo^2 uses
-1/2 per factor and classic Shampoo -1/(2k).

The online power iteration used by Shampoo's `factor_update="power"` replaces
the identity by the other side's current normalised factor:

    L <- b L + (1-b) G R~ G^T,   R <- b R + (1-b) G^T L~ G,
    F~ = F / (tr(F) / dim(F))    (F~ = I when tr(F) = 0, e.g. at init),

so that with R~ = L~ = I it is exactly Shampoo^2's update of L and R.

Blocking
--------
Tensors are first reshaped (`merge_small_dims`) and then cut into a grid of
equal blocks of at most `block_size` per axis; the last block of an axis that
is not divisible is zero padded. Zero padding is exact: padded rows/columns of
a block's gradient are zero, so its factors are block diagonal between the
real and the padded part and the preconditioned real part is unchanged (up
to the epsilon, which is relative to the largest eigenvalue either way).
Blocks are stacked on a leading axis, (num_blocks, b_1, ..., b_k), so every
per-block operation below is one batched GEMM / eigh.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# ----------------------------------------------------------------------------
# Layout: merging, blocking.
# ----------------------------------------------------------------------------


class BlockLayout(NamedTuple):
  """Static description of how a tensor is cut into stacked blocks.

  Attributes:
    shape: the original shape.
    merged_shape: shape after dropping size-1 axes and merging small axes.
    block_shape: block size per merged axis.
    grid: number of blocks per merged axis.
    preconditioned: per merged axis, whether it gets a Kronecker factor
      (False: identity factor, i.e. no preconditioning along that axis).
  """
  shape: Tuple[int, ...]
  merged_shape: Tuple[int, ...]
  block_shape: Tuple[int, ...]
  grid: Tuple[int, ...]
  preconditioned: Tuple[bool, ...]

  @property
  def num_blocks(self) -> int:
    return int(np.prod(self.grid, dtype=np.int64)) if self.grid else 1

  @property
  def padded_shape(self) -> Tuple[int, ...]:
    return tuple(g * b for g, b in zip(self.grid, self.block_shape))

  @property
  def stacked_shape(self) -> Tuple[int, ...]:
    return (self.num_blocks,) + tuple(self.block_shape)

  @property
  def is_diagonal(self) -> bool:
    """True when no axis is preconditioned (diagonal fallback)."""
    return not any(self.preconditioned)

  @property
  def order(self) -> int:
    """Number of preconditioned axes (k in the exponent -1/(2k))."""
    return sum(self.preconditioned)


def merge_small_dims(shape: Sequence[int], max_dim: Optional[int]) -> Tuple[int, ...]:
  """Drops size-1 axes and merges consecutive axes while the product <= max_dim.

  E.g. (3, 3, 64, 128) with max_dim=1024 -> (576, 128). A tensor with two or
  more axes keeps at least two: (6, 5) stays (6, 5), (3, 4, 5) -> (12, 5).
  `max_dim=None` only drops size-1 axes. A scalar or all-ones shape gives ().
  """
  dims = [int(d) for d in shape if int(d) != 1]
  if not dims or max_dim is None:
    return tuple(dims)
  merged = [dims[0]]
  for d in dims[1:]:
    if merged[-1] * d <= max_dim:
      merged[-1] *= d
    else:
      merged.append(d)
  if len(merged) == 1 and len(dims) > 1:
    # Never turn a matrix or tensor into a vector: keep the last axis apart.
    merged = [int(np.prod(dims[:-1])), dims[-1]]
  return tuple(merged)


def block_layout(shape: Sequence[int], *, block_size: Optional[int] = None,
                 merge_dims: Optional[int] = None,
                 max_precond_dim: Optional[int] = None,
                 precondition_1d: bool = False,
                 precondition: bool = True) -> BlockLayout:
  """Plans merging, blocking and which axes get factors for one tensor.

  Args:
    shape: tensor shape.
    block_size: axes longer than this are cut into blocks of this size
      (zero padded at the end); None: no blocking.
    merge_dims: merge consecutive axes while their product stays <= this.
    max_precond_dim: axes (after blocking) longer than this get no factor.
    precondition_1d: whether vectors get a (full-matrix) factor.
    precondition: False forces the diagonal fallback.

  Returns:
    A `BlockLayout`; `layout.is_diagonal` says to use the diagonal fallback.
  """
  shape = tuple(int(d) for d in shape)
  merged = merge_small_dims(shape, merge_dims)
  diagonal = (not precondition or not merged
              or (len(merged) == 1 and not precondition_1d))
  if diagonal:
    return BlockLayout(shape, merged, merged, (1,) * len(merged),
                       (False,) * len(merged))
  block_shape, grid, pre = [], [], []
  for d in merged:
    b = d if block_size is None else min(d, int(block_size))
    p = max_precond_dim is None or b <= max_precond_dim
    if not p:  # no factor along this axis: no need to block it either
      b = d
    block_shape.append(b)
    grid.append(-(-d // b))
    pre.append(p)
  return BlockLayout(shape, merged, tuple(block_shape), tuple(grid), tuple(pre))


def to_blocks(x: jax.Array, layout: BlockLayout) -> jax.Array:
  """Reshapes x (layout.shape) to stacked blocks (num_blocks, *block_shape)."""
  if layout.num_blocks == 1 and layout.padded_shape == layout.merged_shape:
    return x.reshape(layout.stacked_shape)
  x = x.reshape(layout.merged_shape)
  pads = [(0, p - d) for p, d in zip(layout.padded_shape, layout.merged_shape)]
  if any(hi for _, hi in pads):
    x = jnp.pad(x, pads)
  k = len(layout.merged_shape)
  split = []
  for g, b in zip(layout.grid, layout.block_shape):
    split += [g, b]
  x = x.reshape(split)
  x = x.transpose(tuple(range(0, 2 * k, 2)) + tuple(range(1, 2 * k, 2)))
  return x.reshape(layout.stacked_shape)


def from_blocks(blocks: jax.Array, layout: BlockLayout) -> jax.Array:
  """Inverse of `to_blocks` (drops the padding)."""
  if layout.num_blocks == 1 and layout.padded_shape == layout.merged_shape:
    return blocks.reshape(layout.shape)
  k = len(layout.merged_shape)
  x = blocks.reshape(tuple(layout.grid) + tuple(layout.block_shape))
  perm = []
  for i in range(k):
    perm += [i, k + i]
  x = x.transpose(perm).reshape(layout.padded_shape)
  if layout.padded_shape != layout.merged_shape:
    x = x[tuple(slice(0, d) for d in layout.merged_shape)]
  return x.reshape(layout.shape)


# ----------------------------------------------------------------------------
# Factor statistics and mode products on stacked blocks.
# ----------------------------------------------------------------------------


_HI = jax.lax.Precision.HIGHEST


def _unfold(x: jax.Array, axis: int) -> jax.Array:
  """(N, b_1..b_k) -> (N, b_axis, prod(other b)); axis counts from 0 over b."""
  x = jnp.moveaxis(x, axis + 1, 1)
  return x.reshape(x.shape[0], x.shape[1], -1)


def _gram(x: jax.Array, axis: int) -> jax.Array:
  """G_(axis) G_(axis)^T per block, (N, b_axis, b_axis)."""
  if x.ndim == 3:  # matrices: no transposes
    spec = "nij,nkj->nik" if axis == 0 else "nji,njk->nik"
    return jnp.einsum(spec, x, x, precision=_HI)
  u = _unfold(x, axis)
  return jnp.matmul(u, jnp.swapaxes(u, -1, -2), precision=_HI)


def _cross(y: jax.Array, x: jax.Array, axis: int) -> jax.Array:
  """Y_(axis) X_(axis)^T per block."""
  if x.ndim == 3:
    spec = "nij,nkj->nik" if axis == 0 else "nji,njk->nik"
    return jnp.einsum(spec, y, x, precision=_HI)
  return jnp.matmul(_unfold(y, axis), jnp.swapaxes(_unfold(x, axis), -1, -2),
                    precision=_HI)


def mode_product(x: jax.Array, mats: Sequence[Optional[jax.Array]],
                 transpose: bool = False) -> jax.Array:
  """x x_1 M_1 x_2 M_2 ... on stacked blocks: Y[.., a, ..] = sum_c M[a, c] X[.., c, ..].

  Args:
    x: (N, b_1, ..., b_k).
    mats: per axis a (N, b_i, b_i) matrix or None (identity).
    transpose: use M^T instead of M (e.g. to rotate into an eigenbasis).

  For a matrix block, mode_product(G, [A, B]) = A G B^T, i.e. (A (x) B) vec(G).
  """
  for axis, m in enumerate(mats):
    if m is None:
      continue
    m = m.astype(x.dtype)
    if axis == 0:  # contract the first block axis: M x, no transposes
      mm = jnp.swapaxes(m, -1, -2) if transpose else m
      x = jnp.matmul(mm, x.reshape(x.shape[0], x.shape[1], -1),
                     precision=_HI).reshape(x.shape)
      continue
    if axis == x.ndim - 2:  # the last block axis: x M^T
      mt = m if transpose else jnp.swapaxes(m, -1, -2)
      x = jnp.matmul(x.reshape(x.shape[0], -1, x.shape[-1]), mt,
                     precision=_HI).reshape(x.shape)
      continue
    xt = jnp.moveaxis(x, axis + 1, -1)
    shp = xt.shape
    flat = xt.reshape(shp[0], -1, shp[-1])
    mt = m if transpose else jnp.swapaxes(m, -1, -2)
    flat = jnp.matmul(flat, mt.astype(flat.dtype),
                      precision=jax.lax.Precision.HIGHEST)
    x = jnp.moveaxis(flat.reshape(shp), -1, axis + 1)
  return x


def factor_statistics(x: jax.Array, preconditioned: Sequence[bool]
                      ) -> Tuple[Optional[jax.Array], ...]:
  """Per-axis G_(i) G_(i)^T for stacked blocks x: for a matrix (G G^T, G^T G)."""
  return tuple(_gram(x, axis) if p else None
               for axis, p in enumerate(preconditioned))


def power_factor_statistics(x: jax.Array,
                            normalised: Sequence[Optional[jax.Array]]
                            ) -> Tuple[Optional[jax.Array], ...]:
  """One power-iteration step per axis: F_i = G_(i) ((x)_{j!=i} F~_j) G_(i)^T.

  For a matrix: (G R~ G^T, G^T L~ G). `normalised[i]` is None for an axis
  without a factor (it contributes the identity and gets no statistic).
  With all normalised factors the identity this is `factor_statistics`.
  """
  out = []
  for axis, f in enumerate(normalised):
    if f is None:
      out.append(None)
      continue
    others = [None if j == axis else m for j, m in enumerate(normalised)]
    out.append(_cross(mode_product(x, others), x, axis))
  return tuple(out)


def normalise_factor(f: jax.Array) -> jax.Array:
  """F~ = F / (tr(F) / dim), batched over leading axes; identity where tr(F) <= 0."""
  n = f.shape[-1]
  tr = jnp.trace(f, axis1=-2, axis2=-1)[..., None, None]
  eye = jnp.eye(n, dtype=f.dtype)
  safe = jnp.where(tr > 0, tr, 1.0)
  return jnp.where(tr > 0, f * (n / safe), eye)


def ema(old: jax.Array, new: jax.Array, decay) -> jax.Array:
  """decay * old + (1 - decay) * new in old's dtype; decay == 1: a running sum.

  decay may be a traced (injected) array, float64 under jax_enable_x64.
  """
  w = jnp.where(jnp.asarray(decay) == 1.0, 1.0, 1.0 - jnp.asarray(decay))
  return (decay * old + w * new).astype(old.dtype)


# ----------------------------------------------------------------------------
# Matrix functions.
# ----------------------------------------------------------------------------


def symmetrize(m: jax.Array) -> jax.Array:
  return 0.5 * (m + jnp.swapaxes(m, -1, -2))


def one_matrix_at_a_time_on_cpu(fn):
  """Wraps a batched LAPACK call (eigh, QR) so that, on CPU, it sees one matrix.

  jaxlib's CPU LAPACK kernels split a batch over XLA's intra-op thread pool
  and block their own pool thread until the pieces finish
  (`jax::ParallelBatchMap`). When a step runs as many such kernels at once as
  the pool has threads (a root step of a whole model; 8 fake devices), every
  thread waits for work queued behind the others and the program deadlocks.
  A batch of one never enters the pool, so on CPU the wrapped function maps
  over the leading axes with `lax.map`; other backends get the batched call.
  The choice is made at lowering time (`lax.platform_dependent`).
  """
  def wrapped(mats):
    batch = mats.shape[:-2]
    if not batch or math.prod(batch) == 1:
      return fn(mats)

    def per_matrix(m):
      flat = m.reshape((-1,) + m.shape[-2:])
      out = jax.lax.map(fn, flat)
      return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)

    return jax.lax.platform_dependent(mats, cpu=per_matrix, default=fn)
  return wrapped


def _eigh(mats: jax.Array) -> Tuple[jax.Array, jax.Array]:
  return one_matrix_at_a_time_on_cpu(jnp.linalg.eigh)(symmetrize(mats))


def _qr(mats: jax.Array) -> Tuple[jax.Array, jax.Array]:
  return one_matrix_at_a_time_on_cpu(jnp.linalg.qr)(mats)


def _np_eigh_desc(mats):
  a = np.asarray(mats, np.float64)
  a = 0.5 * (a + np.swapaxes(a, -1, -2))
  try:
    w, v = np.linalg.eigh(a)
  except np.linalg.LinAlgError:
    return (np.full(a.shape[:-1], np.nan, np.float32),
            np.full(a.shape, np.nan, np.float32))
  return (w[..., ::-1].astype(np.float32),
          v[..., ::-1].astype(np.float32))


def eigh_descending(mats: jax.Array, float64: bool = False
                    ) -> Tuple[jax.Array, jax.Array]:
  """Batched eigendecomposition, eigenvalues in descending order.

  float64=True runs numpy's float64 eigh on the host via `jax.pure_callback`
  (works under jit/vmap/cond without enabling jax_enable_x64); the result
  is returned in float32.
  """
  mats = mats.astype(jnp.float32)
  if float64:
    shapes = (jax.ShapeDtypeStruct(mats.shape[:-1], jnp.float32),
              jax.ShapeDtypeStruct(mats.shape, jnp.float32))
    return jax.pure_callback(_np_eigh_desc, shapes, mats,
                             vmap_method="broadcast_all")
  w, v = _eigh(mats)
  return w[..., ::-1], v[..., ::-1]


def inverse_root_eigh(mats: jax.Array, exponent: float, epsilon: float,
                      float64: bool = False) -> Tuple[jax.Array, jax.Array]:
  """(M + epsilon * lambda_max(M) I)^exponent by eigendecomposition, batched.

  Negative eigenvalues (round-off) are clipped to 0 first. Returns
  (root, ok) where ok (batch shape) is False for a non-finite result. A zero
  matrix gives a non-finite root (callers keep their previous root there).
  float64: the eigendecomposition runs in float64 on the host (see
  `eigh_descending`); eigenvalues come back in float32 with float64's
  relative accuracy (float32 eigh has absolute errors ~1e-7 lambda_max in the
  small ones), and the root is assembled in float32.
  """
  mats = mats.astype(jnp.float32)
  if float64:
    w, v = eigh_descending(mats, float64=True)
    w, v = w[..., ::-1], v[..., ::-1]
  else:
    w, v = _eigh(mats)
  wmax = jnp.maximum(w[..., -1:], 0.0)
  w = jnp.maximum(w, 0.0) + epsilon * wmax
  root = jnp.matmul(v * (w ** exponent)[..., None, :], jnp.swapaxes(v, -1, -2),
                    precision=jax.lax.Precision.HIGHEST)
  ok = jnp.all(jnp.isfinite(root), axis=(-2, -1))
  return root, ok


def max_eigenvalue(mats: jax.Array, num_iters: int = 32) -> jax.Array:
  """Power-iteration estimate of lambda_max for batched PSD matrices."""
  n = mats.shape[-1]
  v = jnp.ones(mats.shape[:-1], mats.dtype) / math.sqrt(n)
  # A fixed non-uniform start avoids being orthogonal to the top eigenvector
  # for structured (e.g. centred) matrices.
  v = v + 0.01 * jnp.sin(jnp.arange(n, dtype=mats.dtype) + 1.0)

  def body(_, v):
    v = jnp.einsum("...ij,...j->...i", mats, v,
                   precision=jax.lax.Precision.HIGHEST)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-30)

  v = jax.lax.fori_loop(0, num_iters, body, v)
  return jnp.einsum("...i,...ij,...j->...", v, mats, v,
                    precision=jax.lax.Precision.HIGHEST)


def inverse_root_residual(mats: jax.Array, root: jax.Array, exponent: float,
                          epsilon: float) -> jax.Array:
  """Relative error of a root X of A = M + epsilon lambda_max(M) I, batched.

  For exponent = -1/p with integer p: ||X^p A - I||_F / ||I||_F, which is 0
  for the exact root (the quantity the coupled Newton iteration drives to 0).
  Other exponents have no integer power to check against: NaN.
  """
  p = -1.0 / exponent if exponent != 0 else 0.0
  if exponent >= 0 or abs(p - round(p)) > 1e-6:
    return jnp.full(mats.shape[:-2], jnp.nan, jnp.float32)
  mats = symmetrize(mats.astype(jnp.float32))
  n = mats.shape[-1]
  eye = jnp.eye(n, dtype=jnp.float32)
  lam = jnp.maximum(max_eigenvalue(mats), 0.0)
  a = mats + (epsilon * lam)[..., None, None] * eye
  xp = root.astype(jnp.float32)
  for _ in range(int(round(p)) - 1):
    xp = jnp.matmul(xp, root, precision=_HI)
  err = jnp.matmul(xp, a, precision=_HI) - eye
  return jnp.linalg.norm(err, axis=(-2, -1)) / math.sqrt(n)


def inverse_root_newton(mats: jax.Array, p: int, epsilon: float, *,
                        max_iters: int = 100, tol: float = 1e-6,
                        fail_tol: float = 1e-2) -> Tuple[jax.Array, jax.Array]:
  """(M + epsilon * lambda_max(M) I)^(-1/p) by the coupled Newton iteration.

  With A the damped matrix and c^p = (p+1) ||A||_F / 2 (so the spectrum of
  M_0 lies in (0, 2/(p+1)]):

      X_0 = I / c,   M_0 = A / c^p,
      T_k = ((p+1) I - M_k) / p,   X_{k+1} = X_k T_k,   M_{k+1} = T_k^p M_k.

  The invariant M_k = X_k^p A holds and M_k -> I, so X_k -> A^{-1/p}.
  Iterates (batched, matmuls only) until max|M_k - I| <= tol, the error stops
  decreasing, or max_iters. lambda_max is estimated by power iteration.
  Returns (root, ok); ok is False for a non-finite root or a final error
  above fail_tol.
  """
  p = int(p)
  mats = symmetrize(mats.astype(jnp.float32))
  n = mats.shape[-1]
  eye = jnp.eye(n, dtype=jnp.float32)
  lam = jnp.maximum(max_eigenvalue(mats), 0.0)
  a = mats + (epsilon * lam)[..., None, None] * eye
  norm = jnp.linalg.norm(a, axis=(-2, -1))
  c = ((p + 1) * norm / 2.0) ** (1.0 / p)
  x0 = eye / c[..., None, None]
  m0 = a / (c ** p)[..., None, None]
  hi = jax.lax.Precision.HIGHEST

  def err_of(m):
    return jnp.max(jnp.abs(m - eye), axis=(-2, -1))

  def step(x, m):
    t = ((p + 1) * eye - m) / p
    tp = t
    for _ in range(p - 1):
      tp = jnp.matmul(tp, t, precision=hi)
    return jnp.matmul(x, t, precision=hi), jnp.matmul(tp, m, precision=hi)

  def cond(carry):
    i, _, _, err, improving = carry
    return (i < max_iters) & jnp.any((err > tol) & improving)

  def body(carry):
    i, x, m, err, improving = carry
    nx, nm = step(x, m)
    nerr = err_of(nm)
    # Per matrix: accept the step only while the error keeps decreasing
    # (or while far from convergence, where it may rise transiently).
    accept = improving & (err > tol) & ((nerr < err) | (err > 0.5))
    acc = accept[..., None, None]
    x = jnp.where(acc, nx, x)
    m = jnp.where(acc, nm, m)
    return (i + 1, x, m, jnp.where(accept, nerr, err),
            improving & (accept | (err <= tol)))

  init = (0, x0, m0, err_of(m0), jnp.ones(mats.shape[:-2], bool))
  _, x, _, err, _ = jax.lax.while_loop(cond, body, init)
  ok = jnp.all(jnp.isfinite(x), axis=(-2, -1)) & (err <= fail_tol)
  return x, ok


def qr_basis_update(mats: jax.Array, basis: jax.Array
                    ) -> Tuple[jax.Array, jax.Array]:
  """One orthogonal-iteration step toward the eigenbasis (SOAP's cheap update).

  Sorts the columns of `basis` by the estimated eigenvalues diag(Q^T M Q)
  (descending), then returns (qr(M Q_sorted).Q, order) where `order` is the
  permutation applied (callers permute per-coordinate statistics with it).
  """
  mats = mats.astype(jnp.float32)
  mq = jnp.matmul(mats, basis, precision=_HI)  # one product serves both uses
  est = jnp.sum(basis * mq, axis=-2)
  order = jnp.argsort(-est, axis=-1)
  # M (Q P) = (M Q) P for the column permutation P.
  q, r = _qr(jnp.take_along_axis(mq, order[..., None, :], axis=-1))
  # Fix the QR sign ambiguity so that Q stays close to the previous basis.
  sign = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0)
  return q * sign[..., None, :], order


def grouped_map(fn, arrays: Sequence[jax.Array], keys: Sequence[Any] = None):
  """Applies a batched fn to arrays stacked on axis 0, one call per group.

  Arrays with equal key (default: shape[1:]) are concatenated along axis 0,
  `fn` maps the concatenation to a pytree of arrays with the same leading
  axis, and the results are split back. Returns a list aligned with
  `arrays`. This turns thousands of small per-block decompositions into a few
  batched ones.
  """
  keys = [a.shape[1:] for a in arrays] if keys is None else list(keys)
  groups = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  out = [None] * len(arrays)
  for idx in groups.values():
    cat = jnp.concatenate([arrays[i] for i in idx], axis=0)
    res = fn(cat)
    start = 0
    for i in idx:
      n = arrays[i].shape[0]
      out[i] = jax.tree.map(lambda r, s=start, n=n: r[s:s + n], res)
      start += n
  return out


def permute_axis(x: jax.Array, axis: int, order: jax.Array) -> jax.Array:
  """x[n, .., order[n, j], ..] along block axis `axis` (0-based after N)."""
  xt = jnp.moveaxis(x, axis + 1, -1)
  idx = order.reshape((order.shape[0],) + (1,) * (xt.ndim - 2) + (order.shape[-1],))
  xt = jnp.take_along_axis(xt, jnp.broadcast_to(idx, xt.shape), axis=-1)
  return jnp.moveaxis(xt, -1, axis + 1)
