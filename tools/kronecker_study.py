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
            to convergence (`optimizers.kronecker.power_iteration_factors`);
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
power iteration. All through the implicit formulas of `optimizers.kronecker`
(never forming H): <H, A (x) B> = mean_i tr(G_i^T A G_i B^T),
|A (x) B| = |A| |B|, |H|^2 = mean_{i,j} <G_i, G_j>^2; R(H) is applied as
vec(B) -> vec(E[G B G^T]).

Gradients come from flax models through method interceptors ("taps"): every
nn.Dense / nn.Conv (stride 1, SAME) and the transformer's Attention / SwiGLU
projections record their input rows a_p and add a zero probe to their output,
whose gradient is d_p. The taps re-implement only Attention and SwiGLU
(checked against the model in tests/test_kronecker_study.py).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import transformer
from optimizers import kronecker as kr

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST

# ----------------------------------------------------------------------------
# Layers and taps.
# ----------------------------------------------------------------------------


class LayerSpec(NamedTuple):
  """A weight viewed as a matrix: rows = prod(shape[:split]), cols = the rest."""
  name: str                 # "/".join(path), e.g. "layer_0/mlp/w_up"
  path: Tuple[str, ...]     # keys into the params tree
  shape: Tuple[int, ...]
  split: int

  @property
  def m(self) -> int:
    return int(np.prod(self.shape[:self.split]))

  @property
  def n(self) -> int:
    return int(np.prod(self.shape[self.split:]))


def get_path(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


class _Tap:
  """Records layer inputs and adds probes to layer outputs during one apply."""

  def __init__(self, probes: Optional[Mapping[str, Array]]):
    self.probes = probes
    self.acts: Dict[str, Array] = {}
    self.out_shapes: Dict[str, Tuple[int, ...]] = {}

  def linear(self, name: str, rows: Array, y: Array) -> Array:
    """rows: (positions, m) inputs of the linear map; y: its output."""
    self.acts[name] = rows
    self.out_shapes[name] = tuple(y.shape)
    if self.probes is None:
      return y
    return y + self.probes[name].reshape(y.shape).astype(y.dtype)


def conv_patches(x: Array, kernel_size: Sequence[int]) -> Array:
  """Rows a_p of a stride-1 SAME convolution: (N*H*W, kh*kw*C), kernel order.

  Row p holds the kh x kw x C input window around output pixel p, ordered
  like a (kh, kw, C, C_out) kernel reshaped to (kh*kw*C, C_out), so that
  y_p = a_p @ kernel.reshape(-1, C_out).
  """
  kh, kw = kernel_size
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
  cols = [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)]
  return jnp.stack(cols, axis=3).reshape(n * h * w, kh * kw * c)


def _module_params(module: nn.Module) -> Dict[str, Array]:
  return nn.meta.unbox(module.variables["params"])


def _swiglu(tap: _Tap, module: transformer.SwiGLU, x: Array) -> Array:
  """transformer.SwiGLU.__call__ with taps on w_gate, w_up, w_down."""
  cfg, p = module.cfg, _module_params(module)
  pre = "/".join(module.path)
  x = x.astype(cfg.dtype)
  rows = x.reshape(-1, x.shape[-1])
  gate = tap.linear(pre + "/w_gate", rows, x @ p["w_gate"].astype(cfg.dtype))
  up = tap.linear(pre + "/w_up", rows, x @ p["w_up"].astype(cfg.dtype))
  hidden = nn.silu(gate) * up
  return tap.linear(pre + "/w_down", hidden.reshape(-1, hidden.shape[-1]),
                    hidden @ p["w_down"].astype(cfg.dtype))


