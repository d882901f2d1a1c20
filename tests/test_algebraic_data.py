"""Datasets of the algebraic tasks: complete and correct."""
import itertools
import math

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from data_pipelines import algebraic_tasks as data


def _check_group_axioms(test, group):
  t = group.table
  n = group.order
  # Latin square (each row and column a permutation of the elements).
  for i in range(n):
    test.assertEqual(sorted(t[i]), list(range(n)))
    test.assertEqual(sorted(t[:, i]), list(range(n)))
  # Associativity: (ab)c = a(bc).
  lhs = t[t[:, :, None], np.arange(n)[None, None, :]]
  rhs = t[np.arange(n)[:, None, None], t[None, :, :]]
  np.testing.assert_array_equal(lhs, rhs)
  e = group.identity
  np.testing.assert_array_equal(t[e], np.arange(n))
  np.testing.assert_array_equal(t[:, e], np.arange(n))
  np.testing.assert_array_equal(t[np.arange(n), group.inverse], e)
  # The table is composition of the stored permutations: (a o b)[i] = a[b[i]].
  for a in range(n):
    for b in range(n):
      np.testing.assert_array_equal(group.elements[t[a, b]],
                                    group.elements[a][group.elements[b]])


class ModularAdditionTest(absltest.TestCase):

  def test_complete_and_correct(self):
    p = 7
    ds = data.modular_addition(p)
    self.assertEqual(ds.inputs.shape, (p * p, 2))
    self.assertLen({tuple(x) for x in ds.inputs.tolist()}, p * p)
    for (a, b), c in zip(ds.inputs.tolist(), ds.labels.tolist()):
      self.assertEqual(c, (a + b) % p)
    self.assertEqual(ds.num_classes, p)
    # Every class appears exactly p times.
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(p, p))

  def test_one_hot(self):
    ds = data.modular_addition(5)
    x = data.one_hot_pairs(ds.inputs, 5)
    self.assertEqual(x.shape, (25, 10))
    np.testing.assert_array_equal(x.sum(axis=1), 2.0)
    np.testing.assert_array_equal(x[:, :5].argmax(1), ds.inputs[:, 0])
    np.testing.assert_array_equal(x[:, 5:].argmax(1), ds.inputs[:, 1])


class ParityTest(absltest.TestCase):

  def test_full_cube(self):
    n, k = 6, 3
    ds = data.sparse_parity(n, k)
    self.assertEqual(ds.inputs.shape, (2 ** n, n))
    self.assertLen({tuple(x) for x in ds.inputs.tolist()}, 2 ** n)
    self.assertTrue(np.all(np.abs(ds.inputs) == 1))
    y = data.parity_signs(ds.labels)
    np.testing.assert_array_equal(y, np.prod(ds.inputs[:, :k], axis=1))
    self.assertEqual(int((ds.labels == 0).sum()), 2 ** (n - 1))

  def test_custom_support_and_sample(self):
    ds = data.sparse_parity(8, 2, num_samples=100, support=[3, 6], seed=1)
    self.assertEqual(ds.inputs.shape, (100, 8))
    y = data.parity_signs(ds.labels)
    np.testing.assert_array_equal(y, ds.inputs[:, 3] * ds.inputs[:, 6])
    with self.assertRaises(ValueError):
      data.sparse_parity(5, 2, support=[1, 1])


class GroupTest(parameterized.TestCase):

  @parameterized.parameters(
      ("cyclic", 5, 5), ("dihedral", 4, 8), ("dihedral", 5, 10),
      ("symmetric", 3, 6), ("symmetric", 4, 24), ("alternating", 4, 12))
  def test_group_axioms(self, family, n, order):
    group = data.make_group(family, n)
    self.assertEqual(group.order, order)
    self.assertLen({tuple(e) for e in group.elements.tolist()}, order)
    _check_group_axioms(self, group)

  def test_symmetric_group_is_all_permutations(self):
    for n in (3, 4, 5):
      group = data.symmetric_group(n)
      self.assertEqual(group.order, math.factorial(n))
      self.assertEqual(sorted(map(tuple, group.elements.tolist())),
                       sorted(itertools.permutations(range(n))))
    self.assertEqual(data.symmetric_group(5).table.shape, (120, 120))

  def test_cyclic_is_addition(self):
    group = data.cyclic_group(9)
    a, b = np.meshgrid(np.arange(9), np.arange(9), indexing="ij")
    np.testing.assert_array_equal(group.table, (a + b) % 9)

  def test_non_abelian(self):
    for group in (data.symmetric_group(3), data.dihedral_group(4)):
      self.assertFalse(np.array_equal(group.table, group.table.T))
    self.assertEqual(data.dihedral_group(4).elements.shape[1], 4)

  def test_composition_dataset(self):
    group = data.symmetric_group(4)
    ds = data.group_composition(group)
    self.assertEqual(ds.inputs.shape, (24 * 24, 2))
    self.assertLen({tuple(x) for x in ds.inputs.tolist()}, 24 * 24)
    for (a, b), c in zip(ds.inputs.tolist(), ds.labels.tolist()):
      np.testing.assert_array_equal(group.elements[c],
                                    group.elements[a][group.elements[b]])

  def test_unknown_family(self):
    with self.assertRaises(ValueError):
      data.make_group("sporadic", 3)


if __name__ == "__main__":
  absltest.main()
