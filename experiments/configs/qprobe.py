"""Q-probe study: a small LM trained here on n-digit addition, k sampled
completions per held-out problem, linear probes on their embeddings trained
with each loss, and softmax(Q / beta) selection against the base sampler,
best-of-k by log-likelihood and the pass@k oracle.

  python -m experiments.launch --config=experiments/configs/qprobe.py \
      --workdir=runs/qprobe
  python -m experiments.launch --config=experiments/configs/qprobe.py:tiny \
      --workdir=/tmp/qprobe_tiny

Variants: `default` (2-digit addition, a ~0.1M-parameter byte LM whose corpus
also holds flagged wrong answers; minutes on a 2-core CPU), `plain` (the same
with a corpus of correct sums only: the control in which the LM never sees a
wrong answer), `tiny` (a smoke test: a few training steps, numbers are not
findings). `hf_dir` runs the same study on a Hugging Face Llama-family
checkpoint directory instead of training an LM (its tokenizer.json is the
vocabulary; without one, `hf_vocab`).
"""
import ml_collections

from experiments.configs import lm_quickstart


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("default", "plain", "tiny"):
    raise ValueError(f"unknown variant {variant!r}: default, plain or tiny")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.runner = "experiments.qprobe.qprobe_runner"
  c.variant = variant
  c.smoke = tiny    # the report labels its numbers as a smoke test, not findings
  c.seed = 0

  # Disjoint problem sets: the LM's training documents, the probe's training
  # prompts and the held-out test prompts.
  c.task = ml_collections.ConfigDict(dict(
      digits=2,
      reverse_answer=True,   # the sum least-significant digit first (learned in fewer steps)
      # Probability of an extra document per problem with a wrong answer marked
      # "!" (arithmetic_task): 0 gives a corpus of correct sums only.
      flag_fraction=0.0 if variant == "plain" else 0.3,
      lm_problems=300 if tiny else 4000,
      select_problems=16 if tiny else 200,   # picks the LM checkpoint (never probe or test)
      probe_problems=24 if tiny else 400,
      test_problems=24 if tiny else 400,
      split_seed=0,
      # The LM checkpoint used: sampled pass@1 on the selection problems nearest
      # the middle of this band (a model that half-solves the task).
      target_pass1=[0.2, 0.6],
  ))

  lm = lm_quickstart.get_config()
  lm.model.update(dict(d_model=32 if tiny else 64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=8 if tiny else 16, d_ff=64 if tiny else 192))
  lm.data.update(dict(seq_len=32 if tiny else 64, global_batch_size=16 if tiny else 64,
                      eval_batches=2))
  lm.schedule.update(dict(peak_lr=2e-2, warmup_steps=2 if tiny else 20))
  lm.trainer.update(dict(total_steps=6 if tiny else 1400, log_every=2 if tiny else 50,
                         eval_every=6 if tiny else 1400, steps_per_call=1 if tiny else 10,
                         print_progress=False, progress_every_s=1e9 if tiny else 60.0))
  # Every checkpoint is kept: the study picks one by its pass@1 (task.target_pass1).
  lm.checkpoint.update(dict(every=3 if tiny else 100, keep=100, async_save=False))
  c.lm = lm

  c.hf_dir = ""           # a Hugging Face checkpoint directory: skip training, probe it
  c.hf_vocab = "byte"     # its vocabulary when the directory has no tokenizer.json
  c.hf_vocab_path = ""

  c.sampling = ml_collections.ConfigDict(dict(
      k=8, temperature=1.0, top_k=0, top_p=1.0,
      max_new_tokens=6,      # 2-digit sums have <= 3 digits, + the stop token
      batch_size=256,
  ))
  c.probe = ml_collections.ConfigDict(dict(
      layer=-1,              # -1: the final norm's output; i: decoder block i's output
      poolings=["last", "mean"],
      losses=["mse", "bce", "pg", "pref"],
      steps=60 if tiny else 400, learning_rate=1e-2, l2=1e-3,
      beta_train=1.0, chunk=0,   # pg: softmax temperature and group size (0: all k)
  ))
  c.eval = ml_collections.ConfigDict(dict(
      betas=[0.0, 0.1, 0.3, 1.0, 3.0],
      seeds=[0, 1] if tiny else [0, 1, 2],   # sampling and probe seeds, one run each
      bootstrap=200 if tiny else 2000,        # resamples of the test problems for the CI
  ))
  # A planted problem: rewards a known linear function of Gaussian features.
  c.planted = ml_collections.ConfigDict(dict(
      n=200 if tiny else 1000, k=8, dim=16 if tiny else 32, noise=0.1, seed=0))
  return c
