"""Shampoo as an optax transformation, with the Kronecker power-iteration view.

For a matrix parameter W (m x n) with gradient G, the optimal Kronecker
approximation A (x) B of H = E[vec(G) vec(G)^T] is found by the power iteration
A <- E[G B G^T], B <- E[G^T A G] (then normalise). One step from the identity
gives L = E[G G^T] and R = E[G^T G], so L (x) R / tr(H) -- the *square* of
Shampoo's classic factor product -- approximates H. Hence (Morwani et al. 2024,
"A New Perspective on Shampoo's Preconditioner"):

  * exponent="classic":  L^{-1/4} G R^{-1/4}  ~ H^{-1/4} vec(G)
    (-1/(2k) per factor for an order-k tensor);
  * exponent="shampoo2" (DEFAULT): L^{-1/2} G R^{-1/2} ~ H^{-1/2} vec(G),
    Adagrad/Adam's power of H;
  * exponent="newton":   L^{-1} G R^{-1}  ~ H^{-1} vec(G);
  * a float: that exponent per factor.

The preconditioned direction is exactly (L_e (x) R_e)^p vec(G) with
L_e = L + epsilon lambda_max(L) I (same for R), p the exponent; its overall
scale is set by grafting (default: Adam's per-block norm), which makes the
tr(H) normalisation irrelevant.

Factor updates (`factor_update`), EMA with beta2 (beta2 = 1: running sums):
  * "shampoo": L <- b L + (1-b) G G^T,  R <- b R + (1-b) G^T G;
  * "power":   L <- b L + (1-b) G R~ G^T,  R <- b R + (1-b) G^T L~ G with
    F~ = F / (tr(F)/dim(F)) from the *previous* factors, and F~ = I while
    tr(F) = 0 (at init). One step from zero state therefore equals Shampoo^2's
    factors; later steps are an online power iteration toward the optimal
    Kronecker approximation (order-k tensors: contract with all other F~_j).

Everything else:
  * Layout (`optimizers.kronecker.block_layout`): size-1 axes dropped, small
    axes merged (merge_dims), axes longer than block_size cut into zero-padded
    blocks; axes longer than max_precond_dim get no factor (one-sided);
    vectors, scalars, tensors with no factor, and parameters rejected by
    `precondition_filter(path, shape)` (e.g. embeddings) use the diagonal
    fallback: Adam's g / (sqrt(nu_hat) + diag_eps).
  * Grafting (graft_type): "adam" (bias-corrected RMS, no momentum), "rmsprop"
    (no bias correction), "adagrad", "sgd" (the gradient), "none"; with
    graft_b2 = 1 (default b2) the diagonal second moments of the graft and
    the fallback are running sums without bias correction (Adagrad). The Shampoo
    direction of each block is rescaled to the norm of the graft direction of
    that block, so the whole update also has the graft's norm. Before
    start_preconditioning_step the graft direction itself is used ("none":
    the raw gradient).
  * Momentum b1 (EMA, bias corrected, optional Nesterov) on the grafted
    direction; decoupled weight decay and the learning rate in `shampoo`.
  * Amortisation: factors updated every statistics_frequency steps; the roots
    (all blocks of all parameters, grouped by shape and exponent so each group
    is one batched eigh / Newton iteration) only at step
    start_preconditioning_step and every preconditioning_frequency steps after
    it, inside `lax.cond` (one compiled program, no recompilation).
  * Roots: root_method="eigh" (float32 on device, or float64 on the host via
    `jax.pure_callback` with root_float64=True, without jax_enable_x64) or
    "newton" (coupled Newton iteration, matmuls only; needs exponent -1/p).
    epsilon is relative to each factor's largest eigenvalue. A non-finite or
    non-converged root keeps the previous root and adds 1 per failed factor
    to the leaf's `failures` counter; an all-zero factor (no gradient yet)
    also keeps the previous root but is not a failure.
  * Statistics, roots and moments are float32 whatever the parameter dtype;
    updates are returned in the gradient's dtype (bf16 works).

The update is a chain of pure stages, each usable and testable on its own:
`diagonal_direction` (second moment, graft / fallback direction),
`update_factors` (statistics), `refresh_roots` (batched inverse roots),
`shampoo_direction` (preconditioning + `graft_blocks`) and `momentum`.

Usage:

  tx = shampoo(3e-4, b1=0.9, b2=0.999, weight_decay=0.1, block_size=512,
               preconditioning_frequency=10)
  # schedules / injection: structural options must be static
  tx = optax.inject_hyperparams(shampoo, static_args=SHAMPOO_STATIC_ARGS)(
      learning_rate=schedule, block_size=512)

Sharding: with mesh-sharded parameters, an eager `init` puts param-shaped
state (momentum, second moments) on the parameters' shardings and factors /
roots replicated on their mesh. Jit the update with
`out_shardings=(param_shardings, jax.tree.map(lambda x: x.sharding, state))`
so the state keeps exactly these shardings (and the step compiles once).
"""
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import kronecker as kr
from optimizers.weight_decay import decoupled_weight_decay

