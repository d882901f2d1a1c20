"""KV-cache generation and scoring (framework/decoding.py) against full recomputation.

References are independent of the cache path: the model's plain causal
forward (no cache) re-run on the whole prefix for every new token, and numpy
for log-softmax, sampling distributions and chi-square statistics.
"""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import stats

from experiments import generate as generate_cli
from experiments.configs import lm_quickstart
from framework import checkpoint as checkpoint_lib
from framework import decoding
from framework import hf_checkpoint
from framework import mesh as mesh_lib
from framework import optim
from framework import train_state
from models import registry
from models import transformer as tr
from tools import bench_decode

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BASE = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=8, d_ff=48)
PROMPTS = [[5, 9, 3, 17, 2], [40], [7, 7, 8, 1, 33, 20, 11, 4, 9], [12, 30]]


def build(**overrides):
  cfg = tr.TransformerConfig(**{**BASE, **overrides})
  module = tr.TransformerLM(cfg)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(1), jnp.zeros((1, 4), jnp.int32)))
  return module, params["params"]


@functools.lru_cache(maxsize=None)
def full_forward(module):
  """The plain causal forward (no cache), jitted; [1, WIDTH] tokens -> logits."""
  return jax.jit(lambda params, tokens: module.apply({"params": params}, tokens))


WIDTH = 32


def recompute_greedy(module, params, prompt, steps):
  """Greedy continuation by re-running the full forward on the whole prefix.

  The prefix is right-padded to a fixed width (one compilation); causal
  attention makes the logits at position len - 1 independent of the padding.
  """
  seq, logits = list(prompt), []
  for _ in range(steps):
    tokens = np.zeros((1, WIDTH), np.int32)
    tokens[0, :len(seq)] = seq
    z = np.asarray(full_forward(module)(params, tokens))[0, len(seq) - 1]
    logits.append(z)
    seq.append(int(np.argmax(z)))
  return seq[len(prompt):], np.stack(logits)


def np_log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def draws(logits, n, **kwargs):
  """n samples from `sample_logits` on one row of logits, one key each."""
  keys = jax.random.split(jax.random.PRNGKey(0), n)
  fn = jax.jit(jax.vmap(lambda k: decoding.sample_logits(jnp.asarray(logits)[None], k,
                                                        **kwargs)[0]))
  return np.asarray(fn(keys))


class CacheDecodingTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("gqa", {}),
      ("mha", dict(num_kv_heads=4)),
      ("mqa_untied_bias", dict(num_kv_heads=1, tie_embeddings=False, qkv_bias=True)),
      ("sliding_window", dict(sliding_window=3)),
  )
  def test_cache_equals_full_recompute(self, overrides):
    module, params = build(**overrides)
    steps = 8
    result = decoding.generate(module, params, PROMPTS, max_new_tokens=steps,
                               return_logits=True)
    self.assertEqual(result.tokens.shape, (len(PROMPTS), steps))
    for b, prompt in enumerate(PROMPTS):
      want_tokens, want_logits = recompute_greedy(module, params, prompt, steps)
      np.testing.assert_array_equal(result.tokens[b], want_tokens, err_msg=f"row {b}")
      np.testing.assert_allclose(result.logits[b], want_logits, atol=2e-5, rtol=1e-4,
                                 err_msg=f"row {b}")
    self.assertEqual(result.finish_reason, ["length"] * len(PROMPTS))
    np.testing.assert_array_equal(result.num_generated, [steps] * len(PROMPTS))

  def test_sliding_window_matters(self):
    # The window test above would be vacuous if the window changed nothing.
    full, params = build()
    windowed = tr.TransformerLM(tr.TransformerConfig(**{**BASE, "sliding_window": 3}))
    tokens = np.zeros((1, WIDTH), np.int32)
    tokens[0, :9] = PROMPTS[2]
    a = np.asarray(full_forward(full)(params, tokens))[0, :9]
    b = np.asarray(full_forward(windowed)(params, tokens))[0, :9]
    np.testing.assert_allclose(a[:3], b[:3], atol=1e-5)   # inside the window: the same
    self.assertGreater(np.abs(a[3:] - b[3:]).max(), 1e-3)

  def test_ragged_batch_equals_each_prompt_alone(self):
    module, params = build()
    batch = decoding.generate(module, params, PROMPTS, max_new_tokens=8, return_logits=True)
    for b, prompt in enumerate(PROMPTS):
      alone = decoding.generate(module, params, [prompt], max_new_tokens=8, cache_size=32,
                                return_logits=True)
      np.testing.assert_array_equal(batch.tokens[b], alone.tokens[0])
      np.testing.assert_allclose(batch.logits[b], alone.logits[0], atol=2e-5, rtol=1e-4)

  def test_array_prompts_equal_list_prompts(self):
    module, params = build()
    tokens, lengths = decoding.prompt_arrays(PROMPTS, pad_id=0)
    a = decoding.generate(module, params, PROMPTS, max_new_tokens=8)
    # Garbage after each prompt's length must not matter.
    noisy = tokens.copy()
    for b, n in enumerate(lengths):
      noisy[b, n:] = 61
    b = decoding.generate(module, params, (noisy, lengths), max_new_tokens=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)

  def test_sharded_mesh_equals_one_device(self):
    module, params = build()
    mesh = mesh_lib.create_mesh(dict(data=2, fsdp=2, tensor=2))
    self.assertEqual(mesh.devices.size, 8)
    one = decoding.generate(module, params, PROMPTS, max_new_tokens=8, return_logits=True)
    sharded = decoding.generate(module, params, PROMPTS, max_new_tokens=8, mesh=mesh,
                                return_cache=True, return_logits=True)
    np.testing.assert_array_equal(sharded.tokens, one.tokens)
    np.testing.assert_allclose(sharded.logits, one.logits, atol=2e-5, rtol=1e-4)
    for layer in ("layer_0", "layer_1"):
      for kind in ("k", "v"):
        arr = sharded.cache[layer][kind]
        self.assertEqual(arr.shape, (4, 32, 2, 8))
        self.assertEqual(arr.sharding.spec, jax.sharding.PartitionSpec(
            ("data", "fsdp"), None, "tensor", None))
        # batch 4 over data x fsdp = 4, kv heads 2 over tensor = 2: one row, one head each
        self.assertEqual(arr.addressable_shards[0].data.shape, (1, 32, 1, 8))
    # Sampling on the mesh draws the same tokens as on one device.
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=5)
    np.testing.assert_array_equal(
        decoding.generate(module, params, PROMPTS, mesh=mesh, **kw).tokens,
        decoding.generate(module, params, PROMPTS, **kw).tokens)

  def test_score_on_mesh_equals_one_device(self):
    module, params = build()
    mesh = mesh_lib.create_mesh(dict(data=2, fsdp=2, tensor=2))
    one = decoding.score(module, params, PROMPTS, batch_size=4)
    sharded = decoding.score(module, params, PROMPTS, batch_size=4, mesh=mesh)
    for a, b in zip(one, sharded):
      np.testing.assert_allclose(a, b, atol=1e-5)


