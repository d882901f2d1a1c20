"""Composition in S_3, quadratic net; irreps: trivial, sign, 2-dim standard."""
from experiments.algebraic import default_config


def get_config():
  c = default_config()
  c.task = "group"
  c.group.family = "symmetric"
  c.group.n = 3
  c.model.width = 64
  c.train.steps = 20000
  return c
