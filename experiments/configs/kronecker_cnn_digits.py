"""Kronecker study (Morwani et al. 2024, Fig. 1): small CNN on 8x8 digits.

conv3x3(16) -> pool -> conv3x3(32) -> pool -> dense 64 -> dense 10; weights
as matrices 9x16, 144x32, 128x64, 64x10 (conv kernels (kh*kw*C_in) x C_out;
K-FAC sums a a^T and d d^T over output pixels). Adam, 1000 steps of batch 32.
"""
from experiments.kronecker_study import default_config


def get_config():
  c = default_config()
  c.model = "cnn"
  c.cnn.update(dict(channels=(16, 32), hidden_sizes=(64,)))
  c.train.update(dict(steps=1000, batch_size=32, lr=3e-3))
  c.study.update(dict(
      measure_steps=(0, 100, 250, 500, 1000),
      num_examples=128, chunk=320,       # x 10 labels = 1280 GN samples
      gn_labels="exact", gn_inputs="fisher_trace",
      adagrad_every=1,
      batch_sizes=(1, 4, 16, 64, 256), num_batch_grads=256,
      max_batch_examples=4096,
  ))
  return c
