"""scikit-learn's 8x8 handwritten digits as train / test arrays (no download).

1797 grey-level images of the digits 0-9 (UCI "optdigits" test part), bundled
with scikit-learn. Pixels 0..16 are scaled to [0, 1]. The split is a fixed
permutation of all images drawn from `np.random.default_rng(seed)`; the first
`int(train_fraction * N)` of it are the training set, the rest the test set.
Batches: `data_pipelines.batching.BatchIterator(split["train"], batch_size)`.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def digits_split(seed: int = 0, train_fraction: float = 0.8, image: bool = False
                 ) -> dict[str, dict[str, np.ndarray]]:
  """{"train": {"x", "y"}, "test": {"x", "y"}}: x float32 (N, 64) or (N, 8, 8, 1), y int32.

  image=True gives NHWC images (for convolutions), else flat 64-vectors in
  row-major pixel order.
  """
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f"train_fraction={train_fraction} must be in (0, 1)")
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (d.data / 16.0).astype(np.float32)
  if image:
    x = x.reshape((-1,) + IMAGE_SHAPE)
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(seed).permutation(len(y))
  n_train = int(train_fraction * len(y))
  tr, te = perm[:n_train], perm[n_train:]
  return {"train": {"x": x[tr], "y": y[tr]}, "test": {"x": x[te], "y": y[te]}}
