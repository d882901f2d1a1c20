"""Modular addition mod 11, quadratic net (Morwani et al. 2024, Sec. 4).

Max L_{2,3} normalised margin sqrt(2/27) / (sqrt(11) * 10); 5 frequencies,
96 neurons (~19 per frequency). About 20 s on an idle 2-core CPU.
"""
from experiments.algebraic import default_config


def get_config():
  c = default_config()
  c.task = "modular_addition"
  c.p = 11
  c.model.width = 96
  c.train.steps = 20000
  return c