ScalarOrSchedule = optax.ScalarOrSchedule
PreconditionFilter = Callable[[Tuple[Any, ...], Tuple[int, ...]], bool]

GRAFT_TYPES = ("adam", "rmsprop", "adagrad", "sgd", "none")


# Structural options: pass these as `static_args` to `optax.inject_hyperparams`
# (which otherwise turns every int/float/callable argument into a traced
# hyperparameter), e.g.
#   optax.inject_hyperparams(shampoo, static_args=SHAMPOO_STATIC_ARGS)(lr, ...)
# block_size, merge_dims, max_precond_dim and a float exponent fix the state's
# shapes and must be static (a clear error otherwise); the frequencies and
# start_preconditioning_step also work traced (one lax.cond each).
SHAMPOO_STATIC_ARGS = (
    "exponent", "block_size", "merge_dims", "max_precond_dim",
    "precondition_filter", "start_preconditioning_step",
    "statistics_frequency", "preconditioning_frequency", "mu_dtype",
    "weight_decay_mask", "precondition_1d", "nesterov", "root_float64",
    "diagnostics")


class ShampooLeafState(NamedTuple):
  """Per-parameter state.

  factors / roots: one (num_blocks, b, b) float32 array per merged axis, None
    for an axis without a factor; () for the diagonal fallback.
  nu: float32 second moment of the gradient (param shape) for the graft and
    the diagonal fallback; None when not needed.
  failures: int32 count of failed factor roots.
  max_eigenvalue / root_error: with diagnostics=True, per factor (None for an
    axis without one) a (num_blocks,) float32 array, as of the last root
    step: lambda_max of the factor and the relative residual of its root
    (`kronecker.inverse_root_residual`; NaN for non -1/p exponents). None
    otherwise.
  """
  factors: Tuple[Optional[jax.Array], ...]
  roots: Tuple[Optional[jax.Array], ...]
  nu: Optional[jax.Array]
  failures: jax.Array
  max_eigenvalue: Optional[Tuple[Optional[jax.Array], ...]] = None
  root_error: Optional[Tuple[Optional[jax.Array], ...]] = None


class ShampooState(NamedTuple):
  count: jax.Array            # int32 number of updates done
  mu: Any                     # float32 momentum (param tree) or None
  leaves: Any                 # param tree of ShampooLeafState


def _path_str(path) -> Tuple[Any, ...]:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
    else:
      out.append(str(k))
  return tuple(out)


def require_static(value, name: str, static_args: str):
  """Raises a clear error for a structural option given as an array.

  `optax.inject_hyperparams` turns every numeric argument not listed in its
  static_args into a (traced) array; shapes cannot depend on one.
  """
  if isinstance(value, (jax.Array, np.ndarray)):
    raise ValueError(
        f"{name} is structural (it fixes the optimizer state's shapes) and must "
        f"be a Python value, got an array {value!r}; with optax.inject_hyperparams "
        f"pass static_args=optimizers.{static_args}")
  return value


