"""CoLoR-Filter scoring on the framework: per-document mean token loss equals
a direct per-document computation (numpy log-softmax of the plain model's
logits, one unpacked chunk at a time, one device) and the training path's own
loss on seqio-packed batches; sharded over 8 devices equals 1 device and any
batch size; a store killed midway (in process, and a real SIGKILL) resumes
to the same file with every block scored once."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from absl.testing import absltest
import jax
import numpy as np

from data_pipelines.color_filter import score_store
from experiments.color_filter import color_scoring as cs
from framework import mesh as mesh_lib
from models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = dict(name="transformer", vocab_size=384, d_model=32, num_layers=2, num_heads=4,
            num_kv_heads=2, head_dim=8, d_ff=64, dtype="float32", remat="none")
SEQ = 32
TEXTS = ["short one", "x" * 70, "A longer document about file descriptors. " * 3, "é ü ∑ unicode",
         "q", "", "The quick brown fox jumps over the lazy dog. " * 2, "z" * 31, "y" * 32]


def make_model(seed: int = 0):
  model = registry.build(SPEC)
  ex = {k: np.zeros((2, SEQ), np.int32)
        for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  return model, model.init(jax.random.PRNGKey(seed), ex)


def reference_losses(model, params, texts):
  """(sum of -log p, token count) per text: each chunk alone in its row (right
  padding, which a causal model never sees), one device. Byte ids are UTF-8
  bytes + 3 (seqio.ByteVocabulary's; the training-path test below checks the
  token counts against seqio itself)."""
  p1 = jax.device_put(params, jax.devices()[0])
  apply = jax.jit(lambda p, x: model.module.apply({"params": p}, x))
  out = []
  for t in texts:
    toks = [b + 3 for b in t.encode("utf-8")]
    total, n = 0.0, 0
    for i in range(0, len(toks), SEQ - 1):
      chunk = toks[i:i + SEQ - 1] + [1]
      inputs = np.zeros((1, SEQ), np.int32)
      inputs[0, 1:len(chunk)] = chunk[:-1]
      logits = np.asarray(apply(p1, jax.device_put(inputs, jax.devices()[0])),
                          np.float64)[0, :len(chunk)]
      m = logits.max(-1, keepdims=True)
      logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
      total -= logp[np.arange(len(chunk)), chunk].sum()
      n += len(chunk)
    out.append((total, n))
  return out


class PackTest(absltest.TestCase):

  def test_chunks_and_packing(self):
    self.assertEqual(cs.doc_chunks([5, 6, 7, 8, 9], 4), [[5, 6, 7, 1], [8, 9, 1]])
    self.assertEqual(cs.doc_chunks([], 4), [])
    p = cs.pack_chunks([[[5, 6, 1], [7, 1]], [[8, 9, 4, 1]]], 6)
    np.testing.assert_array_equal(p.targets, [[5, 6, 1, 7, 1, 0], [8, 9, 4, 1, 0, 0]])
    np.testing.assert_array_equal(p.inputs, [[0, 5, 6, 0, 7, 0], [0, 8, 9, 4, 0, 0]])
    np.testing.assert_array_equal(p.positions, [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(p.segment_ids, [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(p.docs, [0, 0, 1])


class ScoresTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params = make_model()
    cls.ref = reference_losses(cls.model, cls.params, TEXTS)

  def test_equal_to_direct_per_document_loss_sharded_and_any_batch(self):
    self.assertEqual(jax.device_count(), 8)
    results = []
    for devices, rows in ((8, 8), (8, 24), (1, 3)):
      mesh = mesh_lib.create_mesh({"data": devices, "fsdp": 1, "tensor": 1},
                                  devices=jax.devices()[:devices])
      scorer = cs.Scorer(self.model, self.params, seq_len=SEQ, batch_rows=rows, mesh=mesh)
      results.append(scorer.score_texts(TEXTS))
    for s in results:
      for i, (total, n) in enumerate(self.ref):
        self.assertEqual(int(s["tokens"][i]), n, TEXTS[i])
        if n:
          np.testing.assert_allclose(s["nll_sum"][i], total, rtol=2e-6, err_msg=TEXTS[i])
          np.testing.assert_allclose(s["loss"][i], total / n, rtol=2e-6)
        else:
          self.assertTrue(np.isnan(s["loss"][i]))
      np.testing.assert_allclose(s["loss"], results[0]["loss"], rtol=1e-6)

  def test_bad_batch_rows_is_named(self):
    with self.assertRaisesRegex(ValueError, "batch_rows=12 must be a positive multiple of the "
                                "data x fsdp mesh size 8"):
      cs.Scorer(self.model, self.params, seq_len=SEQ, batch_rows=12)

  def test_equal_to_the_training_paths_loss_on_packed_batches(self):
    """Total loss and token count of the documents through lm_data's seqio
    packing and the model's own loss (what training minimises)."""
    from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
    d = self.create_tempdir().full_path
    path = os.path.join(d, "docs.jsonl")
    with open(path, "w", encoding="utf-8") as f:
      for t in TEXTS:
        f.write(json.dumps({"text": t}) + "\n")
    name = lm_data.register_lm_task("color_scoring_test", {"train": path},
                                    lm_data.make_vocabulary("byte"))
    arrays = lm_data.packed_arrays(name, "train", SEQ)
    sums = jax.jit(self.model.loss)(self.params, arrays)
    total = sum(t for t, _ in self.ref)
    self.assertEqual(int(sums["tokens"]), sum(n for _, n in self.ref))
    np.testing.assert_allclose(float(sums["loss"]), total, rtol=1e-5)


