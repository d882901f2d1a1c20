"""Wide sparse-init MLPs vs dense MLPs vs random forests on sklearn's tabular sets.

breast_cancer, wine, digits, iris (shipped with scikit-learn, no downloads),
each also with 2 x d appended Gaussian noise features; training fractions
0.1 / 0.3 / 1.0 of the non-test pool; 3 seeds.
"""
from experiments.parity_sweep import default_config


def get_config():
  c = default_config()
  c.experiment = "tabular"
  c.tabular.datasets = ("breast_cancer", "wine", "digits", "iris")
  c.tabular.noise_factors = (0, 2)
  c.tabular.fractions = (0.1, 0.3, 1.0)
  c.tabular.num_seeds = 3
  c.tabular.width = 512
  c.tabular.sparsity = 2
  c.tabular.steps = 1000
  return c