def is_python_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def equals_one(x):
  """x == 1 as a Python bool for numbers, a traced bool for (injected) arrays."""
  if is_python_number(x):
    return x == 1
  return jnp.asarray(x) == 1


def cast_like(new, old):
  """`new` with the dtypes of `old` (same tree), e.g. after float64 hyper-
  parameters (inject_hyperparams under jax_enable_x64) promoted a moment."""
  return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def embedding_filter(names: Sequence[str] = ("embed", "embedding", "wte", "wpe")
                     ) -> PreconditionFilter:
  """A precondition_filter that sends parameters whose path mentions one of
  `names` (case-insensitive substring) to the diagonal fallback."""
  names = tuple(n.lower() for n in names)

  def keep(path, shape):
    del shape
    text = "/".join(str(p) for p in path).lower()
    return not any(n in text for n in names)

  return keep


def resolve_exponent(exponent: Union[str, float], order: int) -> float:
  """Per-factor exponent for a tensor with `order` factors."""
  if isinstance(exponent, str):
    if exponent == "shampoo2":
      return -0.5
    if exponent == "classic":
      return -1.0 / (2 * max(order, 1))
    if exponent == "newton":
      return -1.0
    raise ValueError(f"unknown exponent {exponent!r}")
  return float(exponent)


def _newton_p(e: float) -> int:
  p = -1.0 / e
  if e >= 0 or abs(p - round(p)) > 1e-6:
    raise ValueError(f"root_method='newton' needs exponent -1/p, got {e}")
  return int(round(p))


def on_mesh_of(p, value: jax.Array) -> jax.Array:
  """`value` replicated on p's mesh when p is a concrete mesh-sharded array.

  Used by eager `init` so that factor-shaped state lives on the parameters'
  mesh (replicated) instead of one device; param-shaped state uses
  `jnp.zeros_like`, which keeps the parameter's sharding. Under jit (tracers)
  `value` is returned as is: pass out_shardings to the jitted init then.
  """
  if isinstance(p, jax.Array) and not isinstance(p, jax.core.Tracer):
    sh = p.sharding
    if isinstance(sh, jax.sharding.NamedSharding):
      return jax.device_put(value, jax.sharding.NamedSharding(
          sh.mesh, jax.sharding.PartitionSpec()))
  return value


def make_layouts(tree, *, block_size, merge_dims, max_precond_dim,
                 precondition_1d, precondition_filter):
  """Param tree -> tree of BlockLayout (static; from shapes and paths)."""
  def one(path, x):
    keep = True
    if precondition_filter is not None:
      keep = bool(precondition_filter(_path_str(path), tuple(x.shape)))
    return kr.block_layout(x.shape, block_size=block_size, merge_dims=merge_dims,
                           max_precond_dim=max_precond_dim,
                           precondition_1d=precondition_1d, precondition=keep)
  return jax.tree_util.tree_map_with_path(one, tree)


def batched_roots(jobs: List[Tuple[jax.Array, jax.Array, float]], *,
                  epsilon: float, method: str, float64: bool):
  """Computes inverse roots for many stacked factors at once.

  jobs: list of (factors (N, b, b), previous roots (N, b, b), exponent).
  Jobs with the same (b, exponent) are concatenated and solved by one batched
  call. Returns a list of (new roots, number of failed factors).
  """
  groups: Dict[Tuple[int, float], List[int]] = {}
  for i, (f, _, e) in enumerate(jobs):
    groups.setdefault((f.shape[-1], e), []).append(i)
  results: List[Any] = [None] * len(jobs)
  for (_, e), idx in groups.items():
    stats = jnp.concatenate([jobs[i][0] for i in idx], axis=0)
    prev = jnp.concatenate([jobs[i][1] for i in idx], axis=0)
    if method == "eigh":
      root, ok = kr.inverse_root_eigh(stats, e, epsilon, float64=float64)
    elif method == "newton":
      root, ok = kr.inverse_root_newton(stats, _newton_p(e), epsilon)
    else:
      raise ValueError(f"unknown root_method {method!r}")
    empty = jnp.trace(stats, axis1=-2, axis2=-1) <= 0
    keep = empty | ~ok
    new = jnp.where(keep[:, None, None], prev, root)
    fails = (~ok & ~empty).astype(jnp.int32)
    start = 0
    for i in idx:
      n = jobs[i][0].shape[0]
      results[i] = (new[start:start + n],
                    jnp.sum(fails[start:start + n], dtype=jnp.int32))
      start += n
  return results