class StopAndValidationTest(absltest.TestCase):

  def test_stop_tokens_stop_rows_independently(self):
    module, params = build()
    steps = 8
    free = decoding.generate(module, params, PROMPTS, max_new_tokens=steps)
    # Stop on row 0's third token: each row stops at its own first occurrence.
    stop = int(free.tokens[0, 2])
    result = decoding.generate(module, params, PROMPTS, max_new_tokens=steps,
                               stop_tokens=(stop, 63), pad_id=0)
    for b in range(len(PROMPTS)):
      row = list(free.tokens[b])
      hits = [i for i, t in enumerate(row) if t in (stop, 63)]
      n = hits[0] + 1 if hits else steps
      self.assertEqual(int(result.num_generated[b]), n, f"row {b}")
      self.assertEqual(result.finish_reason[b], "stop" if hits else "length")
      np.testing.assert_array_equal(result.tokens[b, :n], row[:n])
      np.testing.assert_array_equal(result.tokens[b, n:], 0)
    self.assertEqual(result.finish_reason[0], "stop")
    self.assertLessEqual(int(result.num_generated[0]), 3)

  def test_every_row_stopping_exits_early(self):
    module, params = build()
    free = decoding.generate(module, params, PROMPTS, max_new_tokens=1)
    result = decoding.generate(module, params, PROMPTS, max_new_tokens=12,
                               stop_tokens=tuple(int(t) for t in free.tokens[:, 0]),
                               pad_id=0, return_logits=True)
    np.testing.assert_array_equal(result.num_generated, 1)
    np.testing.assert_array_equal(result.tokens[:, 1:], 0)
    # The loop never ran: no logits were written after the prefill's.
    np.testing.assert_array_equal(result.logits[:, 1:], 0.0)

  def test_long_prompt_rejected_before_compiling(self):
    module, params = build()
    before = decoding._generate_fn.cache_info().misses
    with self.assertRaisesRegex(ValueError, r"prompt row 2 has 9 tokens; with "
                                r"max_new_tokens=4 it needs 13 cache slots but cache_size=12"):
      decoding.generate(module, params, PROMPTS, max_new_tokens=4, cache_size=12)
    with self.assertRaisesRegex(ValueError, r"prompt row 1, token 0: id 64 is outside"):
      decoding.generate(module, params, [[1], [64]], max_new_tokens=2)
    with self.assertRaisesRegex(ValueError, r"prompt row 1 is empty"):
      decoding.generate(module, params, [[1], []], max_new_tokens=2)
    with self.assertRaisesRegex(ValueError, r"top_p=0.0 must be in \(0, 1\]"):
      decoding.generate(module, params, [[1]], max_new_tokens=2, top_p=0.0)
    self.assertEqual(decoding._generate_fn.cache_info().misses, before)
    # Exactly at the limit is fine.
    out = decoding.generate(module, params, PROMPTS, max_new_tokens=3, cache_size=12)
    self.assertEqual(out.tokens.shape, (4, 3))

  def test_prompt_lengths_share_a_compilation(self):
    module, params = build()
    decoding.generate(module, params, [[1, 2, 3]], max_new_tokens=3, cache_size=32)
    before = decoding._generate_fn.cache_info().misses
    decoding.generate(module, params, [[1, 2, 3, 4, 5, 6, 7]], max_new_tokens=3, cache_size=32)
    self.assertEqual(decoding._generate_fn.cache_info().misses, before)


