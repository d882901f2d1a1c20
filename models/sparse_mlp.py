"""Two-layer ReLU MLP with dense or s-sparse initialisation (plain JAX).

    f(x) = sum_{i=1}^{r} a_i relu(<w_i, x> + b_i) + c,      x in R^n,

with width r (10 to 10^4 and more) and a_i in R^C (C = 1 for parity).
Edelman et al. (NeurIPS 2023) compare two initialisations of the first layer:

* dense: w_i ~ N(0, I_n / n);
* s-sparse: each neuron starts on s coordinates drawn uniformly without
  replacement, w_ij ~ N(0, 1/s) on them and w_ij = 0 elsewhere.

Both give <w_i, x> unit variance on the hypercube, and s = n is the dense
init (up to the random support, which is then everything). With a hidden
(n, k) parity of support S, a neuron whose initial support contains S is a
"lottery ticket": it sees an (s, k) parity, whose signal is ~ (n/s)^{k/2}
times stronger than for a dense neuron. A width-r net holds about
r C(n-k, s-k) / C(n, s) of them, so width buys luck.

Only the initialisation is sparse; training updates every weight.
Biases b_i ~ U(-bias_scale, bias_scale) (a bias is needed: without it the odd
part of relu(<w, x>) is linear and carries no degree-3 Fourier mass);
a_i ~ N(0, out_scale^2 / r), c = 0.

Two initialisers draw from this distribution: `host_init` with numpy on the
host (a sweep builds thousands of nets in milliseconds, from integer seeds),
and the model's `init(rng, batch)` with `jax.random` (the model contract).
`apply` and the neuron statistics are jax and work on batched parameters
under `jax.vmap`.

The model (`SparseMLP`, registered as `model.name=sparse_mlp`) meets
`models.contract`: for a batch {"x": [B, n], "y": [B]} its `loss` gives the
sums over the batch of

    hinge:     max(0, 1 - y f(x))           (y in {+-1}, C = 1)
    logistic:  log(1 + exp(-y f(x)))        (y in {+-1}, C = 1)
    xent:      -log softmax(f(x))_y         (y in {0..C-1})

with "accuracy" = the number of correct signs (y f(x) > 0; f = 0 counts as
wrong, so an all-zero net scores 0, not 1/2) or argmaxes, and "count" = B.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models import registry

Params = Dict[str, jax.Array]  # {"w": [r, n], "b": [r], "a": [r, C], "c": [C]}


def sparse_mask(rng: np.random.Generator, width: int, n: int, sparsity: int) -> np.ndarray:
  """[width, n] boolean mask with exactly `sparsity` True entries per row.

  Row i keeps the coordinates of its `sparsity` smallest i.i.d. uniform
  priorities, i.e. a uniformly random s-subset of {0..n-1}.
  """
  if not 1 <= sparsity <= n:
    raise ValueError(f"sparsity must lie in [1, n={n}], got {sparsity}")
  cols = np.argsort(rng.random((width, n)), axis=1)[:, :sparsity]
  mask = np.zeros((width, n), bool)
  mask[np.arange(width)[:, None], cols] = True
  return mask


def host_init(rng: Union[np.random.Generator, int, Sequence[int]], n: int, width: int,
              sparsity: Optional[int] = None, *, num_outputs: int = 1,
              bias_scale: float = 1.0, out_scale: float = 1.0) -> Params:
  """Dense (sparsity None or n) or s-sparse initial parameters (float32 numpy).

  rng: a numpy Generator or its seed. Drawn on the host (no compilation),
  so building thousands of nets for a sweep costs milliseconds.
  """
  rng = np.random.default_rng(rng)
  s = n if sparsity is None else int(sparsity)
  mask = np.ones((width, n), bool) if s == n else sparse_mask(rng, width, n, s)
  w = np.where(mask, rng.standard_normal((width, n)) / np.sqrt(s), 0.0)
  b = rng.uniform(-bias_scale, bias_scale, width)
  a = rng.standard_normal((width, num_outputs)) * (out_scale / np.sqrt(width))
  f32 = lambda v: np.asarray(v, np.float32)
  return {"w": f32(w), "b": f32(b), "a": f32(a), "c": np.zeros(num_outputs, np.float32)}


def apply(params: Params, x: jax.Array) -> jax.Array:
  """f(x) for x [B, n]: returns [B, C]."""
  h = jax.nn.relu(x @ params["w"].T + params["b"])
  return h @ params["a"] + params["c"]


def width_of(params: Params) -> int:
  return params["w"].shape[-2]


def row_nonzeros(params: Params) -> jax.Array:
  """Number of non-zero first-layer weights of each neuron, [..., r]."""
  return jnp.sum(params["w"] != 0, axis=-1)


def neuron_scores(params: Params) -> jax.Array:
  """||(w_i, b_i)||_2 * ||a_i||_2: neuron i's weight in f (ReLU is 1-homogeneous).

  Works on batched params ([..., r]).
  """
  inner = jnp.sqrt(jnp.sum(params["w"] ** 2, -1) + params["b"] ** 2)
  return inner * jnp.linalg.norm(params["a"], axis=-1)


def select_neurons(params: Params, index: jax.Array) -> Params:
  """The sub-network on neurons `index` ([k] ints; last axis of the width).

  The output bias c is kept. Batched params need a batched index [..., k]
  (use jax.vmap).
  """
  return {"w": params["w"][index], "b": params["b"][index],
          "a": params["a"][index], "c": params["c"]}


def support_overlap(params: Params, support: jax.Array) -> jax.Array:
  """[r] ints: |supp(w_i) intersect S|, how many hidden coordinates neuron i sees.

  At an s-sparse init its mean is k s / n; a neuron seeing all k of them is
  a "lucky" one (dense neurons see all coordinates).
  """
  return jnp.sum(params["w"][:, support] != 0, axis=-1)


def covers_support(params: Params, support: jax.Array) -> jax.Array:
  """[r] bool: neuron i's non-zero weights include every coordinate of S."""
  return support_overlap(params, support) == jnp.shape(support)[-1]


