"""End to end: the quickstart LM learns well beyond unigram statistics."""
import json
import os

import pytest
from absl.testing import absltest

from experiments import lm
from experiments.configs import lm_quickstart


def _small_quickstart(data_dir):
  c = lm_quickstart.get_config()
  c.data.data_dir = data_dir
  c.data.seq_len = 128
  c.model.update(dict(d_model=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=24,
                      d_ff=256))
  c.trainer.update(dict(total_steps=100, eval_every=50, progress_every_s=30.0))
  c.schedule.update(dict(peak_lr=1e-2, warmup_steps=10))
  c.mesh.shape = {"data": 8, "fsdp": 1, "tensor": 1}
  return c


class QuickstartTest(absltest.TestCase):

  def test_small_quickstart_beats_unigram_entropy(self):
    workdir = self.create_tempdir().full_path
    summary = lm.run(_small_quickstart(self.create_tempdir().full_path), workdir)
    self.assertEqual(summary["final_step"], 100)
    # Well below: at least 0.6 nats/byte under the byte-unigram entropy (~3.26).
    self.assertLess(summary["eval_loss"], summary["unigram_entropy"] - 0.6)
    for name in ("metrics.jsonl", "loss.png", "report.md", "summary.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      records = [json.loads(l) for l in f]
    self.assertTrue(any("perf/mfu" in r for r in records))
    self.assertTrue(os.listdir(os.path.join(workdir, "tb")))

  @pytest.mark.slow
  def test_full_quickstart(self):
    summary = lm.run(lm_quickstart.get_config(), self.create_tempdir().full_path)
    self.assertLess(summary["eval_loss"], summary["unigram_entropy"] - 1.0)


if __name__ == "__main__":
  absltest.main()
