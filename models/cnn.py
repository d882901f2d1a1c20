"""A small convolutional classifier for tiny images (e.g. 8x8 digits).

f(x) = Dense_L(... relu(Dense_1(flatten(pool(relu(Conv_k(... pool(relu(Conv_1 x)))))))))

Convolutions are 3x3, stride 1, SAME padding; each is followed by ReLU and a
2x2 average pool. Inputs are [batch, height, width, channels]; the output is
fp32 logits [batch, num_outputs]. `loss` takes {"x": images, "y": labels}
(registered as `model.name=cnn`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import contract
from models import losses
from models import registry


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

  def loss(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return losses.classification_sums(self(batch["x"]), batch["y"], batch.get("weights"))


@dataclasses.dataclass(frozen=True)
class CNNConfig:
  channels: Sequence[int] = (16, 32)
  hidden_sizes: Sequence[int] = (64,)
  num_outputs: int = 10
  kernel_size: int = 3


@registry.register("cnn", CNNConfig)
def build(cfg: CNNConfig) -> contract.FlaxModel:
  return contract.FlaxModel(SmallCNN(**dataclasses.asdict(cfg)))
