"""AdamW vs Shampoo (classic, Shampoo^2) vs SOAP on the small quickstart LM.

  python -m experiments.launch \
      --config=experiments/optimizer_comparison/comparison_config.py \
      --workdir=runs/optimizer_comparison

Every optimizer trains the same ~0.24M-parameter byte-level LM (the quickstart
test's small model) on the same pydoc batches for the same number of steps,
with the same warmup-cosine schedule, weight decay and gradient clipping; only
the optimizer and its peak learning rate differ. Each optimizer's peak lr is
picked from `learning_rates` (or its own `learning_rates`) by final eval
loss. About 25 minutes on a 2-core CPU (24 runs of 50-75 s).

`get_config("tiny")` (`--config=...comparison_config.py:tiny`) is the
seconds-scale variant used by the test.
Re-running with the same workdir reuses finished runs whose config is
unchanged.
"""
import ml_collections

from experiments.configs import lm_quickstart


def _optimizers(frequency: int) -> ml_collections.ConfigDict:
  """Each entry: framework optimizer name, its kwargs, optional lr grid.

  Shampoo's roots run in float64 on the host (`root_float64`, numpy eigh via
  jax.pure_callback): the classic -1/4 and the -1/2 roots of these small,
  ill-conditioned factors are then exact to float32, so the comparison is of
  the update rules, not of float32 eigh round-off. SOAP uses its default
  basis refresh (one QR step after a first eigh), as in Vyas et al. (2024).
  """
  betas = dict(b1=0.9, b2=0.95)  # AdamW's (config.optimizer.b1/b2) for all
  return ml_collections.ConfigDict(dict(
      adamw=dict(name="adamw", label="AdamW", kwargs={}, learning_rates=()),
      shampoo_classic=dict(
          name="shampoo", label="Shampoo (classic, L^-1/4 G R^-1/4)",
          kwargs=dict(exponent="classic", preconditioning_frequency=frequency,
                      root_float64=True, **betas),
          learning_rates=()),
      shampoo2=dict(
          name="shampoo", label="Shampoo^2 (L^-1/2 G R^-1/2)",
          kwargs=dict(exponent="shampoo2", preconditioning_frequency=frequency,
                      root_float64=True, **betas),
          learning_rates=()),
      # Shampoo's ridge epsilon * lambda_max matters: at 1e-6 the -1/2 power
      # amplifies the weakest directions of these factors ~1000x.
      shampoo_classic_eps1e_2=dict(
          name="shampoo", label="Shampoo (classic), eps 1e-2",
          kwargs=dict(exponent="classic", preconditioning_frequency=frequency,
                      root_float64=True, epsilon=1e-2, **betas),
          learning_rates=()),
      shampoo2_eps1e_2=dict(
          name="shampoo", label="Shampoo^2, eps 1e-2",
          kwargs=dict(exponent="shampoo2", preconditioning_frequency=frequency,
                      root_float64=True, epsilon=1e-2, **betas),
          learning_rates=()),
      soap=dict(name="soap", label="SOAP",
                kwargs=dict(precondition_frequency=frequency, **betas),
                learning_rates=()),
  ))


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.optimizer_comparison.comparison"
  # Names in `optimizers`, in table / plot order.
  c.order = ("adamw,shampoo_classic,shampoo2,shampoo_classic_eps1e_2,shampoo2_eps1e_2,"
             "soap")
  c.learning_rates = (3e-3, 1e-2, 3e-2, 1e-1)   # peak lr grid shared by all
  c.optimizers = _optimizers(frequency=10)
  # Each run in its own process (XLA_FLAGS + xla_flags, set before jax is
  # imported there), killed after run_timeout_s: a run that hangs or crashes
  # is reported and the sweep goes on.
  c.isolate = True
  c.run_timeout_s = 3600.0
  c.xla_flags = ""

  # The LM run every setting starts from (experiments.lm schema).
  base = lm_quickstart.get_config()
  base.data.seq_len = 128
  base.model.update(dict(d_model=96, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=24, d_ff=256))
  base.trainer.update(dict(total_steps=100, log_every=5, eval_every=25,
                           progress_every_s=60.0))
  base.schedule.update(dict(warmup_steps=10))
  base.checkpoint.enabled = False
  c.base = base

  if variant == "tiny":
    c.learning_rates = (1e-2,)
    c.base.model.update(dict(d_model=32, num_layers=1, num_heads=4, num_kv_heads=2,
                             head_dim=8, d_ff=64))
    c.base.data.update(dict(seq_len=32, global_batch_size=16, eval_batches=2))
    c.base.trainer.update(dict(total_steps=20, log_every=2, eval_every=10,
                               progress_every_s=1e9, print_progress=False))
    c.base.schedule.update(dict(warmup_steps=2))
    c.optimizers = _optimizers(frequency=5)
    c.run_timeout_s = 600.0
    # One CPU device per run, also under the tests' 8 fake devices: with the
    # host eigh callbacks, 8 device programs on 2 cores can miss XLA's
    # all-reduce rendezvous deadline (40 s) and abort.
    c.xla_flags = "--xla_force_host_platform_device_count=1"
  elif variant:
    raise ValueError(f"unknown variant {variant!r}; use '' or 'tiny'")
  return c
