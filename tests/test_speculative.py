"""Speculative decoding (framework/speculative.py).

References: plain greedy decoding of the target (`decoding.generate`, itself
checked against full recomputation) token for token; for sampling, the exact
target distribution over short continuations from the target's plain
forward and numpy (softmax, top-k), compared with a chi-square test at a
fixed seed; the first-round acceptance probability sum_v min(p(v), q(v)).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from scipy import stats

from framework import decoding
from framework import speculative
from models import matformer as mf
from models import transformer as tr

PROMPTS = [[5, 9, 3, 17, 2], [40], [7, 7, 8, 1, 33, 20, 11, 4, 9], [12, 30]]


@functools.lru_cache(maxsize=None)
def _lm(seed, **fields):
  base = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
              head_dim=8, d_ff=48)
  module = tr.TransformerLM(tr.TransformerConfig(**{**base, **fields}))
  init = jax.jit(lambda k: module.init(k, jnp.zeros((1, 4), jnp.int32))["params"])
  return module, nn.meta.unbox(init(jax.random.PRNGKey(seed)))




@functools.lru_cache(maxsize=None)
def _forward(module):
  return jax.jit(lambda params, tokens: module.apply({"params": params}, tokens))


class GreedyTest(parameterized.TestCase):

  def test_greedy_output_equals_target_greedy(self, gamma=4):
    target, tparams = _lm(1)
    draft, dparams = _lm(2, d_model=16, num_layers=1, d_ff=16, head_dim=4)
    want = decoding.generate(target, tparams, PROMPTS, max_new_tokens=12)
    got = speculative.speculative_generate(target, tparams, draft, dparams, PROMPTS,
                                           max_new_tokens=12, gamma=gamma)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_generated, [12] * 4)
    self.assertLess(got.acceptance_rate, 1.0)    # a random draft: some rejections
    self.assertGreater(got.rounds, 12 // (gamma + 1))

  def test_stop_tokens_cut_rows_as_plain_decoding(self):
    target, tparams = _lm(1)
    draft, dparams = _lm(2, d_model=16, num_layers=1, d_ff=16, head_dim=4)
    plain = decoding.generate(target, tparams, PROMPTS, max_new_tokens=12)
    stop = int(plain.tokens[0, 4])        # row 0 stops at its 5th token (or earlier)
    want = decoding.generate(target, tparams, PROMPTS, max_new_tokens=12, stop_tokens=[stop])
    got = speculative.speculative_generate(target, tparams, draft, dparams, PROMPTS,
                                           max_new_tokens=12, gamma=1, stop_tokens=[stop])
    np.testing.assert_array_equal(got.tokens, want.tokens)
    np.testing.assert_array_equal(got.num_generated, want.num_generated)
    self.assertEqual(got.finish_reason, want.finish_reason)
    self.assertEqual(got.finish_reason[0], "stop")

  def test_target_as_its_own_draft_accepts_everything(self):
    target, tparams = _lm(1)
    got = speculative.speculative_generate(target, tparams, target, tparams, PROMPTS,
                                           max_new_tokens=12, gamma=3)
    self.assertEqual(got.acceptance_rate, 1.0)
    self.assertEqual(got.rounds, 3)             # 4 tokens per round
    self.assertAlmostEqual(got.tokens_per_round, 4.0)

  def test_matformer_sub_model_drafts_for_its_universal_model(self):
    cfg = mf.MatFormerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                             num_kv_heads=2, head_dim=8, d_ff=64, interleave=4)
    module = mf.MatFormerLM(cfg)
    params = nn.meta.unbox(jax.jit(lambda k: module.init(k, jnp.zeros((1, 4), jnp.int32)))(
        jax.random.PRNGKey(0))["params"])
    draft = mf.MatFormerLM(cfg, granularity=8)
    want = decoding.generate(module, params, PROMPTS, max_new_tokens=10)
    got = speculative.speculative_generate(module, params, draft, params, PROMPTS,
                                           max_new_tokens=10, gamma=4)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    # The extracted plain LM is the same target.
    sub, pcfg = mf.extract(params, cfg, None)
    plain = decoding.generate(tr.TransformerLM(pcfg), sub, PROMPTS, max_new_tokens=10)
    np.testing.assert_array_equal(plain.tokens, want.tokens)

  def test_bad_input_is_named(self):
    target, tparams = _lm(1)
    other = tr.TransformerLM(tr.TransformerConfig(vocab_size=32))
    with self.assertRaisesRegex(ValueError, "vocab_size"):
      speculative.speculative_generate(target, tparams, other, None, PROMPTS,
                                       max_new_tokens=4)
    with self.assertRaisesRegex(ValueError, "gamma"):
      speculative.speculative_generate(target, tparams, target, tparams, PROMPTS,
                                       max_new_tokens=4, gamma=0)
    with self.assertRaisesRegex(ValueError, "cache_size"):
      speculative.speculative_generate(target, tparams, target, tparams, PROMPTS,
                                       max_new_tokens=4, cache_size=8)


V = 5
PROMPT = [1, 3, 2]


def _np_probs(z, temperature=1.0, top_k=0):
  z = np.asarray(z, np.float64) / temperature
  if top_k:
    z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
  e = np.exp(z - z.max())
  return e / e.sum()


def _exact_pair_distribution(module, params, temperature, top_k):
  """P(y1, y2 | PROMPT) of the target's sampling, from its plain forward."""
  tokens = np.array([PROMPT + [y1] for y1 in range(V)], np.int32)
  logits = np.asarray(_forward(module)(params, tokens), np.float64)
  p1 = _np_probs(logits[0, len(PROMPT) - 1], temperature, top_k)
  p2 = np.stack([_np_probs(logits[y1, len(PROMPT)], temperature, top_k) for y1 in range(V)])
  return p1[:, None] * p2


