"""ICL harness: task files, prompt assembly, span scoring against a direct
log-softmax computation, sharding, centered accuracy, the runner end to end."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from experiments.configs import eval_core
from experiments.eval import checkpoint_loading
from experiments.eval import core_eval
from experiments.eval import icl_scoring
from experiments.eval import icl_tasks
from framework import config as config_lib
from framework import mesh as mesh_lib
from models import transformer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "icl")


def _tiny_lm(vocab=64, seed=0):
  cfg = transformer.TransformerConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4,
                                      num_kv_heads=2, head_dim=8, d_ff=64)
  module = transformer.TransformerLM(cfg)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  return module, nn.meta.unbox(params)


_FORWARD = {}


def _logits(module, params, row, width=32):
  """The plain model's logits of one row, right-padded to `width` (causal: later
  tokens never change earlier logits), so one compilation serves every row."""
  if id(module) not in _FORWARD:
    _FORWARD[id(module)] = jax.jit(lambda p, t: module.apply({"params": p}, t))
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(row)] = row
  return np.asarray(_FORWARD[id(module)](params, tokens)[0], np.float64)[:len(row)]


def _direct(module, params, row, start):
  """sum_j log_softmax(z_{s+j-1})[y_j] and greedy match, in numpy."""
  z = _logits(module, params, row)
  z = z - z.max(axis=-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  idx = np.arange(start, len(row))
  y = np.asarray(row)[idx]
  return logp[idx - 1, y].sum(), bool(np.all(z[idx - 1].argmax(-1) == y))


def _random_pairs(rng, n, vocab=64):
  """Rows of at most 15 tokens: one length bucket, so few compilations."""
  return [(list(rng.integers(1, vocab, size=int(rng.integers(1, 11)))),
           list(rng.integers(1, vocab, size=int(rng.integers(1, 5))))) for _ in range(n)]


class TaskFormatTest(parameterized.TestCase):

  def test_fewshot_indices_deterministic_and_valid(self):
    a = icl_tasks.fewshot_indices(10, 3, 4, seed=7)
    np.testing.assert_array_equal(a, icl_tasks.fewshot_indices(10, 3, 4, seed=7))
    self.assertNotIn(3, a)
    self.assertLen(set(a.tolist()), 4)
    self.assertTrue(np.all((a >= 0) & (a < 10)))
    self.assertFalse(np.array_equal(a, icl_tasks.fewshot_indices(10, 3, 4, seed=8)))
    # every other index is reachable
    seen = set()
    for s in range(200):
      seen |= set(icl_tasks.fewshot_indices(10, 3, 1, seed=s).tolist())
    self.assertEqual(seen, set(range(10)) - {3})
    with self.assertRaisesRegex(icl_tasks.TaskError, "at least 10 examples"):
      icl_tasks.fewshot_indices(9, 0, 9, seed=0)

  def test_multiple_choice_prompt_by_hand(self):
    spec = icl_tasks.TaskSpec(label="t", dataset_uri="-", icl_task_type="multiple_choice",
                              continuation_delimiter="\nAnswer: ", example_delimiter="\n\n",
                              prompt_string="Answer the question.\n")
    examples = [{"query": f"Q{i}?", "choices": [f"a{i}", f"b{i}"], "gold": i % 2}
                for i in range(5)]
    reqs = icl_tasks.build_requests(spec, examples, 2, seed=11)
    shots = icl_tasks.fewshot_indices(5, 0, 2, seed=11)
    ans = lambda j: examples[j]["choices"][examples[j]["gold"]]
    # the prompt string is followed by the example delimiter like any other piece
    expected = ("Answer the question.\n\n\n" + "\n\n".join(
        f"Q{j}?\nAnswer: {ans(j)}" for j in shots) + "\n\nQ0?\nAnswer:")
    self.assertLen(reqs, 10)
    self.assertEqual((reqs[0].example, reqs[0].choice), (0, 0))
    self.assertEqual(reqs[0].context, expected)
    self.assertEqual(reqs[0].continuation, " a0")   # the delimiter's space moved over
    self.assertEqual(reqs[1].context, expected)
    self.assertEqual(reqs[1].continuation, " b0")
    # without a prompt string the first piece has no delimiter before it
    zero = icl_tasks.build_requests(icl_tasks.TaskSpec("t", "-", "multiple_choice"), examples, 0)
    self.assertEqual(zero[2].context, "Q1?")
    self.assertEqual(zero[2].continuation, " a1")

  def test_schema_and_lm_prompts(self):
    spec = icl_tasks.TaskSpec(label="s", dataset_uri="-", icl_task_type="schema")
    examples = [{"context_options": [f"x{i}", f"y{i}"], "continuation": f"c{i}.", "gold": 1}
                for i in range(3)]
    reqs = icl_tasks.build_requests(spec, examples, 1, seed=0)
    j = int(icl_tasks.fewshot_indices(3, 1, 1, seed=0)[0])
    r2, r3 = reqs[2], reqs[3]
    self.assertEqual(r2.context, f"y{j} c{j}.\nx1")
    self.assertEqual(r3.context, f"y{j} c{j}.\ny1")
    self.assertEqual(r2.continuation, r3.continuation)
    self.assertEqual(r2.continuation, " c1.")
    lm = icl_tasks.TaskSpec(label="l", dataset_uri="-", icl_task_type="language_modeling")
    reqs = icl_tasks.build_requests(lm, [{"context": "a b", "continuation": "c"}] * 2, 1)
    self.assertEqual((reqs[0].context, reqs[0].continuation), ("a b c\na b", " c"))

  def test_random_baseline_and_centered_accuracy(self):
    spec = icl_tasks.TaskSpec(label="m", dataset_uri="-", icl_task_type="multiple_choice")
    ex = [{"query": "q", "choices": ["a", "b"], "gold": 0},
          {"query": "q", "choices": ["a", "b", "c", "d"], "gold": 0}]
    self.assertAlmostEqual(icl_tasks.random_baseline(spec, ex), (0.5 + 0.25) / 2)
    self.assertAlmostEqual(icl_tasks.centered_accuracy(0.7, 0.25), 0.6)
    self.assertAlmostEqual(icl_tasks.centered_accuracy(0.25, 0.25), 0.0)
    lm = icl_tasks.TaskSpec(label="l", dataset_uri="-", icl_task_type="language_modeling")
    self.assertEqual(icl_tasks.random_baseline(lm, []), 0.0)

  def test_fixture_task_list_loads(self):
    tasks = icl_tasks.load_task_list(os.path.join(FIXTURES, "tasks.json"))
    self.assertEqual([t.icl_task_type for t in tasks],
                     ["language_modeling", "multiple_choice", "schema"])
    self.assertEqual(tasks[1].num_fewshot, (0, 3))
    for t in tasks:
      self.assertTrue(os.path.isfile(t.dataset_uri))
      self.assertNotEmpty(icl_tasks.read_examples(t))

  def test_bad_files_name_file_and_line(self):
    d = self.create_tempdir()
    lines = ('{"query": "q", "choices": ["a", "b"], "gold": 0}\n'
             '{"query": "q", "choices": ["a", "b"], "gold": 2}\n')
    path = d.create_file("bad.jsonl", lines).full_path
    spec = icl_tasks.TaskSpec("bad", path, "multiple_choice")
    with self.assertRaisesRegex(icl_tasks.TaskError, r"bad.jsonl:2: gold=2"):
      icl_tasks.read_examples(spec)
    lines = '{"context": "a", "continuation": "b"}\n{oops\n'
    path2 = d.create_file("broken.jsonl", lines).full_path
    with self.assertRaisesRegex(icl_tasks.TaskError, r"broken.jsonl:2: not valid JSON"):
      icl_tasks.read_examples(icl_tasks.TaskSpec("b", path2, "language_modeling"))
    with self.assertRaisesRegex(icl_tasks.TaskError, "icl_task_type"):
      icl_tasks.TaskSpec.from_dict({"label": "x", "dataset_uri": "y", "icl_task_type": "qa"})
    with self.assertRaisesRegex(icl_tasks.TaskError, "unknown field"):
      icl_tasks.TaskSpec.from_dict({"label": "x", "dataset_uri": "y",
                                    "icl_task_type": "schema", "num_shots": 3})


class ScoringTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.module, cls.params = _tiny_lm()
    cls.pairs = _random_pairs(np.random.default_rng(0), 13)

  @parameterized.parameters((None,), (1,))
  def test_equals_direct_log_softmax(self, bos):
    scorer = icl_scoring.SpanScorer(self.module, self.params, batch_size=4, bos_id=bos)
    got = scorer.score(self.pairs)
    for n, (c, y) in enumerate(self.pairs):
      row = ([] if bos is None else [bos]) + c + y
      want, match = _direct(self.module, self.params, row, len(row) - len(y))
      self.assertAlmostEqual(got.logprob_sum[n], want, places=4)
      self.assertEqual(got.greedy_match[n], match)
      self.assertEqual(got.num_tokens[n], len(y))
    self.assertEqual(scorer.forward_calls, 4)   # ceil(13 / 4) batches, one forward each

  def test_greedy_match_detects_the_model_continuation(self):
    # Extend a context with the model's own greedy tokens: must match; change one: must not.
    context = [5, 9, 2, 7]
    row = list(context)
    for _ in range(3):
      row.append(int(np.argmax(_logits(self.module, self.params, row)[-1])))
    scorer = icl_scoring.SpanScorer(self.module, self.params, batch_size=2)
    wrong = row[4:-1] + [(row[-1] + 1) % 64]
    got = scorer.score([(context, row[4:]), (context, wrong)])
    self.assertEqual(got.greedy_match.tolist(), [True, False])

  def test_batched_equals_one_by_one(self):
    batched = icl_scoring.SpanScorer(self.module, self.params, batch_size=8).score(self.pairs)
    single = icl_scoring.SpanScorer(self.module, self.params, batch_size=1).score(self.pairs)
    np.testing.assert_allclose(batched.logprob_sum, single.logprob_sum, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(batched.greedy_match, single.greedy_match)
    # the benchmark's per-example loop (one unpadded forward each) agrees too
    few = self.pairs[:3]
    loop = icl_scoring.per_request_reference(self.module, self.params, few)
    np.testing.assert_allclose(batched.logprob_sum[:3], loop.logprob_sum, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(batched.greedy_match[:3], loop.greedy_match)

  def test_truncation_keeps_the_newest_context(self):
    pairs = [(list(range(1, 40)), [3, 4])]
    got = icl_scoring.SpanScorer(self.module, self.params, batch_size=1, max_seq_len=10,
                                 bos_id=0).score(pairs)
    row = list(range(32, 40)) + [3, 4]          # the 8 newest context tokens, bos dropped
    want, _ = _direct(self.module, self.params, row, 8)
    self.assertTrue(got.truncated[0])
    self.assertAlmostEqual(got.logprob_sum[0], want, places=4)
    with self.assertRaisesRegex(ValueError, "request 0: the continuation has 10 tokens"):
      icl_scoring.SpanScorer(self.module, self.params, max_seq_len=10).score([([1], [2] * 10)])
    with self.assertRaisesRegex(ValueError, "outside the model's vocabulary"):
      icl_scoring.SpanScorer(self.module, self.params).score([([1], [64])])

  def test_next_token_equals_one_token_spans(self):
    contexts = [c for c, _ in self.pairs]
    cands = [3, 17, 40]
    scorer = icl_scoring.SpanScorer(self.module, self.params, batch_size=4)
    got, _ = scorer.next_token_logprobs(contexts, cands)
    spans = scorer.score([(c, [v]) for c in contexts for v in cands])
    np.testing.assert_allclose(got, spans.logprob_sum.reshape(len(contexts), 3), atol=2e-5)

  def test_sharded_equals_single_device(self):
    mesh = mesh_lib.create_mesh({"data": 4, "fsdp": 1, "tensor": 2})
    sharded = icl_scoring.SpanScorer(self.module, self.params, batch_size=6, mesh=mesh)
    self.assertEqual(sharded.batch_size, 8)   # rounded up to the 4 batch shards
    one = icl_scoring.SpanScorer(self.module, self.params, batch_size=8)
    a, b = sharded.score(self.pairs), one.score(self.pairs)
    np.testing.assert_allclose(a.logprob_sum, b.logprob_sum, atol=2e-5)
    np.testing.assert_array_equal(a.greedy_match, b.greedy_match)
    leaf = sharded.params["layer_0"]["attn"]["wq"]
    self.assertEqual(len(leaf.sharding.device_set), 8)


class UnigramLM(nn.Module):
  """Logits independent of the context: log p(y | anything) = log_softmax(u)[y]."""
  logits: tuple

  def __call__(self, tokens):
    u = jnp.asarray(self.logits, jnp.float32)
    return jnp.broadcast_to(u, tokens.shape + u.shape)


class ConstructedModelTest(absltest.TestCase):

  def test_centered_accuracy_matches_hand_computation(self):
    # bytes: 'a' = 97 + 3, 'b' = 98 + 3 in the byte vocabulary (3 special ids first)
    u = np.full(260, -5.0)
    u[100], u[101] = 2.0, 0.0                 # p(a) > p(b) > everything else
    logp = u - np.log(np.exp(u).sum())
    module = UnigramLM(tuple(u.tolist()))
    encode = lambda t: [b + 3 for b in t.encode()]
    lm = checkpoint_loading.LoadedLM(module, {}, encode, None, "unigram")
    d = self.create_tempdir()
    rows = []
    # 7 examples where gold "aa" beats "ab", "bb", "ba"; 3 where gold "bb" loses to "aa"
    for i in range(10):
      choices = ["aa", "ab", "bb", "ba"]
      rows.append({"query": f"q{i}", "choices": choices, "gold": 0 if i < 7 else 2})
    path = d.create_file("m.jsonl", "\n".join(json.dumps(r) for r in rows)).full_path
    spec = icl_tasks.TaskSpec("m", path, "multiple_choice", num_fewshot=(0, 2),
                              continuation_delimiter=":")
    results, outcomes = core_eval.evaluate(lm, [spec], batch_size=8)
    for r in results:
      self.assertAlmostEqual(r.accuracy, 0.7)
      self.assertAlmostEqual(r.random_baseline, 0.25)
      self.assertAlmostEqual(r.centered_accuracy, (0.7 - 0.25) / 0.75)
    # per-choice scores are the closed-form mean token log-probs
    scored = outcomes[("m", 0)]
    np.testing.assert_allclose(scored.choice_scores[0], [
        logp[100], (logp[100] + logp[101]) / 2, logp[101], (logp[101] + logp[100]) / 2], atol=1e-5)
    self.assertAlmostEqual(core_eval.core_score(results), 0.6)


def _byte_tokenizer_json(path):
  """A tokenizer.json whose id of every byte is the byte's value (byte-level BPE, no merges)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) +
               list(range(0xAE, 0x100)))
  chars, extra = {}, 0
  for b in range(256):     # the GPT-2 byte -> printable character map
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={chars[b]: b for b in range(256)},
                                                   merges=[]))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                          use_regex=False)
  tok.save(path)


