"""(50, 3) offline sparse parity frontier: width x samples x init x seeds.

3 widths x 4 sample sizes x 2 inits (dense, s = 4 sparse) x 10 seeds = 240
runs, SGD lr 0.1 / batch 32 / hinge / weight decay 0.01, at most 4000 steps,
success = test accuracy >= 0.95. All runs of a width train in one vmapped
batch. See experiments/parity_sweep.py; runtime is in the run's report.md.
"""
from experiments.parity_sweep import default_config


def get_config():
  c = default_config()
  c.experiment = "frontier"
  c.grid.widths = (100, 300, 1000)
  c.grid.num_samples = (700, 1000, 1400, 2000)
  c.grid.sparsities = (0, 4)
  c.grid.num_seeds = 10
  return c
