"""A small convolutional classifier for tiny images (e.g. 8x8 digits).

f(x) = Dense_L(... relu(Dense_1(flatten(pool(relu(Conv_k(... pool(relu(Conv_1 x)))))))))

Convolutions are 3x3, stride 1, SAME padding; each is followed by ReLU and a
2x2 average pool. Inputs are [batch, height, width, channels]; the output is
fp32 logits [batch, num_outputs].
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallCNN(nn.Module):
  channels: Sequence[int] = (16, 32)
  hidden_sizes: Sequence[int] = (64,)
  num_outputs: int = 10
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    k = self.kernel_size
    for i, c in enumerate(self.channels):
      x = nn.Conv(c, (k, k), padding="SAME", name=f"conv_{i}")(x)
      x = nn.avg_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for i, h in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(h, name=f"dense_{i}")(x))
    return nn.Dense(self.num_outputs, name=f"dense_{len(self.hidden_sizes)}")(x)
