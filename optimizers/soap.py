"""SOAP: Adam in the eigenbasis of Shampoo's factors (Vyas et al. 2024).

For a matrix block G with Shampoo factors L = EMA[G G^T], R = EMA[G^T G]
(decay shampoo_b2) and their eigenbases Q_L, Q_R (eigenvalues descending),
each step t does

    G' = Q_L^T G Q_R                         (rotate into the eigenbasis)
    M' <- b1 M' + (1-b1) G',   V <- b2 V + (1-b2) G'^2
    N  = Q_L [ M'/(1-b1^t) / (sqrt(V/(1-b2^t)) + eps) ] Q_R^T
    L <- shampoo_b2 L + (1-shampoo_b2) G G^T,  R likewise,

and every `precondition_frequency` steps (starting at step 1) refreshes the
bases from the updated factors: by eigendecomposition the first time and with
basis_update="eigh", or (default "qr") by one orthogonal-iteration step
Q <- qr(F Q) after sorting Q's columns by diag(Q^T F Q) and permuting V's
coordinates the same way. On a basis change the momentum M' is carried to the
new basis (it is a vector, M = Q_L M' Q_R^T), while V keeps its coordinates,
as in the paper. Before the first basis (step 1) the bases are the identity,
so step 1 is an Adam step. Order-k tensors rotate along every axis with a
factor; layout (merging, blocking, one-sided axes, diagonal fallback =
plain Adam) is shared with Shampoo via `optimizers.kronecker`.

Factor statistics, bases and moments are float32; updates are returned in the
gradient's dtype. In the Kronecker view (see `optimizers.shampoo`), SOAP
replaces Shampoo's fixed eigenvalues (lambda_L x lambda_R)^{-1/2} by Adam's
running per-coordinate second moment in the Kronecker eigenbasis.
"""
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from optimizers import kronecker as kr
from optimizers.shampoo import PreconditionFilter
from optimizers.shampoo import ScalarOrSchedule
from optimizers.shampoo import cast_like
from optimizers.shampoo import make_layouts
from optimizers.shampoo import on_mesh_of
from optimizers.shampoo import require_static
from optimizers.weight_decay import decoupled_weight_decay


# Structural options to pass as `static_args` to `optax.inject_hyperparams`:
# block_size, merge_dims and max_precond_dim fix the state's shapes (a clear
# error when injected); precondition_frequency also works traced.
SOAP_STATIC_ARGS = (
    "precondition_frequency", "block_size", "merge_dims", "max_precond_dim",
    "precondition_filter", "weight_decay_mask", "precondition_1d",
    "eigh_float64")


class SoapLeafState(NamedTuple):
  """Per-parameter state.

  factors / bases: one (num_blocks, b, b) float32 array per merged axis (None
    for an axis without a factor); () for the diagonal fallback (Adam).
  mu: first moment in the rotated basis, (num_blocks, *block_shape) float32
    (param shape for the fallback).
  nu: second moment in the rotated basis, same shape as mu.
  """
  factors: Tuple[Optional[jax.Array], ...]
  bases: Tuple[Optional[jax.Array], ...]
  mu: jax.Array
  nu: jax.Array


class SoapState(NamedTuple):
  count: jax.Array   # int32 number of updates done
  leaves: Any        # param tree of SoapLeafState


