"""Offline (n, k) sparse parity data (Edelman et al., NeurIPS 2023).

Inputs are uniform on the hypercube x in {+-1}^n; the label is the parity
(character) of a hidden support S with |S| = k,

    y = chi_S(x) = prod_{i in S} x_i  in {+-1}.

Characters are orthonormal under the uniform distribution:
E_x[chi_S(x) chi_T(x)] = 1[S = T], so a label of support S carries no
correlation with any other parity, in particular with every feature subset of
size < k; this is what makes the problem hard for gradient methods.

"Offline" means a fixed training set of m samples is drawn once and reused
(multi-pass SGD), while the test set is fresh. `seed_datasets` draws one
training pool of `max_m` points per seed; a run with m samples trains on the
first m of them, so runs with growing m see nested training sets.

Everything is numpy (no framework imports); inputs are float32 in {+-1}.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple, Optional, Sequence

import numpy as np


class ParityData(NamedTuple):
  """One dataset, or several stacked along a leading seed axis.

  x_train: float32 [..., m, n] in {+-1}; y_train: float32 [..., m] in {+-1}.
  x_test, y_test: the same for the fresh test set.
  support: int [..., k], the hidden support S (sorted).
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  support: np.ndarray


def sample_inputs(rng: np.random.Generator, num: int, n: int) -> np.ndarray:
  """num uniform points of {+-1}^n as float32 [num, n]."""
  return (2 * rng.integers(0, 2, size=(num, n), dtype=np.int8) - 1).astype(np.float32)


def all_inputs(n: int) -> np.ndarray:
  """All 2^n points of {+-1}^n as float32 [2^n, n] (row i: bits of i)."""
  bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
  return (1 - 2 * bits).astype(np.float32)


def character(x: np.ndarray, subset: Sequence[int]) -> np.ndarray:
  """chi_T(x) = prod_{i in T} x_i (1 for the empty set), shape x.shape[:-1]."""
  subset = list(subset)
  if not subset:
    return np.ones(x.shape[:-1], np.float32)
  return np.prod(x[..., subset], axis=-1).astype(np.float32)


def random_support(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
  """A uniformly random k-subset of {0..n-1}, sorted."""
  if not 0 < k <= n:
    raise ValueError(f"need 0 < k <= n, got n={n}, k={k}")
  return np.sort(rng.choice(n, size=k, replace=False))


def offline_parity(n: int, k: int, m: int, num_test: int, seed: int,
                   support: Optional[Sequence[int]] = None) -> ParityData:
  """A fixed training set of m samples and a fresh test set of num_test.

  The support is random (drawn from `seed`) unless given. The training and
  test sets are independent draws; a test point may repeat a training point
  (probability ~ m / 2^n, negligible for n = 50).
  """
  rng = np.random.default_rng(seed)
  s = random_support(rng, n, k) if support is None else np.sort(np.asarray(support))
  if len(s) != k:
    raise ValueError(f"support {s} does not have k={k} elements")
  x_train = sample_inputs(rng, m, n)
  x_test = sample_inputs(rng, num_test, n)
  return ParityData(x_train, character(x_train, s), x_test, character(x_test, s), s)


def seed_datasets(n: int, k: int, max_m: int, num_test: int,
                  seeds: Sequence[int]) -> ParityData:
  """One offline dataset per seed, stacked: x_train [num_seeds, max_m, n].

  A run with m <= max_m samples uses x_train[seed_index, :m] (nested sets).
  """
  sets = [offline_parity(n, k, max_m, num_test, int(s)) for s in seeds]
  return ParityData(*(np.stack(f) for f in zip(*sets)))


def subsets(n: int, max_size: Optional[int] = None):
  """All subsets of {0..n-1} (of size <= max_size), smallest first."""
  top = n if max_size is None else max_size
  for size in range(top + 1):
    yield from itertools.combinations(range(n), size)
