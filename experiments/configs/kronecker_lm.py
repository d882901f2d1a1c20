"""Kronecker study (Morwani et al. 2024, Fig. 1): byte-level transformer LM.

models.transformer.TransformerLM, 2 layers, d_model 32, 4 heads (2 KV heads,
head_dim 8), SwiGLU d_ff 128, trained with Adam on windows of 32 bytes of the
pydoc corpus (data_pipelines.corpus, bytes read directly, no TF). Studied
weights per layer: wq 32x32, wk 32x16, wv 32x16, wo 32x32, w_gate 32x128,
w_up 32x128, w_down 128x32. An example is one sequence (its gradient sums
over the 32 positions; K-FAC is "K-FAC expand": sums over positions).
"""
from experiments.kronecker_study import default_config


def get_config():
  c = default_config()
  c.model = "lm"
  c.lm.update(dict(vocab_size=256, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                   head_dim=8, d_ff=128, seq_len=32))
  c.train.update(dict(steps=1500, batch_size=16, lr=3e-3))
  c.study.update(dict(
      measure_steps=(0, 100, 500, 1500),
      num_examples=512, chunk=128,
      adagrad_every=2,
      batch_sizes=(1, 4, 16, 64), num_batch_grads=128,
      max_batch_examples=1024,
      shortcut_steps=(1500,),
  ))
  return c
