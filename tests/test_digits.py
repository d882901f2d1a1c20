"""data_pipelines.digits: the 8x8 digits split against sklearn's own arrays."""

from absl.testing import absltest
import numpy as np

from data_pipelines import batching
from data_pipelines import digits


class DigitsSplitTest(absltest.TestCase):

  def test_split_partitions_the_dataset(self):
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    raw = load_digits()
    split = digits.digits_split(seed=3, train_fraction=0.75)
    tr, te = split["train"], split["test"]
    n = len(raw.target)
    self.assertEqual(len(tr["y"]), int(0.75 * n))
    self.assertEqual(len(tr["y"]) + len(te["y"]), n)
    self.assertEqual(tr["x"].dtype, np.float32)
    self.assertEqual(tr["y"].dtype, np.int32)
    self.assertBetween(float(tr["x"].min()), 0.0, 0.0)
    self.assertBetween(float(tr["x"].max()), 1.0, 1.0)
    # Every row is a sklearn image / 16 with its own label; train and test
    # together hold every image exactly once.
    ours = np.column_stack([np.concatenate([tr["x"], te["x"]]) * 16.0,
                            np.concatenate([tr["y"], te["y"]])])
    theirs = np.column_stack([raw.data, raw.target])
    sort = lambda a: a[np.lexsort(a.T[::-1])]   # rows in lexicographic order
    np.testing.assert_array_equal(sort(ours), sort(theirs))

  def test_seeded_and_image_layout(self):
    a = digits.digits_split(seed=0)
    b = digits.digits_split(seed=0)
    c = digits.digits_split(seed=1)
    img = digits.digits_split(seed=0, image=True)
    np.testing.assert_array_equal(a["train"]["y"], b["train"]["y"])
    self.assertFalse(np.array_equal(a["train"]["y"], c["train"]["y"]))
    self.assertEqual(img["train"]["x"].shape[1:], digits.IMAGE_SHAPE)
    np.testing.assert_array_equal(img["train"]["x"].reshape(-1, 64), a["train"]["x"])
    with self.assertRaisesRegex(ValueError, "train_fraction"):
      digits.digits_split(train_fraction=1.0)
    # The split feeds the resumable batcher directly.
    it = batching.BatchIterator(a["train"], 32, seed=0)
    self.assertEqual(next(it)["x"].shape, (32, 64))


if __name__ == "__main__":
  absltest.main()
