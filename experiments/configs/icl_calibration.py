"""In-context-learning calibration vs shots and model size (runner
experiments/eval/calibration_study.py).

  python -m experiments.launch --config=experiments/configs/icl_calibration.py
  python -m experiments.launch --config=experiments/configs/icl_calibration.py:tiny   # tests
  python -m experiments.launch --config=experiments/configs/icl_calibration.py:full   # accelerator
  python -m experiments.launch --config=experiments/configs/icl_calibration.py \
      --config.checkpoint=hf:/path/to/llama_dir        # evaluate one model, no training

Variants: default (smoke scale: three small transformers, a few hundred steps
on CPU, one seed each: the report labels itself as such), `tiny` (one very
small model, seconds of training: the test), `full` (longer training, three
seeds, more test episodes; meant for an accelerator).
"""
import ml_collections


def _size(name, d_model, num_layers, num_heads, num_kv_heads, head_dim, d_ff):
  return dict(name=name, vocab_size=384, d_model=d_model, num_layers=num_layers,
              num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, d_ff=d_ff)


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.eval.calibration_study"
  c.smoke = True
  c.checkpoint = ""        # run dir or hf:<dir>: evaluate that model instead of training
  c.data_dir = "~/.cache/armillary/data"
  c.seeds = 1              # training seeds per size
  c.progress_every_s = 20.0
  # x = one symbol; each sequence labels the alphabet at random (the rule), 10% label noise.
  # Joint rendering: one byte per example, the symbol's case is its label ("aBcC...").
  # rendering="pair" ("a:1\nc:0...") needs an induction circuit and much longer training.
  c.family = ml_collections.ConfigDict(dict(
      alphabet="abcdefgh", num_features=1, labels="01", noise=0.1,
      continuation_delimiter="", example_delimiter="", rendering="joint"))
  c.data = ml_collections.ConfigDict(dict(
      train_docs=20000, validation_docs=200, examples_per_doc=126, seed=0))
  c.sizes = (
      _size("xs", 32, 2, 2, 1, 16, 96),
      _size("s", 64, 2, 4, 2, 16, 192),
      _size("m", 96, 3, 4, 2, 24, 288),
  )
  c.size_names = ""        # comma-separated subset of `sizes` ("": all)
  c.train = ml_collections.ConfigDict(dict(
      total_steps=300, global_batch_size=32, seq_len=128, peak_lr=1e-2, warmup_steps=30,
      log_every=50, eval_batches=2))
  c.eval = ml_collections.ConfigDict(dict(
      shots=(0, 1, 2, 4, 8, 16, 32), num_episodes=1500, episode_seed=123, split_seed=7,
      num_bins=10, bootstrap_resamples=500, bootstrap_seed=0, batch_size=64, max_seq_len=512,
      prompt_prefix=""))     # text before every prompt (for models without a BOS id)
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1)))
  if variant == "tiny":
    c.sizes = (_size("xs", 16, 1, 2, 1, 8, 32),)
    c.data.update(dict(train_docs=200, validation_docs=40, examples_per_doc=24))
    c.train.update(dict(total_steps=4, global_batch_size=8, seq_len=32, log_every=2,
                        eval_batches=1))
    c.eval.update(dict(shots=(0, 2, 8), num_episodes=60, bootstrap_resamples=50,
                       batch_size=32, max_seq_len=64))
  elif variant == "full":
    c.smoke = False
    c.seeds = 3
    c.train.update(dict(total_steps=5000, global_batch_size=64))
    c.eval.update(dict(num_episodes=3000, bootstrap_resamples=1000))
  elif variant != "default":
    raise ValueError(f"icl_calibration variant {variant!r} must be default, tiny or full")
  return c
