"""(10, 4)-sparse parity on all 2^10 inputs, x^4 net (nu = 5).

Max L_{2,5} normalised margin 4! sqrt(2 * 5^-5). 16 neurons (the
construction needs 2^(k-1) = 8 distinct ones). About 10 s on a 2-core CPU.
"""
from experiments.algebraic import default_config


def get_config():
  c = default_config()
  c.task = "parity"
  c.parity.n = 10
  c.parity.k = 4
  c.model.width = 16
  c.model.activation = "power"
  c.train.steps = 20000
  return c
