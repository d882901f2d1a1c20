"""Normalised gradient descent as an optax transformation.

With g the gradient of the whole parameter tree and its global Euclidean norm

    ||g|| = sqrt( sum over leaves l, entries i of g_{l,i}^2 ),

`scale_by_global_norm` returns the direction g / (||g|| + eps), the same
scaling for every leaf, so the direction has norm ~1 whatever the gradient's
size. `normalized_sgd` is the full step

    theta <- theta - eta_t ( g / (||g|| + eps) + lambda theta ),

with decoupled weight decay lambda (0 by default) and eta_t a float or a
schedule. A zero gradient gives a zero direction (eps keeps it finite).

Usage:

  tx = normalized_sgd(optax.cosine_decay_schedule(0.1, 1000))
"""
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optimizers.weight_decay import decoupled_weight_decay

ScalarOrSchedule = optax.ScalarOrSchedule


def global_norm_f32(tree: Any) -> jax.Array:
  """||g|| of a tree, accumulated in float32 whatever the leaves' dtype."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def scale_by_global_norm(eps: float = 1e-30) -> optax.GradientTransformation:
  """g -> g / (||g|| + eps), ||g|| the norm of the whole tree (module doc).

  Args:
    eps: added to the norm, so that a zero gradient gives a zero update.

  Returns:
    A stateless optax transformation; updates keep their dtypes.
  """

  def update_fn(updates, state, params=None):
    del params
    denom = global_norm_f32(updates) + eps
    return jax.tree.map(lambda g: (g / denom).astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def normalized_sgd(
    learning_rate: ScalarOrSchedule,
    weight_decay: float = 0.0,
    *,
    weight_decay_mask: Any = None,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
  """Normalised gradient descent: -eta (g / (||g|| + eps) + weight_decay theta).

  Args:
    learning_rate: eta, a float or an optax schedule of the step count.
    weight_decay: decoupled weight decay lambda (applied after normalising).
    weight_decay_mask: which parameters decay (as `optax.add_decayed_weights`).
    eps: see `scale_by_global_norm`.
  """
  parts = [scale_by_global_norm(eps),
           decoupled_weight_decay(weight_decay, weight_decay_mask)]
  parts.append(optax.scale_by_learning_rate(learning_rate))
  return optax.chain(*parts)