def _chi_square(counts, probs):
  """Pearson chi-square with cells of expected count < 5 merged into one."""
  n = counts.sum()
  expected = probs.ravel() * n
  counts = counts.ravel()
  small = expected < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
  return stat, int(keep.sum()) - 1


class SamplingTest(parameterized.TestCase):
  N = 4000

  @parameterized.parameters((1, 1.0, 0), (3, 0.7, 3))
  def test_output_distribution_is_the_targets(self, gamma, temperature, top_k):
    target, tparams = _lm(3, vocab_size=V)
    draft, dparams = _lm(4, vocab_size=V, d_model=16, num_layers=1, d_ff=16, head_dim=4)
    exact = _exact_pair_distribution(target, tparams, temperature, top_k)
    got = speculative.speculative_generate(
        target, tparams, draft, dparams, [PROMPT] * self.N, max_new_tokens=2, gamma=gamma,
        temperature=temperature, top_k=top_k, seed=0)
    counts = np.zeros((V, V))
    np.add.at(counts, (got.tokens[:, 0], got.tokens[:, 1]), 1)
    stat, dof = _chi_square(counts, exact)
    self.assertLess(stat, stats.chi2.ppf(0.999, dof), f"chi2={stat:.1f}, dof={dof}")
    self.assertLess(got.acceptance_rate, 0.95)   # the rejection path is exercised
    self.assertGreater(got.acceptance_rate, 0.05)
    if gamma > 1:
      return
    # Power: the draft's own samples fail the same test.
    own = decoding.generate(draft, dparams, [PROMPT] * self.N, max_new_tokens=2,
                            temperature=temperature, top_k=top_k, seed=0)
    counts = np.zeros((V, V))
    np.add.at(counts, (own.tokens[:, 0], own.tokens[:, 1]), 1)
    self.assertGreater(_chi_square(counts, exact)[0], stats.chi2.ppf(0.999, dof))

  def test_acceptance_rate_is_the_overlap_of_p_and_q(self):
    target, tparams = _lm(3, vocab_size=V)
    draft, dparams = _lm(4, vocab_size=V, d_model=16, num_layers=1, d_ff=16, head_dim=4)
    tokens = np.array([PROMPT], np.int32)
    p = _np_probs(np.asarray(_forward(target)(tparams, tokens))[0, -1])
    q = _np_probs(np.asarray(_forward(draft)(dparams, tokens))[0, -1])
    alpha = float(np.minimum(p, q).sum())
    got = speculative.speculative_generate(target, tparams, draft, dparams, [PROMPT] * self.N,
                                           max_new_tokens=1, gamma=1, temperature=1.0)
    self.assertEqual(got.rounds, 1)
    se = np.sqrt(alpha * (1 - alpha) / self.N)
    self.assertLess(abs(got.acceptance_rate - alpha), 4 * se)


if __name__ == "__main__":
  absltest.main()
