"""Modular addition mod 71 as in the paper, quadratic net.

35 frequencies; 512 neurons (~15 per frequency: with 160 some frequencies
kept too few neurons and the margin stalled near 0.9 of the max).
Full batch (5041 examples x 71 classes) is ~0.1-0.15 s a step on a 2-core
CPU, so this runs for several minutes.
"""
from experiments.algebraic import default_config


def get_config():
  c = default_config()
  c.task = "modular_addition"
  c.p = 71
  c.model.width = 512
  c.train.steps = 3000
  c.train.lambda_end = 1e-20
  c.train.log_every = 250
  return c