SCRIPT = textwrap.dedent("""
    import os, sys, time
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, {tests!r})
    import test_color_scoring as t
    from experiments.color_filter import color_scoring as cs
    model, params = t.make_model()
    scorer = cs.Scorer(model, params, seq_len=t.SEQ, batch_rows=8)
    texts = t.TEXTS * 4
    cs.score_to_store(scorer, [str(i) for i in range(len(texts))], texts, {store!r},
                      fingerprint="m", block_size=4, after_block=lambda b: time.sleep({pause}))
""")


class ResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model, cls.params = make_model()
    cls.scorer = cs.Scorer(cls.model, cls.params, seq_len=SEQ, batch_rows=8)
    cls.texts = TEXTS * 4
    cls.ids = [str(i) for i in range(len(cls.texts))]

  def _run(self, store, **kw):
    return cs.score_to_store(self.scorer, self.ids, self.texts, store, fingerprint="m",
                             block_size=4, print_fn=lambda s: None, **kw)

  def _columns(self, store):
    s = score_store.ScoreStore.open(store)
    return {c: np.array(s.column(c)) for c in cs.COLUMNS}

  def test_stop_midway_then_resume_equals_uninterrupted(self):
    base = os.path.join(self.create_tempdir().full_path, "a")
    full = self._run(base)
    self.assertEqual(full["blocks_scored"], 9)
    self.assertEqual(full["docs"], len(self.texts))
    self.assertGreater(full["docs_per_s"], 0)

    class Stop(Exception):
      pass

    def stop_after(b):
      if b == 3:
        raise Stop()
    store = os.path.join(self.create_tempdir().full_path, "b")
    with self.assertRaises(Stop):
      self._run(store, after_block=stop_after)
    seen = []
    rest = self._run(store, after_block=seen.append)
    self.assertEqual(seen, [4, 5, 6, 7, 8])   # only the uncommitted blocks
    self.assertEqual(rest["blocks_scored"], 5)
    a, b = self._columns(base), self._columns(store)
    for c in cs.COLUMNS:
      np.testing.assert_array_equal(a[c], b[c])
    with self.assertRaisesRegex(score_store.ScoreStoreError, "fingerprint"):
      cs.score_to_store(self.scorer, self.ids, self.texts, store, fingerprint="other",
                        block_size=4)

  def test_sigkill_then_rerun_gives_the_same_store(self):
    base = os.path.join(self.create_tempdir().full_path, "a")
    self._run(base)
    store = os.path.join(self.create_tempdir().full_path, "k")
    script = os.path.join(self.create_tempdir().full_path, "run.py")
    with open(script, "w", encoding="utf-8") as f:
      f.write(SCRIPT.format(tests=os.path.join(REPO, "tests"), store=store, pause=3))
    proc = subprocess.Popen([sys.executable, script], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
      deadline = time.time() + 240
      committed = 0
      while time.time() < deadline and proc.poll() is None:
        done = os.path.join(store, "done.npy")
        if os.path.exists(os.path.join(store, score_store.META)):
          committed = int(np.load(done).sum())
          if committed >= 2:
            break
        time.sleep(0.2)
      self.assertIsNone(proc.poll(), "the scoring process ended before it could be killed")
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait(30)
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait(30)
    before = int(np.load(os.path.join(store, "done.npy")).sum())
    self.assertBetween(before, 2, 8)
    seen = []
    self._run(store, after_block=seen.append)
    self.assertLen(seen, 9 - before)
    a, b = self._columns(base), self._columns(store)
    for c in cs.COLUMNS:
      np.testing.assert_array_equal(a[c], b[c])


if __name__ == "__main__":
  absltest.main()
