"""Kronecker study configs (Morwani et al. 2024, Figure 1 at laptop scale).

  python -m experiments.launch --config=experiments/kronecker/kronecker_config.py:mlp \
      --workdir=runs/kron_mlp

Variants (`get_config(arg)`):
  mlp    (default) MLP 64-64-64-10 on the 8x8 digits: weights 64x64, 64x64,
         64x10. Adam, 1000 steps of batch 32 (~22 epochs). GN view from 128
         inputs x 10 labels (exact Fisher, importance-sampled inputs), Adagrad
         view from every training gradient, shortcuts with 256 batch gradients
         per batch size at every measured step. < 10 min on a 2-core CPU.
  small  the mlp for 500 steps, measured at 0, 100, 250, 500, shortcuts at
         B in (1, 16, 256) with 128 batch gradients at step 500 only (the
         old-vs-new reproduction run; ~3 min).
  cnn    conv3x3(16) -> pool -> conv3x3(32) -> pool -> dense 64 -> dense 10 on
         8x8x1 digits; weights as matrices 9x16, 144x32, 128x64, 64x10 (conv
         kernels (kh*kw*C_in) x C_out; K-FAC sums a a^T and d d^T over output
         pixels). Adam, 1000 steps of batch 32.
  lm     byte-level transformer (`models.transformer`), 2 layers, d_model 32,
         4 heads (2 KV heads, head_dim 8), SwiGLU d_ff 128, on 32-byte windows
         of the pydoc corpus; studied weights per layer: wq 32x32, wk 32x16,
         wv 32x16, wo 32x32, w_gate 32x128, w_up 32x128, w_down 128x32. An
         example is one sequence (its gradient sums over the 32 positions;
         K-FAC is "K-FAC expand"). Adam, 1500 steps of batch 16.
  tiny   smoke test: one 64x10 softmax layer, 8 steps, measured at 0 and 8.

Training runs through `framework.trainer.train` (Adam = `adamw` with weight
decay 0, constant learning rate); the measurements are a hook
(`experiments.kronecker.measurements`). Sections as for every trainer run
(seed, model, data, mesh, sharding, optimizer, schedule, trainer, checkpoint)
plus `study`. The study runs on `mesh.shape` devices (default one) and without
checkpoints: the stored Adagrad gradients live in the hook.
"""
import ml_collections

from framework import sharding

VARIANTS = ("mlp", "small", "cnn", "lm", "tiny")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.kronecker.kronecker_runner"
  c.seed = 0
  # `name` picks the model from `models.registry`; the other keys are the
  # fields of its config dataclass.
  c.model = ml_collections.ConfigDict(dict(name="mlp", hidden_sizes=(64, 64), num_outputs=10,
                                           activation="relu"))
  c.data = ml_collections.ConfigDict(dict(
      name="digits",          # digits | digits_images | pydoc_bytes (kronecker_data)
      batch_size=32,
      train_fraction=0.8,     # digits: the rest is held out
      seq_len=32,             # pydoc_bytes: bytes per sequence
      num_eval=256,           # pydoc_bytes: held-out sequences
  ))
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = sharding.DEFAULT_RULES
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
      kwargs={}))
  c.schedule = ml_collections.ConfigDict(dict(
      name="constant", peak_lr=3e-3, warmup_steps=0))
  c.trainer = ml_collections.ConfigDict(dict(
      total_steps=1000, num_microbatches=1, log_every=50,
      eval_every=1000,  # unused: no eval batches go to the trainer; the study's hook
                        # evaluates on the held-out data at the measured steps
      nan_policy="stop", peak_flops=0.0, progress_every_s=10.0, print_progress=True))
  c.checkpoint = ml_collections.ConfigDict(dict(enabled=False, every=1000, keep=1,
                                                async_save=False))
  c.study = ml_collections.ConfigDict(dict(
      measure_steps=(0, 100, 250, 500, 1000),
      num_examples=128,          # inputs for the GN view (two halves for held out)
      gn_labels="exact",         # "sampled": one y ~ p(.|x) per input; "exact": all y, weight p
      gn_inputs="fisher_trace",  # "uniform" | "fisher_trace" (importance sampling)
      gn_uniform_mix=0.2,        # share of uniform in the importance distribution
      chunk=640,                 # examples per jitted per-example call
      layers=(),                 # substrings to select layers; () = all tapped
      pi_steps=(2, 5),
      tol=1e-7, max_iters=500,   # power iteration to convergence
      svd=True,                  # sigma_2 / sigma_1 of R(H) by ARPACK
      heldout=True,
      adagrad_every=1,           # store every k-th training gradient
      batch_sizes=(1, 4, 16, 64, 256),
      num_batch_grads=256,
      max_batch_examples=8192,   # examples per jitted batch-gradient call
      shortcut_steps=(),         # () = every measure step
      dense_check_max=1024,      # dense H cross-check when m * n <= this
  ))
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "mlp"
  if variant not in VARIANTS:
    raise ValueError(f"unknown Kronecker study variant {variant!r}; choose from {VARIANTS}")
  c = _base()
  if variant == "small":
    c.trainer.update(dict(total_steps=500, eval_every=500))
    c.study.update(dict(measure_steps=(0, 100, 250, 500), batch_sizes=(1, 16, 256),
                        num_batch_grads=128, shortcut_steps=(500,)))
  elif variant == "cnn":
    c.model = ml_collections.ConfigDict(dict(name="cnn", channels=(16, 32), hidden_sizes=(64,),
                                             num_outputs=10))
    c.data.name = "digits_images"
    c.study.update(dict(chunk=320, max_batch_examples=4096))
  elif variant == "lm":
    c.model = ml_collections.ConfigDict(dict(
        name="transformer", vocab_size=256, d_model=32, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, d_ff=128))
    c.data.update(dict(name="pydoc_bytes", batch_size=16, seq_len=32, num_eval=256))
    c.trainer.update(dict(total_steps=1500, eval_every=1500))
    c.study.update(dict(
        measure_steps=(0, 100, 500, 1500),
        num_examples=512, chunk=128, gn_labels="sampled", gn_inputs="uniform",
        adagrad_every=2, batch_sizes=(1, 4, 16, 64), num_batch_grads=128,
        max_batch_examples=1024, shortcut_steps=(1500,)))
  elif variant == "tiny":
    c.model.hidden_sizes = ()  # one 64x10 softmax layer keeps the compiles few
    c.trainer.update(dict(total_steps=8, log_every=4, eval_every=8))
    c.study.update(dict(measure_steps=(0, 8), num_examples=16, chunk=8, pi_steps=(2,),
                        gn_labels="sampled",
                        batch_sizes=(4,), num_batch_grads=8, dense_check_max=640,
                        shortcut_steps=(8,), svd=False))
  return c