def _attention(tap: _Tap, module: transformer.Attention, x: Array,
               positions: Array, segment_ids: Array) -> Array:
  """transformer.Attention.__call__ with taps on wq, wk, wv (before RoPE) and wo."""
  cfg, p = module.cfg, _module_params(module)
  pre = "/".join(module.path)
  x = x.astype(cfg.dtype)
  rows = x.reshape(-1, x.shape[-1])
  dt = cfg.dtype
  q = tap.linear(pre + "/wq", rows, jnp.einsum("btd,dnh->btnh", x, p["wq"].astype(dt)))
  k = tap.linear(pre + "/wk", rows, jnp.einsum("btd,dkh->btkh", x, p["wk"].astype(dt)))
  v = tap.linear(pre + "/wv", rows, jnp.einsum("btd,dkh->btkh", x, p["wv"].astype(dt)))
  q = transformer.rope(q, positions, cfg.rope_theta)
  k = transformer.rope(k, positions, cfg.rope_theta)
  length = x.shape[1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  mask = (causal[None] & same_segment)[:, None]
  out = jax.nn.dot_product_attention(q, k, v, mask=mask)
  return tap.linear(pre + "/wo", out.reshape(-1, out.shape[-2] * out.shape[-1]),
                    jnp.einsum("btnh,nhd->btd", out, p["wo"].astype(dt)))


def _interceptor(tap: _Tap):
  def intercept(next_fun, args, kwargs, context):
    mod = context.module
    if context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    if isinstance(mod, nn.Dense):
      x = args[0]
      y = next_fun(*args, **kwargs)
      return tap.linear("/".join(mod.path + ("kernel",)), x.reshape(-1, x.shape[-1]), y)
    if isinstance(mod, nn.Conv):
      x = args[0]
      ks = tuple(mod.kernel_size)
      unit = lambda s: s is None or all(int(v) == 1 for v in np.atleast_1d(s))
      if (mod.padding != "SAME" or not unit(mod.strides) or not unit(mod.kernel_dilation)
          or not unit(mod.input_dilation) or mod.feature_group_count != 1 or x.ndim != 4
          or len(ks) != 2):
        raise NotImplementedError("taps support 2-D, stride-1, SAME, ungrouped convolutions")
      y = next_fun(*args, **kwargs)
      return tap.linear("/".join(mod.path + ("kernel",)), conv_patches(x, ks), y)
    if isinstance(mod, transformer.SwiGLU):
      return _swiglu(tap, mod, *args, **kwargs)
    if isinstance(mod, transformer.Attention):
      return _attention(tap, mod, *args, **kwargs)
    return next_fun(*args, **kwargs)
  return intercept


def tapped_apply(module: nn.Module, params, inputs: Array,
                 probes: Optional[Mapping[str, Array]] = None
                 ) -> Tuple[Array, Dict[str, Array], Dict[str, Tuple[int, ...]]]:
  """module.apply with taps: (logits, layer input rows, layer output shapes)."""
  tap = _Tap(probes)
  with nn.intercept_methods(_interceptor(tap)):
    logits = module.apply({"params": params}, inputs)
  return logits, tap.acts, tap.out_shapes


def discover_layers(module: nn.Module, params, example_input: Array,
                    include: Optional[Sequence[str]] = None
                    ) -> Tuple[Tuple[LayerSpec, ...], Dict[str, Tuple[int, ...]]]:
  """The tapped weights of a model for a batch-of-one input, and probe shapes.

  include: optional substrings; keep layers whose name contains any of them.
  """
  def f(params, x):
    _, acts, outs = tapped_apply(module, params, x)
    return {k: a.shape for k, a in acts.items()}, outs
  rows, outs = _static_shapes(f, params, example_input)
  layers = []
  for name, (_, m) in rows.items():
    path = tuple(name.split("/"))
    shape = tuple(int(d) for d in get_path(params, path).shape)
    split = next(s for s in range(1, len(shape)) if int(np.prod(shape[:s])) == m)
    if include and not any(s in name for s in include):
      continue
    layers.append(LayerSpec(name, path, shape, split))
  return tuple(layers), {l.name: outs[l.name] for l in layers}


def _static_shapes(f, *args):
  box = {}

  def g(*a):
    box["out"] = f(*a)
    return 0
  jax.eval_shape(g, *args)
  return box["out"]


# ----------------------------------------------------------------------------
# Gradient samples.
# ----------------------------------------------------------------------------


def _example_loss(module, params, probes, x, y, key, sampled: bool):
  """Summed cross-entropy of one example (x, y) (batch of one inside).

  sampled=True replaces y by labels drawn from the model's own predictive
  distribution (no gradient through the sampling): the true-Fisher / GN view.
  Returns (loss, layer input rows).
  """
  logits, acts, _ = tapped_apply(module, params, x[None], probes)
  labels = y[None]
  if sampled:
    labels = jax.random.categorical(key, jax.lax.stop_gradient(logits))
  loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return loss, acts


def _as_matrix(tree, layer: LayerSpec) -> Array:
  return get_path(tree, layer.path).reshape(layer.m, layer.n)


def zero_probes(probe_shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Array]:
  return {k: jnp.zeros(v, jnp.float32) for k, v in probe_shapes.items()}


def example_taps(module, layers: Tuple[LayerSpec, ...], params, probes0, x: Array,
                 y: Array, key: Array, sampled: bool = True
                 ) -> Tuple[Dict[str, Array], Dict[str, Array], Dict[str, Array]]:
  """One example's gradients G (m, n), input rows a (P, m), output grads d (P, n).

  For every tapped layer G = sum_p a_p d_p^T (= a^T d), checked in the tests.
  """
  grad_fn = jax.grad(lambda p, q: _example_loss(module, p, q, x, y, key, sampled),
                     argnums=(0, 1), has_aux=True)
  (gp, gq), acts = grad_fn(params, probes0)
  gs = {l.name: _as_matrix(gp, l) for l in layers}
  rows = {l.name: acts[l.name].astype(jnp.float32) for l in layers}
  dgr = {l.name: gq[l.name].reshape(-1, l.n) for l in layers}
  return gs, rows, dgr


@functools.partial(jax.jit, static_argnames=("module", "layers", "sampled"))
def per_example_grads(module, layers: Tuple[LayerSpec, ...], params, probes0,
                      xs: Array, ys: Array, keys: Array, sampled: bool = True,
                      weights: Optional[Array] = None
                      ) -> Tuple[Dict[str, Array], Dict[str, Tuple[Array, Array]]]:
  """Per-example gradients sqrt(w_i) G_i (S, m, n) and summed K-FAC factors.

  probes0: `zero_probes(probe_shapes)` from `discover_layers`. weights w_i
  (default 1) make the samples' second moment sum_i w_i vec G_i vec G_i^T,
  e.g. w = p(y | x) over all labels y for the exact Fisher. K-FAC factors:
  (sum_i w_i sum_p a_ip a_ip^T, sum_i w_i sum_p d_ip d_ip^T), d the gradient
  at the layer output of example i's loss.
  """
  if weights is None:
    weights = jnp.ones(xs.shape[0], jnp.float32)

  def one(x, y, key, w):
    gs, rows, dgr = example_taps(module, layers, params, probes0, x, y, key, sampled)
    gs = {k: jnp.sqrt(w) * g for k, g in gs.items()}
    fac = {k: (w * jnp.matmul(rows[k].T, rows[k], precision=_HI),
               w * jnp.matmul(dgr[k].T, dgr[k], precision=_HI)) for k in gs}
    return gs, fac

  gs, fac = jax.vmap(one)(xs, ys, keys, weights)
  return gs, jax.tree.map(lambda f: jnp.sum(f, axis=0), fac)


@functools.partial(jax.jit, static_argnames=("module", "layers"))
def batch_grads(module, layers: Tuple[LayerSpec, ...], params, xs: Array, ys: Array,
                keys: Array, sampled) -> Dict[str, Array]:
  """Mini-batch gradients G_B = (1/B) sum_{i in B} G_i for (N_b, B, ...) inputs.

  Plain module.apply (no taps). sampled (a traced bool): labels drawn from
  the model per example (independently), else the real labels ys.
  """
  def example(p, x, y, key):
    logits = module.apply({"params": p}, x[None])
    drawn = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    labels = jnp.where(sampled, drawn, y[None])
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  def one_batch(xb, yb, kb):
    loss = lambda p: jnp.mean(jax.vmap(example, in_axes=(None, 0, 0, 0))(p, xb, yb, kb))
    g = jax.grad(loss)(params)
    return {l.name: _as_matrix(g, l) for l in layers}

  return jax.vmap(one_batch)(xs, ys, keys)


# ----------------------------------------------------------------------------
# Approximations and metrics.
#
# `analyze` runs everything that needs the samples (layouts, Gram statistics,
# Shampoo's factors, k-step and converged power iterations) in one jitted
# call per sample shape; the metrics below reuse its `Analysis`.
# ----------------------------------------------------------------------------

Samples = kr.GradientSamples

_fit = jax.jit(kr.kronecker_fit_from_samples)
_left = jax.jit(kr.contract_left)
_right = jax.jit(kr.contract_right)


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
  samples = kr.gradient_samples(grads)
  m, n = grads.shape[1:]
  stats = _gram_stats(samples, group)
  factors = {}
  # k simultaneous steps from identities; k = 1 gives Shampoo's L, R exactly.
  ab, done = (jnp.eye(m), jnp.eye(n)), 0
  for k in sorted({1, *pi_steps}):
    ab = kr.simultaneous_power_iteration(samples, k - done, init=ab)
    done = k
    factors["shampoo2" if k == 1 else f"pi{k}"] = ab
  # Converged: the optimizer's alternating iteration (kr.power_iteration_samples)
  # until the direction of A moves by less than tol: 1 - cos = |a - a'|^2 / 2.

  def cond(c):
    it, _, _, _, delta = c
    return (it < max_iters) & (delta >= tol)

  def body(c):
    it, a_prev, _, b, _ = c
    a, b = kr.power_iteration_samples(samples, 1, b)
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
  if not isinstance(samples, kr.GradientSamples):
    samples = kr.gradient_samples(jnp.asarray(np.asarray(samples, np.float32)))
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
  sv = np.linalg.svd(np.asarray(kr.van_loan_rearrange(h, m, n)), compute_uv=False)
  sv_imp = van_loan_singular_values(an.samples, 2)
  diffs.append(abs(sv[1] / sv[0] - sv_imp[1] / sv_imp[0]))
  return float(max(diffs))