def adam_moments(g: jax.Array, mu: jax.Array, nu: jax.Array, count: jax.Array,
                 *, b1, b2, eps: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Adam on g (float32, in whatever basis g is given); t = count (1-based).

  M <- b1 M + (1 - b1) g,  V <- b2 V + (1 - b2) g^2,
  returns (M, V, (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)).
  """
  mu = optax.tree.update_moment(g, mu, b1, 1).astype(mu.dtype)
  nu = optax.tree.update_moment_per_elem_norm(g, nu, b2, 2).astype(nu.dtype)
  mu_hat = optax.tree.bias_correction(mu, b1, count)
  nu_hat = optax.tree.bias_correction(nu, b2, count)
  return mu, nu, mu_hat / (jnp.sqrt(nu_hat) + eps)


def scale_by_soap(
    b1: float = 0.95,
    b2: float = 0.95,
    *,
    shampoo_b2: Optional[float] = None,
    eps: float = 1e-8,
    precondition_frequency: int = 10,
    basis_update: str = "qr",
    block_size: Optional[int] = None,
    merge_dims: Optional[int] = None,
    max_precond_dim: Optional[int] = 10000,
    precondition_1d: bool = False,
    precondition_filter: Optional[PreconditionFilter] = None,
    eigh_float64: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """SOAP's direction (no learning rate, no weight decay); see module doc.

  Args:
    b1, b2: Adam's decays (in the eigenbasis).
    shampoo_b2: decay of the factors L, R (default b2).
    eps: Adam's epsilon.
    precondition_frequency: refresh the bases every this many steps.
    basis_update: "qr" (one orthogonal-iteration step, eigh the first time)
      or "eigh" (full eigendecomposition every time).
    block_size, merge_dims, max_precond_dim, precondition_1d,
    precondition_filter: layout, as in `optimizers.kronecker.block_layout`.
    eigh_float64: run the eigendecompositions in float64 on the host.
  """
  if basis_update not in ("qr", "eigh"):
    raise ValueError(f"basis_update must be 'qr' or 'eigh', got {basis_update!r}")
  for name, value in (("block_size", block_size), ("merge_dims", merge_dims),
                      ("max_precond_dim", max_precond_dim)):
    require_static(value, name, "SOAP_STATIC_ARGS")
  shampoo_b2 = b2 if shampoo_b2 is None else shampoo_b2
  layouts_of = lambda tree: make_layouts(
      tree, block_size=block_size, merge_dims=merge_dims,
      max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
      precondition_filter=precondition_filter)
  is_lay = lambda x: isinstance(x, kr.BlockLayout)

  def init_fn(params):
    def leaf(lay: kr.BlockLayout, p):
      # Fresh zeros for mu and nu: one shared buffer cannot be donated twice.
      if lay.is_diagonal:
        return SoapLeafState((), (), jnp.zeros_like(p, dtype=jnp.float32),
                             jnp.zeros_like(p, dtype=jnp.float32))
      n = lay.num_blocks
      factors = tuple(
          on_mesh_of(p, jnp.zeros((n, b, b), jnp.float32)) if pre else None
          for b, pre in zip(lay.block_shape, lay.preconditioned))
      bases = tuple(
          on_mesh_of(p, jnp.broadcast_to(jnp.eye(b, dtype=jnp.float32),
                                         (n, b, b))) if pre else None
          for b, pre in zip(lay.block_shape, lay.preconditioned))
      zeros = lambda: on_mesh_of(p, jnp.zeros(lay.stacked_shape, jnp.float32))
      return SoapLeafState(factors, bases, zeros(), zeros())

    leaves = jax.tree.map(leaf, layouts_of(params), params, is_leaf=is_lay)
    first = jax.tree.leaves(params)[:1]
    count = jnp.zeros([], jnp.int32)
    return SoapState(on_mesh_of(first[0], count) if first else count, leaves)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    lay_list, treedef = jax.tree.flatten(layouts_of(updates), is_leaf=is_lay)
    g_list = treedef.flatten_up_to(updates)
    st_list = treedef.flatten_up_to(state.leaves)
    count = optax.safe_int32_increment(state.count)

    outs, leaves = [], []
    for lay, g, st in zip(lay_list, g_list, st_list):
      g32 = g.astype(jnp.float32)
      if lay.is_diagonal:
        mu, nu, out = adam_moments(g32, st.mu, st.nu, count, b1=b1, b2=b2,
                                   eps=eps)
        outs.append(out)
        leaves.append(SoapLeafState((), (), mu, nu))
        continue
      x = kr.to_blocks(g32, lay)
      gr = kr.mode_product(x, st.bases, transpose=True)
      mu, nu, out = adam_moments(gr, st.mu, st.nu, count, b1=b1, b2=b2, eps=eps)
      outs.append(kr.from_blocks(kr.mode_product(out, st.bases), lay))
      stats = kr.factor_statistics(x, lay.preconditioned)
      factors = tuple(None if f is None else kr.ema(f, s, shampoo_b2)
                      for f, s in zip(st.factors, stats))
      leaves.append(SoapLeafState(factors, st.bases, mu, nu))

    # Basis refresh for all preconditioned blocks at once (grouped by size).
    pre = [i for i, lay in enumerate(lay_list) if not lay.is_diagonal]
    if pre:
      due = (count - 1) % precondition_frequency == 0
      sub = [leaves[i] for i in pre]
      sub = jax.lax.cond(due, lambda s: _refresh(s, count), lambda s: s, sub)
      for i, s in zip(pre, sub):
        leaves[i] = s

    outs = [o.astype(g.dtype) for o, g in zip(outs, g_list)]
    new_state = SoapState(count, treedef.unflatten(leaves))
    return treedef.unflatten(outs), cast_like(new_state, state)

  def _refresh(sub, count):
    """New bases from the factors; carries mu to the new basis, permutes nu."""
    jobs, where = [], []
    for li, s in enumerate(sub):
      for ai, f in enumerate(s.factors):
        if f is not None:
          jobs.append((f, s.bases[ai]))
          where.append((li, ai))

    def by_eigh(_):
      res = kr.grouped_map(lambda f: kr.eigh_descending(f, eigh_float64)[1],
                           [f for f, _ in jobs])
      return [(q, None) for q in res]

    def by_qr(_):
      cat = [jnp.concatenate([f, q], axis=-1) for f, q in jobs]
      res = kr.grouped_map(
          lambda fq: kr.qr_basis_update(fq[..., :fq.shape[-2]],
                                        fq[..., fq.shape[-2]:]), cat)
      return list(res)

    if basis_update == "eigh":
      res = by_eigh(None)
      orders = None
    else:
      # eigh the first time (from the identity), orthogonal iteration after.
      def first(_):
        qs = [q for q, _ in by_eigh(None)]
        return qs, [jnp.broadcast_to(jnp.arange(q.shape[-1], dtype=jnp.int32),
                                     q.shape[:-1]) for q in qs]
      def later(_):
        r = by_qr(None)
        return [q for q, _ in r], [o.astype(jnp.int32) for _, o in r]
      qs, orders = jax.lax.cond(count == 1, first, later, None)
      res = [(q, o) for q, o in zip(qs, orders)]

    new_bases = [list(s.bases) for s in sub]
    perms = [dict() for _ in sub]
    for (li, ai), (q, o) in zip(where, res):
      new_bases[li][ai] = q
      if o is not None:
        perms[li][ai] = o
    out = []
    for li, s in enumerate(sub):
      # Momentum is a vector: back to the original basis, into the new one.
      m = kr.mode_product(s.mu, s.bases)
      nu = s.nu
      for ai, o in perms[li].items():
        nu = kr.permute_axis(nu, ai, o)
      m = kr.mode_product(m, new_bases[li], transpose=True)
      out.append(SoapLeafState(s.factors, tuple(new_bases[li]), m, nu))
    return out

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def soap(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.95,
    b2: float = 0.95,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Any = None,
    shampoo_b2: Optional[float] = None,
    eps: float = 1e-8,
    precondition_frequency: int = 10,
    basis_update: str = "qr",
    block_size: Optional[int] = None,
    merge_dims: Optional[int] = None,
    max_precond_dim: Optional[int] = 10000,
    precondition_1d: bool = False,
    precondition_filter: Optional[PreconditionFilter] = None,
    eigh_float64: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """SOAP with decoupled weight decay and a learning rate (float or schedule).

  update = -learning_rate * (scale_by_soap direction + weight_decay * param).
  The numeric hyper-parameters (learning_rate, weight_decay, b1, b2,
  shampoo_b2, eps, precondition_frequency) can be injected and changed at run
  time without recompiling:
    tx = optax.inject_hyperparams(soap, static_args=SOAP_STATIC_ARGS)(
        learning_rate=1e-3, block_size=512)
  The state has the same structure for every weight_decay, including 0.
  """
  parts = [scale_by_soap(
      b1, b2, shampoo_b2=shampoo_b2, eps=eps,
      precondition_frequency=precondition_frequency, basis_update=basis_update,
      block_size=block_size, merge_dims=merge_dims,
      max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
      precondition_filter=precondition_filter, eigh_float64=eigh_float64)]
  parts.append(decoupled_weight_decay(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