class SamplingTest(parameterized.TestCase):
  # A constructed distribution, its ids shuffled so that order != id.
  PROBS = np.array([0.02, 0.25, 0.05, 0.4, 0.03, 0.15, 0.1], np.float64)

  def chi_square_ok(self, samples, expected_probs):
    counts = np.bincount(samples, minlength=len(expected_probs))
    support = expected_probs > 0
    self.assertEqual(counts[~support].sum(), 0, "a filtered-out token was drawn")
    _, pvalue = stats.chisquare(counts[support], expected_probs[support] * len(samples))
    self.assertGreater(pvalue, 1e-4, f"counts {counts} vs {expected_probs}")

  def test_top_k_draws_only_the_top_k_with_renormalised_frequencies(self):
    logits = np.log(self.PROBS)
    samples = draws(logits, 20000, temperature=1.0, top_k=3)
    want = np.where(self.PROBS >= np.sort(self.PROBS)[-3], self.PROBS, 0)
    self.chi_square_ok(samples, want / want.sum())
    self.assertEqual(set(np.unique(samples)), {1, 3, 5})

  def test_top_p_keeps_smallest_set_with_mass_at_least_p(self):
    logits = np.log(self.PROBS)
    # Sorted: 0.4, 0.25, 0.15, 0.1, ... mass before: 0, 0.4, 0.65, 0.8: p = 0.75 keeps three.
    samples = draws(logits, 20000, temperature=1.0, top_p=0.75)
    want = np.where(np.isin(np.arange(7), [3, 1, 5]), self.PROBS, 0)
    self.chi_square_ok(samples, want / want.sum())
    # p at most the top mass keeps the top token only.
    np.testing.assert_array_equal(draws(logits, 200, temperature=1.0, top_p=0.3), 3)

  def test_temperature_top_k_top_p_combined(self):
    logits = np.log(self.PROBS) * 1.7
    t = 2.0
    samples = draws(logits, 20000, temperature=t, top_k=4, top_p=0.8)
    q = np.exp(logits / t)
    q /= q.sum()
    top4 = np.argsort(-q)[:4]
    q = np.where(np.isin(np.arange(7), top4), q, 0)
    q /= q.sum()
    order = np.argsort(-q)
    before = np.cumsum(q[order]) - q[order]
    kept = order[before < 0.8]
    want = np.where(np.isin(np.arange(7), kept), q, 0)
    self.assertLess(len(kept), 4)   # the case exercises both filters
    self.chi_square_ok(samples, want / want.sum())

  def test_plain_temperature_matches_softmax(self):
    logits = np.log(self.PROBS)
    samples = draws(logits, 20000, temperature=0.5)
    q = self.PROBS ** 2
    self.chi_square_ok(samples, q / q.sum())

  def test_temperature_zero_is_greedy(self):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(32, 50)).astype(np.float32))
    key = jax.random.PRNGKey(3)
    want = np.argmax(np.asarray(logits), -1)
    np.testing.assert_array_equal(decoding.sample_logits(logits, key, 0.0, 5, 0.5), want)
    traced = jax.jit(lambda z, k, t: decoding.sample_logits(z, k, t, 5, 0.5))
    np.testing.assert_array_equal(traced(logits, key, 0.0), want)
    self.assertFalse(np.array_equal(traced(logits, key, 1.0), want))
    module, params = build()
    greedy = decoding.generate(module, params, PROMPTS, max_new_tokens=8)
    zero = decoding.generate(module, params, PROMPTS, max_new_tokens=8, temperature=0.0,
                             top_k=3, top_p=0.5, seed=9)
    np.testing.assert_array_equal(zero.tokens, greedy.tokens)
    want_row, _ = recompute_greedy(module, params, PROMPTS[0], 8)
    np.testing.assert_array_equal(zero.tokens[0], want_row)

  def test_fixed_seed_reproduces(self):
    module, params = build()
    kw = dict(max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9)
    a = decoding.generate(module, params, PROMPTS, seed=3, **kw)
    b = decoding.generate(module, params, PROMPTS, seed=3, **kw)
    c = decoding.generate(module, params, PROMPTS, seed=4, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    self.assertFalse(np.array_equal(a.tokens, c.tokens))

  def test_sampled_generation_respects_top_k(self):
    module, params = build()
    result = decoding.generate(module, params, PROMPTS, max_new_tokens=8, temperature=1.0,
                               top_k=2, top_p=0.9, seed=1, return_logits=True)
    for b in range(len(PROMPTS)):
      for i in range(8):
        top2 = np.argsort(-result.logits[b, i])[:2]
        self.assertIn(int(result.tokens[b, i]), top2.tolist())


class ScoreTest(absltest.TestCase):

  def test_score_equals_numpy_log_softmax_of_full_forward(self):
    module, params = build()
    seqs = PROMPTS + [[3], [], list(range(1, 30))]
    got = decoding.score(module, params, seqs, batch_size=2)
    self.assertLen(got, len(seqs))
    for n, seq in enumerate(seqs):
      self.assertEqual(got[n].shape, (max(len(seq) - 1, 0),))
      if len(seq) < 2:
        continue
      tokens = np.zeros((1, WIDTH), np.int32)
      tokens[0, :len(seq)] = seq
      logits = np.asarray(full_forward(module)(params, tokens), np.float64)[0, :len(seq)]
      want = np_log_softmax(logits)[np.arange(len(seq) - 1), seq[1:]]
      np.testing.assert_allclose(got[n], want, atol=1e-5, err_msg=f"sequence {n}")

  def test_score_texts_with_and_without_bos(self):
    module, params = build()

    class Chars:  # seqio-like: encode adds nothing
      def encode(self, text):
        return [ord(c) - 90 for c in text]

    texts = ["hello", "abc"]
    plain = decoding.score_texts(module, params, texts, Chars(), batch_size=2)
    with_bos = decoding.score_texts(module, params, texts, Chars(), bos_id=0, batch_size=2)
    self.assertEqual([len(s) for s in plain], [4, 2])
    self.assertEqual([len(s) for s in with_bos], [5, 3])
    direct = decoding.score(module, params, [[0] + Chars().encode(t) for t in texts])
    for a, b in zip(with_bos, direct):
      np.testing.assert_allclose(a, b, atol=1e-6)
    totals = decoding.total_log_prob(with_bos)
    self.assertAlmostEqual(totals[1], float(np.sum(direct[1], dtype=np.float64)), places=5)

  def test_score_rejects_out_of_vocabulary_ids(self):
    module, params = build()
    with self.assertRaisesRegex(ValueError, r"sequence 1, token 2: id 70 is outside"):
      decoding.score(module, params, [[1, 2], [1, 2, 70]], batch_size=2)


class TextGenerationTest(absltest.TestCase):

  def test_generate_texts_strips_stop_token(self):
    module, params = build()

    class Letters:
      eos_id = 1
      def encode(self, text):
        return [ord(c) - 60 for c in text]
      def decode(self, ids):
        return "".join(chr(i + 60) for i in ids)

    free = decoding.generate(module, params, [Letters().encode("AB")], max_new_tokens=6)
    want = Letters().decode(free.tokens[0].tolist())
    out = decoding.generate_texts(module, params, Letters(), ["AB"], max_new_tokens=6,
                                  stop_at_eos=False)
    self.assertEqual(out, [want])
    stop = int(free.tokens[0, 3])
    first = free.tokens[0].tolist().index(stop)
    out = decoding.generate_texts(module, params, Letters(), ["AB"], max_new_tokens=6,
                                  stop_tokens=(stop,), stop_at_eos=False)
    self.assertEqual(out, [want[:first]])


class TransformersReferenceTest(parameterized.TestCase):
  """Our KV-cache greedy decoding of imported checkpoints equals transformers'
  own `generate(do_sample=False)` (tests/fixtures/hf, made by tools/make_hf_fixtures.py)."""

  @parameterized.parameters("llama", "llama3_scaled", "mistral", "qwen2")
  def test_greedy_matches_transformers_generate(self, name):
    cfg, params = hf_checkpoint.load_hf(os.path.join(FIXTURES, name))
    with np.load(os.path.join(FIXTURES, name, "expected.npz")) as e:
      e = {k: e[k] for k in e.files}
    module = tr.TransformerLM(cfg)
    steps = e["greedy"].shape[1]
    full = decoding.generate(module, params, (e["prompts"], e["prompt_lengths"]),
                             max_new_tokens=steps)
    np.testing.assert_array_equal(full.tokens, e["greedy"])
    ragged = decoding.generate(module, params, (e["ragged_prompts"],
                                                e["ragged_prompt_lengths"]),
                               max_new_tokens=steps)
    np.testing.assert_array_equal(ragged.tokens, e["ragged_greedy"])
    if name == "mistral":   # the window is shorter than prompt + generation
      self.assertLess(cfg.sliding_window, e["prompts"].shape[1] + steps)


def _tiny_run_config():
  c = lm_quickstart.get_config()
  c.model.update(dict(vocab_size=384, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, d_ff=48))
  c.data.update(dict(seq_len=16, global_batch_size=4))
  c.mesh.shape = {"data": 1, "fsdp": 1, "tensor": 1}
  return c


class EntryPointTest(absltest.TestCase):

  def test_load_run_restores_newest_checkpoint_and_generates(self):
    workdir = self.create_tempdir().full_path
    config = _tiny_run_config()
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    model = registry.build(config.model)
    tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, 10))
    example = {k: np.zeros((1, 16), np.int32)
               for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1,
                                       async_save=False)
    for step, seed in ((3, 1), (7, 2)):   # the newest (step 7, seed 2) must be restored
      params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), example))
      state = train_state.TrainState(step=jnp.int32(step), params=params,
                                     opt_state=tx.init(params), rng=jax.random.PRNGKey(0))
      ckpt.save(step, state, None, force=True)
    ckpt.close()
    lm = generate_cli.load_run(workdir)
    self.assertIn("step 7", lm.source)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 lm.params, state.params)
    self.assertEqual((lm.bos_id, lm.stop_tokens), (0, (1,)))   # byte vocabulary: EOS id 1
    outs = generate_cli.generate(lm, ["ab", [7, 8]], max_new_tokens=6, stop_at_eos=False)
    want = decoding.generate(model.module, state.params,
                             [[0] + list(lm.vocabulary.encode("ab")), [0, 7, 8]],
                             max_new_tokens=6)
    self.assertEqual([c.new_ids for c in outs], want.tokens.tolist())
    self.assertEqual(outs[0].text, lm.vocabulary.decode(want.tokens[0].tolist()))
    section = generate_cli.report_samples(model.module, state.params, lm.vocabulary,
                                          max_new_tokens=4)
    self.assertIn("## Samples", section)
    self.assertEqual(section.count("```text"), len(generate_cli.SAMPLE_PROMPTS))

  def test_load_run_errors_name_the_problem(self):
    missing = os.path.join(self.create_tempdir().full_path, "nope")
    with self.assertRaisesRegex(generate_cli.GenerateError, "nope.*no such directory"):
      generate_cli.load_run(missing)
    workdir = self.create_tempdir().full_path
    with self.assertRaisesRegex(generate_cli.GenerateError, "config.json not found"):
      generate_cli.load_run(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(_tiny_run_config().to_json_best_effort())
    with self.assertRaisesRegex(generate_cli.GenerateError, "checkpoints: no checkpoint"):
      generate_cli.load_run(workdir)

  def test_command_line_error_is_one_line_exit_2(self):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.generate", "--hf", os.path.join(FIXTURES, "llama"),
         "--prompt_ids=3,4,5", "--max_new_tokens=40", "--cache_size=32"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"})
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    last = proc.stderr.strip().splitlines()[-1]
    self.assertRegex(last, r"^generate: prompt row 0 has 3 tokens; with max_new_tokens=40 it "
                     r"needs 43 cache slots but cache_size=32")
    self.assertNotIn("Traceback", proc.stderr)



class BenchDecodeTest(absltest.TestCase):

  def test_tiny_benchmark_rows(self):
    logged = []
    rows = bench_decode.run_benchmark(["tiny"], [2], prompt_len=5, new_tokens=4, rounds=1,
                                      log=logged.append)
    self.assertLen(rows, 1)
    row = rows[0]
    self.assertTrue(row["tokens_equal"])   # run_benchmark raises if greedy tokens differ
    for key in ("kv_prefill_tok_s", "plain_prefill_tok_s", "kv_decode_tok_s",
                "plain_decode_tok_s"):
      self.assertGreater(row[key], 0.0, key)
    self.assertAlmostEqual(row["decode_ratio"],
                           row["kv_decode_tok_s"] / row["plain_decode_tok_s"])
    self.assertEqual(logged[0].count("|"), bench_decode.HEADER.splitlines()[0].count("|"))

  def test_quickstart_shape_matches_the_config(self):
    model = dict(lm_quickstart.get_config().model)
    model.pop("name")
    cfg = tr.TransformerConfig(**model)
    self.assertEqual(cfg, tr.TransformerConfig(**bench_decode.SHAPES["quickstart"]))


if __name__ == "__main__":
  absltest.main()
