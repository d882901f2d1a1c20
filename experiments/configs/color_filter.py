"""CoLoR-Filter study: prior on the pool, conditional on the target, scores,
selections for several tau, equal-token target models per selection and
baseline, held-out losses, curves and a report.

  python -m experiments.launch --config=experiments/configs/color_filter.py:tiny \
      --workdir=runs/color_filter_tiny

Variants: `tiny` (a smoke run for a 2-core CPU: minutes), `default` (a
small study for one accelerator). `pool.dir` may name a pool built by
`python -m tools.build_color_pool`; empty, the study builds one in
<workdir>/pool from this machine's offline sources.
"""
import ml_collections

from experiments.configs import lm_quickstart


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("default", "tiny"):
    raise ValueError(f"unknown variant {variant!r}: default or tiny")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.runner = "experiments.color_filter.color_study"
  c.variant = variant
  c.smoke = tiny    # the report labels its numbers as a smoke test, not findings

  c.pool = ml_collections.ConfigDict(dict(
      dir="",                       # empty: build into <workdir>/pool
      root="/", apt_cache="/var/cache/apt/archives",
      domains=["python", "man-commands", "man-c-api", "debian-changelog", "dictionary",
               "fortunes"],
      target_domain="python",
      docs_per_domain=300 if tiny else 3000,
      min_chars=300, max_chars=1000 if tiny else 1500,
      target_fraction=0.3 if tiny else 0.2, heldout_fraction=0.1,
      num_shards=4, seed=0,
  ))

  # The LM every model of the study is: the quickstart's schema, smaller.
  lm = lm_quickstart.get_config()
  lm.model.update(dict(d_model=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
                       d_ff=256) if tiny else {})
  lm.data.seq_len = 128 if tiny else 256
  lm.data.global_batch_size = 16
  lm.data.eval_batches = 64
  lm.trainer.log_every = 25
  lm.trainer.print_progress = False
  lm.checkpoint.async_save = False
  c.lm = lm

  c.prior = ml_collections.ConfigDict(dict(
      total_steps=300 if tiny else 3000, peak_lr=3e-3, warmup_steps=20,
      validation_fraction=0.05))
  c.conditional = ml_collections.ConfigDict(dict(
      total_steps=60 if tiny else 400, peak_lr=1e-3, warmup_steps=5))
  c.scoring = ml_collections.ConfigDict(dict(batch_rows=32, block_size=256))
  c.fasttext = ml_collections.ConfigDict(dict(dim=32, epoch=10, lr=0.5, word_ngrams=2,
                                              seed=0))
  c.selection = ml_collections.ConfigDict(dict(
      taus=[2.0, 4.0] if tiny else [2.0, 4.0, 8.0],
      methods=["color", "cond_only", "fasttext"],   # random is the tau = 1 baseline
      mode="global", runner="inprocess",            # inprocess | beam
      num_output_shards=4, random_seed=0))
  c.targets = ml_collections.ConfigDict(dict(
      total_steps=100 if tiny else 1500,
      seeds=[0, 1] if tiny else [0, 1, 2],
      peak_lr=3e-3, warmup_steps=10,
      eval_every=20 if tiny else 100,
      random_steps_factor=3,   # the random baseline trains this many times longer
  ))
  return c