# ----------------------------------------------------------------------------
# The update's stages. Each is a pure function of one parameter's (or a list
# of parameters') arrays; `scale_by_shampoo` chains them.
# ----------------------------------------------------------------------------


def init_leaf(lay: kr.BlockLayout, p, *, needs_nu: bool,
              diagnostics: bool) -> ShampooLeafState:
  """Zero statistics, identity roots and zero second moment for parameter p."""
  fails = on_mesh_of(p, jnp.zeros([], jnp.int32))
  if lay.is_diagonal:
    return ShampooLeafState((), (), jnp.zeros_like(p, dtype=jnp.float32), fails)
  n = lay.num_blocks
  factors = tuple(
      on_mesh_of(p, jnp.zeros((n, b, b), jnp.float32)) if pre else None
      for b, pre in zip(lay.block_shape, lay.preconditioned))
  roots = tuple(
      on_mesh_of(p, jnp.broadcast_to(jnp.eye(b, dtype=jnp.float32),
                                     (n, b, b))) if pre else None
      for b, pre in zip(lay.block_shape, lay.preconditioned))
  nu = jnp.zeros_like(p, dtype=jnp.float32) if needs_nu else None
  if not diagnostics:
    return ShampooLeafState(factors, roots, nu, fails)
  per_factor = lambda fill: tuple(
      on_mesh_of(p, jnp.full((n,), fill, jnp.float32)) if pre else None
      for pre in lay.preconditioned)
  return ShampooLeafState(factors, roots, nu, fails, per_factor(0.0),
                          per_factor(jnp.nan))


def diagonal_direction(lay: kr.BlockLayout, g: jax.Array, nu: jax.Array,
                       count: jax.Array, *, graft_type: str, b2, eps
                       ) -> Tuple[jax.Array, jax.Array]:
  """One parameter's diagonal second moment v and direction d (graft, fallback).

  With t = count (1-based):
    * graft "adam" and the diagonal fallback: v <- b2 v + (1 - b2) g^2,
      d = g / (sqrt(v / (1 - b2^t)) + eps);
    * graft "rmsprop": the same v, d = g / (sqrt(v) + eps);
    * graft "adagrad", and every case with b2 = 1 (running sums, as for the
      factors): v <- v + g^2, d = g / (sqrt(v) + eps).
  b2 may be an (injected, traced) array: b2 = 1 then selects the running sums
  at run time, so the result is the same as for the Python number.
  Returns (v, d).
  """
  preconditioned = not lay.is_diagonal
  running = (graft_type == "adagrad" and preconditioned) or equals_one(b2)
  if running is True:
    nu = nu + g * g
    return nu, g / (jnp.sqrt(nu) + eps)
  ema = optax.tree.update_moment_per_elem_norm(g, nu, b2, 2).astype(nu.dtype)
  nu = ema if running is False else jnp.where(running, nu + g * g, ema)
  if graft_type == "rmsprop" and preconditioned:
    return nu, g / (jnp.sqrt(nu) + eps)
  if running is False:
    return nu, g / (jnp.sqrt(optax.tree.bias_correction(nu, b2, count)) + eps)
  safe_b2 = jnp.where(running, 0.5, b2)  # no 0 / 0 in the branch not taken
  nu_hat = jnp.where(running, nu, optax.tree.bias_correction(nu, safe_b2, count))
  return nu, g / (jnp.sqrt(nu_hat) + eps)


