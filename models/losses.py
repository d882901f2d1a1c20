"""Loss sums shared by models (sums, not means: see `models.contract`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def classification_sums(logits: jax.Array, labels: jax.Array,
                        weights: jax.Array | None = None) -> dict[str, jax.Array]:
  """Summed softmax cross-entropy and accuracy over examples, with their count.

  loss = sum_i w_i (-log softmax(z_i)[y_i]),  accuracy = sum_i w_i [argmax z_i = y_i].
  """
  logits = logits.astype(jnp.float32)
  if weights is None:
    weights = jnp.ones(labels.shape, jnp.float32)
  weights = weights.astype(jnp.float32)
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss": jnp.sum(xent * weights), "accuracy": jnp.sum(correct * weights),
          "count": jnp.sum(weights)}
