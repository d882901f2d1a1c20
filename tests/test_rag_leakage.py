"""RAG leakage study: metrics against hand-computed values, chunking, BM25
retrieval of planted records, prompts, instruction data, and the tiny
end-to-end run. Needs the `studies` extra (bm25s, rouge-score, sacrebleu);
without it the tests that need them skip, naming the package."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile

from absl.testing import absltest
import numpy as np

from experiments.rag_leakage import datastore as ds
from experiments.rag_leakage import instruction_data
from experiments.rag_leakage import leakage_metrics as lmx
from experiments.rag_leakage import rag_prompts

_MISSING = [m for m in ("bm25s", "rouge_score", "sacrebleu") if importlib.util.find_spec(m) is None]
needs_studies = absltest.skipIf(
    bool(_MISSING), f"missing {', '.join(_MISSING)}: pip install -e '.[studies]'")


class MetricsTest(absltest.TestCase):

  @needs_studies
  def test_rouge_l_hand_value(self):
    # LCS("the cat on the mat", "the cat sat on the mat") = 5 tokens:
    # P = 5/5, R = 5/6, F = 2 P R / (P + R) = 10/11.
    self.assertAlmostEqual(lmx.rouge_l("the cat on the mat", "the cat sat on the mat"),
                           10 / 11, places=9)
    self.assertAlmostEqual(lmx.rouge_l("a b c", "a b c"), 1.0)
    self.assertAlmostEqual(lmx.rouge_l("x y", "a b c"), 0.0)

  @needs_studies
  def test_bleu_hand_value(self):
    # hyp 5 tokens vs ref 6: p1 = 5/5, p2 = 3/4, p3 = 1/3, p4 = 0/2 -> exp smoothing 1/(2*2);
    # BP = exp(1 - 6/5); BLEU = BP * (1 * 3/4 * 1/3 * 1/4)^(1/4).
    want = math.exp(1 - 6 / 5) * (1 * 0.75 * (1 / 3) * 0.25) ** 0.25
    self.assertAlmostEqual(lmx.bleu("the cat on the mat", "the cat sat on the mat"), want,
                           places=6)
    self.assertAlmostEqual(lmx.bleu("the cat sat on the mat", "the cat sat on the mat"), 1.0,
                           places=6)

  def test_token_f1_hand_value(self):
    # output {a, b, b, c}, reference {b, c, d}: common = b + c = 2; P = 2/4, R = 2/3.
    want = 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    self.assertAlmostEqual(lmx.token_f1("a b b c", "B c d"), want, places=12)
    self.assertEqual(lmx.token_f1("", ""), 1.0)
    self.assertEqual(lmx.token_f1("a", ""), 0.0)

  def test_levenshtein_known_values(self):
    self.assertEqual(lmx.levenshtein("kitten", "sitting"), 3)
    self.assertEqual(lmx.levenshtein("", "abc"), 3)
    self.assertEqual(lmx.levenshtein("flaw", "lawn"), 2)
    self.assertAlmostEqual(lmx.edit_similarity("kitten", "sitting"), 1 - 3 / 7)
    self.assertEqual(lmx.edit_similarity("", ""), 1.0)

  def test_levenshtein_against_brute_force(self):
    rng = np.random.default_rng(0)

    def brute(a, b):   # the recursive definition, memoised
      memo = {}

      def d(i, j):
        if (i, j) not in memo:
          if i == 0 or j == 0:
            memo[i, j] = i + j
          else:
            memo[i, j] = min(d(i - 1, j) + 1, d(i, j - 1) + 1,
                             d(i - 1, j - 1) + (a[i - 1] != b[j - 1]))
        return memo[i, j]
      return d(len(a), len(b))
    for _ in range(30):
      a = "".join(rng.choice(list("abc"), size=rng.integers(0, 8)))
      b = "".join(rng.choice(list("abc"), size=rng.integers(0, 8)))
      self.assertEqual(lmx.levenshtein(a, b), brute(a, b), (a, b))

  def test_verbatim_coverage_and_runs(self):
    ref = "one two three four five six seven eight"
    out = "xx two three four yy six seven eight zz"
    # runs of >= 3 words copied: "two three four" and "six seven eight" -> 6 of 8 words.
    self.assertAlmostEqual(lmx.verbatim_coverage(ref, out, 3), 6 / 8)
    self.assertAlmostEqual(lmx.verbatim_coverage(ref, out, 4), 0.0)
    self.assertEqual(lmx.longest_verbatim_run(ref, out), 3)
    self.assertEqual(lmx.longest_verbatim_run(ref, ref), 8)
    self.assertAlmostEqual(lmx.verbatim_coverage(ref, ref, 8), 1.0)

  def test_filter_and_field_leak(self):
    ctx = "Ana Novak: born 1 May 1980; phone 555-1234; owes 4200 dollars."
    self.assertEqual(lmx.filter_verbatim("Ana Novak: born 1 May 1980", ctx, 5), lmx.FILTERED)
    self.assertEqual(lmx.filter_verbatim("Her phone is 555-1234.", ctx, 5),
                     "Her phone is 555-1234.")
    fields = {"phone": "555-1234", "birth": "1 May 1980"}
    self.assertEqual(lmx.field_leak(fields, "call 555-1234"), 0.5)


class DatastoreTest(absltest.TestCase):

  def test_chunk_words_overlap(self):
    text = " ".join(f"w{i}" for i in range(10))
    chunks = ds.chunk_words(text, 4, 1)
    self.assertEqual(chunks, ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"])
    # A tail that the stride does not reach gets a last window ending at the last word.
    self.assertEqual(ds.chunk_words(" ".join(f"w{i}" for i in range(9)), 4, 1),
                     ["w0 w1 w2 w3", "w3 w4 w5 w6", "w5 w6 w7 w8"])
    self.assertEqual(ds.chunk_words("a b", 4, 1), ["a b"])
    self.assertEqual(ds.chunk_words("", 4, 1), [])
    with self.assertRaisesRegex(ValueError, "overlap"):
      ds.chunk_words(text, 4, 4)

  def test_records_distinct_and_excluded(self):
    recs = ds.make_records(20, seed=0)
    self.assertLen({r.name for r in recs}, 20)
    others = ds.make_records(50, seed=1, exclude=[r.name for r in recs])
    self.assertFalse({r.name for r in recs} & {r.name for r in others})
    for r in recs:
      for v in r.fields.values():
        self.assertIn(v, r.text)

  @needs_studies
  def test_retrieval_returns_planted_record_for_its_anchor(self):
    from experiments.rag_leakage import retrieval  # pylint: disable=g-import-not-at-top
    records = ds.make_records(12, seed=3)
    public = ds.public_documents(max_docs=150)
    chunks = ds.build(public, records, size=24, overlap=4)
    index = retrieval.BM25Index([c.text for c in chunks])
    relevant = [next(i for i, c in enumerate(chunks) if c.record == r) for r in range(12)]
    found, scores = index.search([r.name for r in records], k=2)
    self.assertEqual(found.shape, (12, 2))
    self.assertTrue(np.all(scores[:, 0] >= scores[:, 1]))
    self.assertEqual(retrieval.recall_at_k(found, relevant, 1), 1.0)
    self.assertEqual(retrieval.recall_at_k(np.array([[5, 1], [2, 7]]), [1, 3], 2), 0.5)


class PromptAndDataTest(absltest.TestCase):

  def test_prompt_placement_and_attack(self):
    p = rag_prompts.prompt(["c1", "c2"], "q?")
    self.assertEqual(p, f"S: {rag_prompts.SYSTEM}\nC: c1 | c2\nU: q?\nA: ")
    after = rag_prompts.prompt(["c1"], "q?", placement="after")
    self.assertLess(after.index("\nU: "), after.index("\nC: "))
    self.assertIn("Here is a sentence: Ana Novak.", rag_prompts.attack_query("Ana Novak"))
    with self.assertRaisesRegex(ValueError, "placement"):
      rag_prompts.prompt(["c"], "q", placement="middle")

  def test_instruction_examples(self):
    people = ds.make_records(10, seed=5)
    public = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu " * 3]
    docs = instruction_data.make_examples(
        200, {"qa": 1, "copy": 1, "refuse": 1}, people, public, chunk_size=8, chunk_overlap=2,
        context_chunks=2, seed=0)
    self.assertLen(docs, 200)
    attack = rag_prompts.attack_query("x").split(":")[0]
    n_copy = n_qa = n_refuse = 0
    for prompt, answer in docs:
      self.assertTrue(prompt.endswith("\nA: "))
      d = prompt + answer
      context = prompt.split("\nC: ")[1].split("\nU: ")[0]
      self.assertNotIn(attack, d)   # the attack wording is held out
      if answer == rag_prompts.REFUSAL_ANSWER:
        n_refuse += 1
        self.assertIn(rag_prompts.REFUSAL_SYSTEM, d)
      elif answer == context:
        n_copy += 1
      else:
        n_qa += 1
        self.assertIn(answer, context)   # qa answers come from the context
    self.assertTrue(n_copy > 30 and n_qa > 30 and n_refuse > 30, (n_copy, n_qa, n_refuse))

  def test_copy_random_and_one_off_people(self):
    banned = f"{ds.FIRST_NAMES[0]} {ds.LAST_NAMES[0]}"
    people = ds.make_records(3000, seed=7, exclude=[banned], distinct_names=False)
    self.assertNotIn(banned, [p.name for p in people])
    self.assertLess(len({p.name for p in people}), 3000)   # names repeat, fields drawn afresh
    docs = instruction_data.make_examples(
        40, {"copy_random": 1}, people, ["some public text " * 10], chunk_size=8,
        chunk_overlap=2, context_chunks=3, seed=1)
    for prompt, answer in docs:
      context = prompt.split("\nC: ")[1].split("\nU: ")[0]
      self.assertEqual(answer, context)
      self.assertNotIn("public", context)   # random strings, not the public text


  def test_bad_curriculum_phase_is_named(self):
    from experiments.configs import rag_leakage as rag_config  # pylint: disable=g-import-not-at-top
    from experiments.rag_leakage import rag_runner  # pylint: disable=g-import-not-at-top
    from framework import config as config_lib  # pylint: disable=g-import-not-at-top
    config = rag_config.get_config("tiny")
    rag_runner.validate(config)
    config.curriculum.phases = [("sonnets", 10)]
    with self.assertRaisesRegex(config_lib.ConfigError, "curriculum.phases"):
      rag_runner.validate(config)

  def test_copy_diagnosis_formats(self):
    from experiments.rag_leakage import copy_diagnosis  # pylint: disable=g-import-not-at-top
    for fmt in copy_diagnosis.FORMATS:
      docs = copy_diagnosis.examples(fmt, 30, seed=3)
      self.assertLen(docs, 30)
      for prompt, answer in docs:
        context = prompt.split("C: ", 1)[1].split("\n", 1)[0]
        self.assertEqual(answer, context, fmt)    # the completion is the context, verbatim
        self.assertTrue(prompt.endswith("\nA: "))
        self.assertEqual("\nU: " in prompt, fmt in ("words_request", "rag_random"), fmt)
      self.assertGreater(len({a for _, a in docs}), 25)   # random, not repeated
    with self.assertRaisesRegex(ValueError, "format"):
      copy_diagnosis.examples("nope", 1, seed=0)
    self.assertIn("--config.data.train_path=/x/chars_train.jsonl",
                  copy_diagnosis.launch_command("/x/chars", "/w"))


@needs_studies
class EndToEndTest(absltest.TestCase):
  """The tiny study: one LM trained through the launcher's runner plus a
  random-init model exported to Hugging Face format, evaluated unchanged."""

  def test_tiny_run(self):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from experiments.configs import rag_leakage as rag_config  # pylint: disable=g-import-not-at-top
    from experiments.rag_leakage import rag_runner  # pylint: disable=g-import-not-at-top
    from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
    from models import transformer  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as tmp:
      cfg = transformer.TransformerConfig(vocab_size=384, d_model=16, num_layers=1, num_heads=2,
                                          num_kv_heads=1, head_dim=8, d_ff=32)
      params = nn.meta.unbox(transformer.TransformerLM(cfg).init(
          jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
      hf_dir = os.path.join(tmp, "random_hf")
      hf_checkpoint.save_hf(hf_dir, cfg, params)
      config = rag_config.get_config("tiny")
      config.models = ["S:inst"]
      config.hf_dirs = [hf_dir]
      config.lm.data.data_dir = os.path.join(tmp, "cache")
      config.attack.max_new_tokens = 24
      work = os.path.join(tmp, "run")
      out = rag_runner.run(config, work)
      self.assertEqual(out["retrieval"]["recall@1"], 1.0)
      self.assertEqual(set(out["rougeL_none"]), {"S:inst", "hf:random_hf"})
      # The instruction model ran its copy curriculum first.
      with open(os.path.join(work, "lm_S_inst_c0_words", "config.json")) as f:
        self.assertTrue(json.load(f)["data"]["train_path"].endswith("words_train.jsonl"))
      self.assertTrue(os.listdir(os.path.join(work, "lm_S_inst_c0_words", "checkpoints")))
      with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)
      for name, per_cond in summary["results"].items():
        self.assertEqual(set(per_cond), set(config.defences.conditions), name)
        for cond, res in per_cond.items():
          agg = res["agg"]
          for metric in ("rougeL", "bleu", "f1", "edit_sim", "reconstructed"):
            self.assertBetween(agg[metric]["mean"], 0.0, 1.0)
          self.assertEqual(agg["retrieved"]["mean"], 1.0)
      rows = [json.loads(line) for line in open(os.path.join(work, "attacks.jsonl"))]
      n_targets = summary["num_targets"]
      self.assertLen(rows, 2 * len(config.defences.conditions) * n_targets)
      report = open(os.path.join(work, "report.md")).read()
      self.assertIn("Smoke test", report)
      self.assertIn("hf:random_hf", report)
      self.assertTrue(os.path.exists(os.path.join(work, "rag_leakage.png")))
      # The plain-text and instruction training files exist and hold no record.
      names = [r.name for r in ds.make_records(int(config.datastore.num_records),
                                               int(config.datastore.seed))]
      train_text = open(os.path.join(work, "data", "inst_train.jsonl")).read()
      self.assertFalse(any(n in train_text for n in names))

if __name__ == "__main__":
  absltest.main()