def update_factors(lays: Sequence[kr.BlockLayout], blocks, factors, *,
                   factor_update: str, b2) -> List[Any]:
  """F_i <- b2 F_i + (1 - b2) S_i per factor (b2 = 1: running sums).

  S_i = G_(i) G_(i)^T ("shampoo"; for a matrix L: G G^T, R: G^T G) or the
  power-iteration step G_(i) ((x)_{j!=i} F~_j) G_(i)^T ("power") from the
  previous factors. blocks / factors: per parameter, None / () for the
  diagonal fallback.
  """
  out = []
  for lay, x, fs in zip(lays, blocks, factors):
    if lay.is_diagonal:
      out.append(())
      continue
    if factor_update == "power":
      stats = kr.power_factor_statistics(
          x, [None if f is None else kr.normalise_factor(f) for f in fs])
    else:
      stats = kr.factor_statistics(x, lay.preconditioned)
    out.append(tuple(None if f is None else kr.ema(f, s, b2)
                     for f, s in zip(fs, stats)))
  return out


def refresh_roots(lays: Sequence[kr.BlockLayout], factors, roots, failures,
                  diagnostics_state, *, exponent, epsilon: float, method: str,
                  float64: bool, diagnostics: bool):
  """New roots (F_i + epsilon lambda_max(F_i) I)^e of every factor, batched.

  e = `resolve_exponent(exponent, order)` per parameter. A failed root keeps
  the previous one and adds to the parameter's failure count (see
  `batched_roots`). With diagnostics, also lambda_max(F_i) and the root's
  residual per block. Returns (roots, failures, diagnostics_state), lists
  aligned with `lays`.
  """
  jobs, where = [], []
  for li, (lay, fs, rs) in enumerate(zip(lays, factors, roots)):
    e = resolve_exponent(exponent, lay.order)
    for ai, (f, r) in enumerate(zip(fs, rs)):
      if f is not None:
        jobs.append((f, r, e))
        where.append((li, ai))
  res = batched_roots(jobs, epsilon=epsilon, method=method, float64=float64)
  roots = [list(rs) for rs in roots]
  failures = list(failures)
  diag = [(None, None) if lam is None else (list(lam), list(err))
          for lam, err in diagnostics_state]
  for (li, ai), (r, nf), (f, _, e) in zip(where, res, jobs):
    roots[li][ai] = r
    failures[li] = failures[li] + nf
    if diagnostics:
      diag[li][0][ai] = kr.max_eigenvalue(kr.symmetrize(f.astype(jnp.float32)))
      diag[li][1][ai] = kr.inverse_root_residual(f, r, e, epsilon)
  diag = [(None, None) if lam is None else (tuple(lam), tuple(err))
          for lam, err in diag]
  return [tuple(rs) for rs in roots], failures, diag


def graft_blocks(y: jax.Array, graft: jax.Array) -> jax.Array:
  """Rescales each block of y (N, b_1..b_k) to the Frobenius norm of graft's.

  y_n <- y_n ||graft_n|| / ||y_n||, and 0 where y_n = 0.
  """
  axes = tuple(range(1, y.ndim))
  gn = jnp.sqrt(jnp.sum(graft * graft, axis=axes, keepdims=True))
  yn = jnp.sqrt(jnp.sum(y * y, axis=axes, keepdims=True))
  return y * jnp.where(yn > 0, gn / jnp.where(yn > 0, yn, 1.0), 0.0)


