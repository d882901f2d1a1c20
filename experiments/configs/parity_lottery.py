"""Lottery tickets in wide sparse-init MLPs on the (50, 3) parity.

Train width-1000, s = 4 sparse-init nets on m = 1000 samples (10 seeds), keep
each net's top-K neurons (K = 16, 64), rewind them to init and retrain; the
control retrains K random neurons of the same init. At m = 1000 narrow nets
mostly fail (see parity_frontier), so a ticket that succeeds carries the
luck of its initialisation.
"""
from experiments.parity_sweep import default_config


def get_config():
  c = default_config()
  c.experiment = "lottery"
  c.lottery.width = 1000
  c.lottery.num_samples = 1000
  c.lottery.sparsity = 4
  c.lottery.num_seeds = 10
  c.lottery.keep = (16, 64)
  return c
