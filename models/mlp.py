"""A configurable multi-layer perceptron with logical axis names on every weight.

f(x) = W_L act(... act(W_1 x + b_1) ...) + b_L. `loss` gives summed softmax
cross-entropy and accuracy for a batch {"x": [B, d_in], "y": [B] int labels},
in the same form as the language model so the framework drives both alike
(`models.contract`; registered as `model.name=mlp`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models import contract
from models import losses
from models import registry

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu, "gelu": nn.gelu, "silu": nn.silu, "tanh": jnp.tanh,
    "square": jnp.square, "identity": lambda x: x,
}


class MLP(nn.Module):
  hidden_sizes: Sequence[int]
  num_outputs: int
  activation: str = "relu"
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown activation {self.activation!r}; "
                       f"choose from {sorted(ACTIVATIONS)}")
    act = ACTIVATIONS[self.activation]
    x = x.astype(self.dtype)
    sizes = list(self.hidden_sizes) + [self.num_outputs]
    in_axis = "embed"
    for i, size in enumerate(sizes):
      # Hidden layers alternate (embed, mlp) and (mlp, embed), Megatron's column-
      # then row-parallel pairs, so no kernel names one logical axis twice.
      out_axis = "vocab" if i == len(sizes) - 1 else ("mlp" if i % 2 == 0 else "embed")
      x = nn.Dense(
          size, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=nn.with_logical_partitioning(self.kernel_init, (in_axis, out_axis)),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_axis,)),
          name=f"dense_{i}")(x)
      if i < len(sizes) - 1:
        x = act(x)
      in_axis = out_axis
    return x.astype(jnp.float32)

  def loss(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return losses.classification_sums(self(batch["x"]), batch["y"], batch.get("weights"))


@dataclasses.dataclass(frozen=True)
class MLPConfig:
  hidden_sizes: Sequence[int] = (64,)
  num_outputs: int = 10
  activation: str = "relu"
  use_bias: bool = True


@registry.register("mlp", MLPConfig)
def build(cfg: MLPConfig) -> contract.FlaxModel:
  return contract.FlaxModel(MLP(**dataclasses.asdict(cfg)))