def shampoo_direction(lay: kr.BlockLayout, g: jax.Array, x: Optional[jax.Array],
                      roots, diag_dir: Optional[jax.Array],
                      preconditioning: jax.Array, *, graft_type: str) -> jax.Array:
  """One parameter's direction before momentum.

  Diagonal fallback: diag_dir. Otherwise, per block, Y = mode_product(G,
  roots) (for a matrix L^e G R^e) grafted to the norm of the graft direction
  (graft "adam" / "rmsprop" / "adagrad": diag_dir, "sgd": G, "none": Y as
  is); before start_preconditioning_step (preconditioning False) the graft
  direction itself (G for "none").
  """
  if lay.is_diagonal:
    return diag_dir
  graft = {"sgd": g, "none": None}.get(graft_type, diag_dir)
  y = kr.mode_product(x, roots)
  if graft is not None:
    y = graft_blocks(y, kr.to_blocks(graft, lay))
  fallback = g if graft is None else graft
  return jnp.where(preconditioning, kr.from_blocks(y, lay), fallback)


def momentum(directions, mu, count: jax.Array, *, b1, nesterov: bool):
  """m <- b1 m + (1 - b1) u (float32); returns (m, bias-corrected output).

  Output m / (1 - b1^t), or with Nesterov
  b1 m / (1 - b1^(t+1)) + (1 - b1) u / (1 - b1^t), as in `optax.scale_by_adam`.
  """
  mu = optax.tree.update_moment(directions, optax.tree.cast(mu, jnp.float32),
                                b1, 1)
  if not nesterov:
    return mu, optax.tree.bias_correction(mu, b1, count)
  return mu, jax.tree.map(
      lambda m, u: b1 * m + (1.0 - b1) * u,
      optax.tree.bias_correction(mu, b1, optax.safe_int32_increment(count)),
      optax.tree.bias_correction(directions, b1, count))


