"""Kronecker study (Morwani et al. 2024, Fig. 1): MLP 64-64-64-10 on 8x8 digits.

Weights 64x64, 64x64, 64x10. Adam, 1000 steps of batch 32 (~22 epochs).
GN view from 1024 per-example sampled-label gradients; Adagrad view from
every training gradient; shortcuts with 256 batch gradients per batch size
at every measured step. Budget: < 10 min on the shared 2-core CPU.

  python -m experiments.launch --config=experiments/configs/kronecker_mlp_digits.py \
      --workdir=runs/kron_mlp
"""
from experiments.kronecker_study import default_config


def get_config():
  c = default_config()
  c.model = "mlp"
  c.mlp.hidden_sizes = (64, 64)
  c.train.update(dict(steps=1000, batch_size=32, lr=3e-3))
  c.study.update(dict(
      measure_steps=(0, 100, 250, 500, 1000),
      num_examples=128, chunk=640,       # x 10 labels = 1280 GN samples
      gn_labels="exact", gn_inputs="fisher_trace",
      adagrad_every=1,
      batch_sizes=(1, 4, 16, 64, 256), num_batch_grads=256,
  ))
  return c