class HfCheckpointTest(absltest.TestCase):

  def test_scores_match_transformers_logits(self):
    """hf:<dir> loads, and span scores equal log-softmax of transformers' own logits."""
    import shutil  # pylint: disable=g-import-not-at-top
    src = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama")
    d = os.path.join(self.create_tempdir().full_path, "llama")
    shutil.copytree(src, d)
    _byte_tokenizer_json(os.path.join(d, "tokenizer.json"))
    lm = checkpoint_loading.load("hf:" + d)
    self.assertEqual(lm.encode("AB"), [65, 66])
    self.assertIsNone(lm.bos_id)
    ref = np.load(os.path.join(src, "expected.npz"))
    prompts, logits = ref["prompts"], ref["logits"].astype(np.float64)
    pairs = [(list(map(int, p[:11])), list(map(int, p[11:20]))) for p in prompts]
    got = icl_scoring.SpanScorer(lm.module, lm.params, batch_size=2).score(pairs)
    for b, p in enumerate(prompts):
      z = logits[b] - logits[b].max(axis=-1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
      want = sum(logp[t - 1, p[t]] for t in range(11, 20))
      self.assertAlmostEqual(got.logprob_sum[b], want, delta=1e-3)
      self.assertEqual(got.greedy_match[b], bool(np.all(z[10:19].argmax(-1) == p[11:20])))


class RunnerTest(absltest.TestCase):

  def test_tiny_variant_end_to_end(self):
    config = eval_core.get_config("tiny")
    workdir = self.create_tempdir().full_path
    summary = core_eval.run(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    entries = [(r["label"], r["num_fewshot"]) for r in results["results"]]
    self.assertEqual(entries, [("fixture_lm", 0), ("fixture_lm", 2), ("fixture_mc", 0),
                               ("fixture_mc", 3), ("fixture_schema", 1)])
    for r in results["results"]:
      self.assertBetween(r["accuracy"], 0.0, 1.0)
      self.assertAlmostEqual(r["centered_accuracy"], (r["accuracy"] - r["random_baseline"]) /
                             (1 - r["random_baseline"]))
    self.assertAlmostEqual(summary["core"], np.mean([r["centered_accuracy"]
                                                     for r in results["results"]]))
    with open(os.path.join(workdir, "results.md")) as f:
      self.assertIn("CORE", f.read())

  def test_bad_config_names_the_field(self):
    config = eval_core.get_config("tiny")
    config.task_labels = "fixture_lm,nope"
    with self.assertRaisesRegex(config_lib.ConfigError, "task_labels.*nope"):
      core_eval.run(config, self.create_tempdir().full_path)
    config = eval_core.get_config()
    with self.assertRaisesRegex(config_lib.ConfigError, "config.checkpoint"):
      core_eval.run(config, self.create_tempdir().full_path)
    with self.assertRaisesRegex(config_lib.ConfigError, "directory not found"):
      checkpoint_loading.load("/no/such/run")


if __name__ == "__main__":
  absltest.main()
