"""Per-layer gradients of flax models through method interceptors ("taps").

Every nn.Dense / nn.Conv (2-D, stride 1, SAME) and the transformer's
Attention / SwiGLU projections (`models.transformer`) record their input rows
a_p and add a zero probe to their output, whose gradient is d_p, so that one
example's gradient of a weight viewed as a matrix W (m x n) is

    G = sum_p a_p d_p^T   (p runs over positions: tokens, pixels),

and its K-FAC factors are sum_p a_p a_p^T (m x m) and sum_p d_p d_p^T (n x n)
("K-FAC expand" for shared weights). The taps re-implement only Attention and
SwiGLU (checked against the model in tests/test_kronecker_study.py).

`per_example_grads` gives the samples G_i of the Gauss-Newton view (labels
drawn from the model, y ~ p(. | x), or weighted by p(y | x)); `batch_grads`
gives mini-batch gradients G_B = (1/B) sum_{i in B} G_i for the shortcuts.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import transformer

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
               positions: Array, segment_ids: Array, cache=None, starts=None) -> Array:
  """transformer.Attention.__call__ (training form) with taps on wq, wk, wv and wo.

  The taps see q/k/v before biases and RoPE: the linear maps' own outputs.
  """
  if cache is not None:
    raise NotImplementedError("taps cover the training forward, not KV-cache decoding")
  cfg, p = module.cfg, _module_params(module)
  pre = "/".join(module.path)
  x = x.astype(cfg.dtype)
  rows = x.reshape(-1, x.shape[-1])
  dt = cfg.dtype
  q = tap.linear(pre + "/wq", rows, jnp.einsum("btd,dnh->btnh", x, p["wq"].astype(dt)))
  k = tap.linear(pre + "/wk", rows, jnp.einsum("btd,dkh->btkh", x, p["wk"].astype(dt)))
  v = tap.linear(pre + "/wv", rows, jnp.einsum("btd,dkh->btkh", x, p["wv"].astype(dt)))
  if cfg.qkv_bias:
    q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
  freqs = transformer.rope_frequencies(cfg)
  q = transformer.rope(q, positions, freqs)
  k = transformer.rope(k, positions, freqs)
  length = x.shape[1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
  if cfg.sliding_window:
    offset = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    causal &= offset < cfg.sliding_window
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


