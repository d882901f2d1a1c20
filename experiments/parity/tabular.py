"""Tabular benchmarks for wide sparse-init MLPs (scikit-learn's shipped sets, no downloads).

Edelman et al. (NeurIPS 2023, Sec. 5) suggest that the sparse-init / wide-net
recipe that wins on sparse parities also helps on tabular data, where a few
of d features (or small groups of them) carry the label, the setting in which
random forests are strong. Here: breast cancer, wine, digits and iris, each
optionally with appended i.i.d. N(0, 1) noise features, split per seed into a
stratified test set and nested training fractions; the MLPs train as one
population (`parity_sweep.sweep`) and random forests are the baseline.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from experiments.parity import parity_sweep

TABULAR_LOADERS = ("breast_cancer", "wine", "digits", "iris")


def load_tabular(name: str) -> tuple[np.ndarray, np.ndarray]:
  """(X float64 [N, d], y int [N]) of a data set shipped with scikit-learn."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  if name not in TABULAR_LOADERS:
    raise ValueError(f"unknown tabular data set {name!r}; choose from {TABULAR_LOADERS}")
  x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
  return np.asarray(x, np.float64), np.asarray(y, np.int64)


def add_noise_features(x: np.ndarray, num_noise: int, seed: int) -> np.ndarray:
  """Appends num_noise i.i.d. N(0, 1) columns (irrelevant features)."""
  rng = np.random.default_rng(seed)
  return np.concatenate([x, rng.standard_normal((x.shape[0], num_noise))], axis=1)


class TabularSplit(NamedTuple):
  x_train: np.ndarray  # [m, d], standardised with training statistics.
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def tabular_split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int,
                  test_fraction: float = 0.25) -> TabularSplit:
  """A stratified test split, then the first `fraction` of the training pool.

  The test set depends only on the seed, so every training fraction of a
  seed is scored on the same points. The training subset has
  m = max(round(fraction * pool), #classes) rows, stratified. Features are
  standardised, x -> (x - mu) / sigma, with the mean and std of the training
  subset (constant columns: sigma = 1, so they become 0).
  """
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  x_pool, x_test, y_pool, y_test = train_test_split(
      x, y, test_size=test_fraction, random_state=seed, stratify=y)
  m = max(int(round(fraction * len(y_pool))), len(np.unique(y)))
  if m < len(y_pool):
    x_pool, _, y_pool, _ = train_test_split(
        x_pool, y_pool, train_size=m, random_state=seed, stratify=y_pool)
  mean, std = x_pool.mean(0), x_pool.std(0)
  std = np.where(std > 1e-12, std, 1.0)
  return TabularSplit(((x_pool - mean) / std).astype(np.float32), y_pool,
                      ((x_test - mean) / std).astype(np.float32), y_test)


def stack_splits(splits: Sequence[TabularSplit]) -> tuple[parity_sweep.SweepData, np.ndarray]:
  """SweepData over splits (training sets zero-padded to the largest) and m [D]."""
  m = np.array([len(s.y_train) for s in splits])
  pad = int(m.max())
  d = splits[0].x_train.shape[1]
  x_train = np.zeros((len(splits), pad, d), np.float32)
  y_train = np.zeros((len(splits), pad), np.float32)
  for i, s in enumerate(splits):
    x_train[i, :m[i]] = s.x_train
    y_train[i, :m[i]] = s.y_train
  x_test = np.stack([s.x_test for s in splits])
  y_test = np.stack([s.y_test for s in splits]).astype(np.float32)
  return parity_sweep.SweepData(x_train, y_train, x_test, y_test), m


def random_forest_accuracy(split: TabularSplit, seed: int, num_trees: int = 200) -> float:
  """Test accuracy of a random forest (scikit-learn defaults) fit on the split."""
  from sklearn.ensemble import RandomForestClassifier  # pylint: disable=g-import-not-at-top
  rf = RandomForestClassifier(n_estimators=num_trees, random_state=seed, n_jobs=1)
  rf.fit(split.x_train, split.y_train)
  return float(np.mean(rf.predict(split.x_test) == split.y_test))
