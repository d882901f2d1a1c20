"""Curated output is trainable: WARC -> curation pipeline (in process) ->
`data.source=curated` -> the LM runner trains on it, with a deterministic
held-out validation split, and a report like every other source."""
import io
import math
import os
import shutil
import tempfile
from contextlib import redirect_stdout
from unittest import mock

import jax
from absl.testing import absltest

import lm_testlib
from data_pipelines import lm_sources
from data_pipelines.curation import pipeline
from data_pipelines.curation import seqio_tasks
from data_pipelines.curation_configs import test_corpus
from experiments import lm
from framework import config as config_lib
from tools import make_test_warc

SEQ_LEN = 128
FRACTION = 0.2


def curated_lm_config(curated_dir: str, data_dir: str):
  c = lm_testlib.tiny_config(total_steps=6, log_every=3, eval_every=6)
  c.model.vocab_size = 384   # 259 byte ids
  c.data.update(dict(source="curated", curated_dir=curated_dir, curated_validation_fraction=FRACTION,
                     data_dir=data_dir, seq_len=SEQ_LEN, eval_batches=1))
  c.checkpoint.enabled = False
  return c


class CuratedLMTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="curated_lm_")
    corpus = os.path.join(cls.tmp, "corpus")
    make_test_warc.build(corpus)
    cls.curated = os.path.join(cls.tmp, "curated")
    with redirect_stdout(io.StringIO()):
      cls.curation = pipeline.run(test_corpus.get_config(corpus), cls.curated, "inprocess",
                                  verbose=False)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_split_is_deterministic_disjoint_and_complete(self):
    files = seqio_tasks.curated_shards(self.curated)
    self.assertLen(files, 3)
    train = list(seqio_tasks.iter_texts(files, "train", FRACTION))
    valid = list(seqio_tasks.iter_texts(files, "validation", FRACTION))
    self.assertLen(train + valid, self.curation["docs_out"])
    self.assertNotEmpty(valid)
    self.assertEmpty(set(train) & set(valid))
    self.assertEqual(list(seqio_tasks.iter_texts(files, "validation", FRACTION)), valid)

  def test_lm_trains_on_curated_documents(self):
    workdir = os.path.join(self.tmp, "run")
    config = curated_lm_config(self.curated, os.path.join(self.tmp, "data"))
    summary = lm.run(config, workdir)
    self.assertEqual(summary["final_step"], 6)
    self.assertTrue(math.isfinite(summary["train_loss"]), summary)
    self.assertTrue(math.isfinite(summary["eval_loss"]), summary)
    # Every byte of every training document is a target once, plus one EOS
    # per chunk of at most SEQ_LEN - 1 bytes.
    texts = list(seqio_tasks.iter_texts(seqio_tasks.curated_shards(self.curated), "train", FRACTION))
    sizes = [len(t.encode()) for t in texts]
    self.assertEqual(summary["train_tokens"],
                     sum(sizes) + sum(-(-n // (SEQ_LEN - 1)) for n in sizes))
    self.assertEqual(lm_sources.train_texts(config.data), texts)
    # The report and plot exist for this source too, with the unigram reference.
    for name in ("report.md", "loss.png", "summary.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    with open(os.path.join(workdir, "report.md")) as f:
      report = f.read()
    self.assertIn("source `curated`", report)
    self.assertIn("unigram entropy", report)
    self.assertBetween(summary["unigram_entropy"], 2.5, 5.5)

  def _expect_config_error(self, config, pattern):
    with mock.patch.object(jax, "jit", side_effect=AssertionError("compiled")):
      with self.assertRaisesRegex(config_lib.ConfigError, pattern):
        lm.run(config, self.create_tempdir().full_path)

  def test_missing_curated_dir_is_named(self):
    config = curated_lm_config(os.path.join(self.tmp, "nope"), self.create_tempdir().full_path)
    self._expect_config_error(config, r"config\.data\.curated_dir=.*nope.*directory not found")
    config.data.curated_dir = ""
    self._expect_config_error(config, r"config\.data\.curated_dir=''")

  def test_curated_dir_without_shards_is_named(self):
    empty = self.create_tempdir().full_path
    os.makedirs(os.path.join(empty, "output"))
    config = curated_lm_config(empty, self.create_tempdir().full_path)
    self._expect_config_error(config, r"config\.data\.curated_dir=.*no curated shards")

  def test_validation_fraction_must_hold_something_out(self):
    config = curated_lm_config(self.curated, self.create_tempdir().full_path)
    config.data.curated_validation_fraction = 0.0
    self._expect_config_error(config, r"data\.curated_validation_fraction")


if __name__ == "__main__":
  absltest.main()