# --------------------------------------------------------------------------
# The model contract.

LOSSES = ("hinge", "logistic", "xent")


def _resolve_sparsity(sparsity: Optional[int], n: int) -> int:
  s = n if not sparsity else int(sparsity)
  if not 1 <= s <= n:
    raise ValueError(f"sparsity must lie in [1, n={n}] (0: dense), got {sparsity}")
  return s


def jax_init(rng: jax.Array, n: int, width: int, sparsity: Optional[int] = None, *,
             num_outputs: int = 1, bias_scale: float = 1.0,
             out_scale: float = 1.0) -> Params:
  """`host_init`'s distribution drawn with jax.random (a pure function of `rng`).

  The s-subset of neuron i is the s smallest of n i.i.d. uniform priorities,
  as in `sparse_mask`.
  """
  s = _resolve_sparsity(sparsity, n)
  k_mask, k_w, k_b, k_a = jax.random.split(rng, 4)
  if s == n:
    mask = jnp.ones((width, n), bool)
  else:
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(k_mask, (width, n)), axis=1), axis=1)
    mask = ranks < s
  w = jnp.where(mask, jax.random.normal(k_w, (width, n)) / np.sqrt(s), 0.0)
  b = jax.random.uniform(k_b, (width,), minval=-bias_scale, maxval=bias_scale)
  a = jax.random.normal(k_a, (width, num_outputs)) * (out_scale / np.sqrt(width))
  return {"w": w.astype(jnp.float32), "b": b.astype(jnp.float32),
          "a": a.astype(jnp.float32), "c": jnp.zeros((num_outputs,), jnp.float32)}


def loss_sums(out: jax.Array, y: jax.Array, loss: str) -> Dict[str, jax.Array]:
  """{"loss", "accuracy", "count"} summed over the batch, for outputs f(x) [B, C]."""
  if loss == "xent":
    labels = y.astype(jnp.int32)
    per = optax.softmax_cross_entropy_with_integer_labels(out, labels)
    correct = jnp.argmax(out, -1) == labels
  elif loss in ("hinge", "logistic"):
    margin = y * out[:, 0]
    per = jax.nn.relu(1.0 - margin) if loss == "hinge" else jax.nn.softplus(-margin)
    correct = margin > 0
  else:
    raise ValueError(f"unknown loss {loss!r}; use one of {LOSSES}")
  return {"loss": jnp.sum(per), "accuracy": jnp.sum(correct.astype(jnp.float32)),
          "count": jnp.asarray(out.shape[0], jnp.float32)}


@dataclasses.dataclass(frozen=True)
class SparseMLPConfig:
  """width r; sparsity s of the first-layer init (0: dense); C = num_outputs."""
  width: int = 100
  sparsity: int = 0
  num_outputs: int = 1
  bias_scale: float = 1.0
  out_scale: float = 1.0
  loss: str = "hinge"


@dataclasses.dataclass(frozen=True)
class SparseMLP:
  """The two-layer ReLU MLP seen through `models.contract` (batch {"x", "y"})."""
  config: SparseMLPConfig = SparseMLPConfig()

  def __post_init__(self):
    if self.config.loss not in LOSSES:
      raise ValueError(f"config.model.loss={self.config.loss!r} is not one of {LOSSES}")
    if self.config.loss != "xent" and self.config.num_outputs != 1:
      raise ValueError(f"the {self.config.loss} loss needs num_outputs=1, got "
                       f"{self.config.num_outputs}")

  def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> Params:
    c = self.config
    return jax_init(rng, int(jnp.shape(batch["x"])[-1]), c.width, c.sparsity,
                    num_outputs=c.num_outputs, bias_scale=c.bias_scale, out_scale=c.out_scale)

  def loss(self, params: Params, batch: Mapping[str, jax.Array]) -> Dict[str, jax.Array]:
    return loss_sums(apply(params, batch["x"]), batch["y"], self.config.loss)

  def logical_axes(self, params: Params) -> Dict[str, tuple]:
    del params
    return {"w": ("mlp", "embed"), "b": ("mlp",), "a": ("mlp", None), "c": (None,)}


@registry.register("sparse_mlp", SparseMLPConfig)
def build(cfg: SparseMLPConfig) -> SparseMLP:
  return SparseMLP(cfg)
