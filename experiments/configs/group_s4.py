"""Composition in S_4 (24 elements), quadratic net.

Real irreps of dims 1, 1, 2, 3, 3; 256 neurons.
"""
from experiments.algebraic import default_config


def get_config():
  c = default_config()
  c.task = "group"
  c.group.family = "symmetric"
  c.group.n = 4
  c.model.width = 256
  c.train.steps = 20000
  c.train.log_every = 1000
  return c