def scale_by_shampoo(
    b1: float = 0.9,
    b2: float = 0.999,
    *,
    epsilon: float = 1e-6,
    diag_eps: float = 1e-8,
    exponent: Union[str, float] = "shampoo2",
    factor_update: str = "shampoo",
    block_size: Optional[int] = 1024,
    merge_dims: Optional[int] = None,
    max_precond_dim: Optional[int] = None,
    precondition_1d: bool = False,
    precondition_filter: Optional[PreconditionFilter] = None,
    graft_type: str = "adam",
    graft_b2: Optional[float] = None,
    nesterov: bool = False,
    start_preconditioning_step: int = 1,
    statistics_frequency: int = 1,
    preconditioning_frequency: int = 1,
    root_method: str = "eigh",
    root_float64: bool = False,
    mu_dtype: Any = None,
    diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Shampoo's preconditioned direction (no learning rate, no weight decay).

  Args:
    b1: momentum (EMA, bias corrected) of the grafted direction; 0 disables.
    b2: EMA decay of the Kronecker factors (1.0: running sums, Adagrad-like).
    epsilon: ridge relative to each factor's largest eigenvalue.
    diag_eps: epsilon of the diagonal (graft / fallback) directions.
    exponent: "shampoo2" (-1/2 per factor), "classic" (-1/(2k)), "newton"
      (-1) or a float per factor.
    factor_update: "shampoo" (G G^T, G^T G) or "power" (G R~ G^T, G^T L~ G).
    block_size: axes longer than this are cut into blocks (None: never).
    merge_dims: merge consecutive small axes up to this product (None: no).
    max_precond_dim: axes longer than this get no factor (one-sided).
    precondition_1d: full-matrix factors for vectors instead of diagonal.
    precondition_filter: (path, shape) -> bool; False = diagonal fallback.
    graft_type: "adam", "rmsprop", "adagrad", "sgd" or "none".
    graft_b2: decay of the diagonal second moment (default b2; 1: running
      sums without bias correction, Adagrad).
    nesterov: Nesterov momentum.
    start_preconditioning_step: first step (1-based) using the Shampoo
      direction; earlier steps use the graft direction.
    statistics_frequency: update the factors every this many steps.
    preconditioning_frequency: recompute the roots every this many steps.
    root_method: "eigh" or "newton".
    root_float64: eigendecompositions in float64 on the host.
    mu_dtype: momentum dtype (default float32).
    diagnostics: keep, per factor, lambda_max and the root's residual from
      the last root step in the state (`ShampooLeafState`); costs a power
      iteration and p matmuls per factor on root steps only.

  Returns:
    An optax transformation whose state is a `ShampooState`.
  """
  if graft_type not in GRAFT_TYPES:
    raise ValueError(f"graft_type must be one of {GRAFT_TYPES}, got {graft_type!r}")
  if factor_update not in ("shampoo", "power"):
    raise ValueError(f"factor_update must be 'shampoo' or 'power', got {factor_update!r}")
  if root_method not in ("eigh", "newton"):
    raise ValueError(f"root_method must be 'eigh' or 'newton', got {root_method!r}")
  for name, value in (("block_size", block_size), ("merge_dims", merge_dims),
                      ("max_precond_dim", max_precond_dim), ("exponent", exponent)):
    require_static(value, name, "SHAMPOO_STATIC_ARGS")
  if root_method == "newton" and not isinstance(exponent, str):
    _newton_p(float(exponent))  # named exponents are all -1/p
  graft_b2 = b2 if graft_b2 is None else graft_b2
  use_momentum = not (is_python_number(b1) and b1 == 0)
  mu_dtype = jnp.float32 if mu_dtype is None else mu_dtype
  layouts_of = lambda tree: make_layouts(
      tree, block_size=block_size, merge_dims=merge_dims,
      max_precond_dim=max_precond_dim, precondition_1d=precondition_1d,
      precondition_filter=precondition_filter)
  needs_nu = graft_type in ("adam", "rmsprop", "adagrad")
  is_lay = lambda x: isinstance(x, kr.BlockLayout)

  def init_fn(params):
    leaves = jax.tree.map(
        lambda lay, p: init_leaf(lay, p, needs_nu=needs_nu,
                                 diagnostics=diagnostics),
        layouts_of(params), params, is_leaf=is_lay)
    mu = (optax.tree.zeros_like(params, dtype=mu_dtype)
          if use_momentum else None)
    first = jax.tree.leaves(params)[:1]
    count = jnp.zeros([], jnp.int32)
    return ShampooState(on_mesh_of(first[0], count) if first else count,
                        mu, leaves)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    lays, treedef = jax.tree.flatten(layouts_of(updates), is_leaf=is_lay)
    g_list = treedef.flatten_up_to(updates)
    st_list = treedef.flatten_up_to(state.leaves)
    count = optax.safe_int32_increment(state.count)  # t, 1-based
    g32 = [g.astype(jnp.float32) for g in g_list]

    # 1. Diagonal second moments and directions (graft + fallback).
    nu, diag_dir = [], []
    for lay, g, st in zip(lays, g32, st_list):
      v, d = (None, None) if st.nu is None else diagonal_direction(
          lay, g, st.nu, count, graft_type=graft_type, b2=graft_b2,
          eps=diag_eps)
      nu.append(v)
      diag_dir.append(d)

    # 2. Factor statistics, every statistics_frequency steps.
    blocks = [None if lay.is_diagonal else kr.to_blocks(g, lay)
              for lay, g in zip(lays, g32)]
    new_factors = lambda fs: update_factors(lays, blocks, fs,
                                            factor_update=factor_update, b2=b2)
    factors = [st.factors for st in st_list]
    if is_python_number(statistics_frequency) and statistics_frequency == 1:
      factors = new_factors(factors)
    else:
      factors = jax.lax.cond((count - 1) % statistics_frequency == 0,
                             new_factors, lambda f: f, factors)

    # 3. Inverse roots, amortised.
    roots = [st.roots for st in st_list]
    fails = [st.failures for st in st_list]
    diag = [(st.max_eigenvalue, st.root_error) for st in st_list]
    if any(not lay.is_diagonal for lay in lays):
      due = (count >= start_preconditioning_step) & (
          (count - start_preconditioning_step) % preconditioning_frequency == 0)
      keep = lambda op: (list(op[1]), list(op[2]), list(op[3]))
      # In the state's dtypes whatever the (injected, maybe float64) epsilon.
      compute = lambda op: cast_like(refresh_roots(
          lays, *op, exponent=exponent, epsilon=epsilon, method=root_method,
          float64=root_float64, diagnostics=diagnostics), keep(op))
      roots, fails, diag = jax.lax.cond(due, compute, keep,
                                        (factors, roots, fails, diag))

    # 4. Preconditioned, grafted directions; 5. momentum.
    preconditioning = count >= start_preconditioning_step
    outs = [shampoo_direction(lay, g, x, rs, d, preconditioning,
                              graft_type=graft_type)
            for lay, g, x, rs, d in zip(lays, g32, blocks, roots, diag_dir)]
    mu = None
    if use_momentum:
      mu, outs = momentum(outs, treedef.flatten_up_to(state.mu), count,
                          b1=b1, nesterov=nesterov)
      mu = optax.tree.cast(treedef.unflatten(mu), mu_dtype)

    outs = [o.astype(g.dtype) for o, g in zip(outs, g_list)]
    leaves = [ShampooLeafState(tuple(f), tuple(r), v, fl, *dg)
              for f, r, v, fl, dg in zip(factors, roots, nu, fails, diag)]
    new_state = ShampooState(count, mu, treedef.unflatten(leaves))
    return treedef.unflatten(outs), cast_like(new_state, state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def shampoo(
    learning_rate: ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Any = None,
    epsilon: float = 1e-6,
    diag_eps: float = 1e-8,
    exponent: Union[str, float] = "shampoo2",
    factor_update: str = "shampoo",
    block_size: Optional[int] = 1024,
    merge_dims: Optional[int] = None,
    max_precond_dim: Optional[int] = None,
    precondition_1d: bool = False,
    precondition_filter: Optional[PreconditionFilter] = None,
    graft_type: str = "adam",
    graft_b2: Optional[float] = None,
    nesterov: bool = False,
    start_preconditioning_step: int = 1,
    statistics_frequency: int = 1,
    preconditioning_frequency: int = 1,
    root_method: str = "eigh",
    root_float64: bool = False,
    mu_dtype: Any = None,
    diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Shampoo with decoupled weight decay and a learning rate (float or schedule).

  update = -learning_rate * (scale_by_shampoo direction + weight_decay * param)

  The other arguments are those of `scale_by_shampoo`. The numeric hyper-
  parameters (learning_rate, weight_decay, b1, b2, graft_b2, epsilon,
  diag_eps, and the frequencies) can be injected and changed at run time
  without recompiling:
    tx = optax.inject_hyperparams(shampoo, static_args=SHAMPOO_STATIC_ARGS)(
        learning_rate=1e-3, block_size=512)
    state.hyperparams["learning_rate"] = 5e-4
  (With bf16 parameters pass hyperparam_dtype=jnp.float32: optax otherwise
  rounds b2 = 0.999 to 1 in bf16.) The state has the same structure for every
  weight_decay, including 0 (`optimizers.weight_decay`).
  """
  parts = [scale_by_shampoo(
      b1, b2, epsilon=epsilon, diag_eps=diag_eps, exponent=exponent,
      factor_update=factor_update, block_size=block_size,
      merge_dims=merge_dims, max_precond_dim=max_precond_dim,
      precondition_1d=precondition_1d,
      precondition_filter=precondition_filter, graft_type=graft_type,
      graft_b2=graft_b2, nesterov=nesterov,
      start_preconditioning_step=start_preconditioning_step,
      statistics_frequency=statistics_frequency,
      preconditioning_frequency=preconditioning_frequency,
      root_method=root_method, root_float64=root_float64, mu_dtype=mu_dtype,
      diagnostics=diagnostics)]
  parts.append(decoupled_weight_decay(weight_decay, weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
