"""Decoupled weight decay that keeps one state structure for every value.

    u <- u + lambda theta        (`optax.add_decayed_weights`)

`shampoo`, `soap` and `normalized_sgd` chain it between their direction and
the learning rate, as `optax.adamw` does. A Python `lambda = 0` adds nothing
(and needs no params) but keeps its place in the chain, so the plain factory
and `optax.inject_hyperparams(factory)` -- which passes lambda as an array,
possibly changed at run time -- build the same state tree.
"""
from typing import Any

import optax


def decoupled_weight_decay(weight_decay: Any, mask: Any = None
                           ) -> optax.GradientTransformation:
  """u <- u + weight_decay * theta on the leaves `mask` selects (module doc).

  Args:
    weight_decay: lambda: a number, an array (e.g. injected) or a schedule.
    mask: as in `optax.add_decayed_weights` (None: every leaf).
  """
  if isinstance(weight_decay, (int, float)) and weight_decay == 0:
    nothing = optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (updates, state))
    return nothing if mask is None else optax.masked(nothing, mask)
  return optax.add_decayed_weights(weight_decay, mask)
