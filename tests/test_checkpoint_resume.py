"""Kill/restart and preemption give exactly the uninterrupted run."""
import collections
import os
import signal
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

import lm_testlib
from data_pipelines import batching
from framework import checkpoint as checkpoint_lib
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import trainer


class Crash(RuntimeError):
  pass


def _train(workdir, *, crash_at=None, sigterm_at=None, total=20, log_every=5):
  config = lm_testlib.tiny_config(total_steps=total, eval_every=10**6, log_every=log_every)
  it = lm_testlib.RecordingIterator(
      batching.BatchIterator(lm_testlib.synthetic_arrays(num=48), 16, seed=3))

  def callback(step, metrics):
    del metrics
    if crash_at is not None and step == crash_at:
      raise Crash(f"simulated kill at step {step}")
    if sigterm_at is not None and step == sigterm_at:
      os.kill(os.getpid(), signal.SIGTERM)

  mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  result = trainer.train(config, lm_testlib.tiny_model(config), it, workdir=workdir,
                         mesh=mesh, step_callback=callback)
  return result, it.seen


class CheckpointResumeTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import tempfile  # pylint: disable=g-import-not-at-top
    cls.straight, cls.straight_batches = _train(tempfile.mkdtemp())
    cls.straight_params = jax.device_get(cls.straight.state.params)

  def assert_same_params(self, params):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 jax.device_get(params), self.straight_params)

  def test_kill_and_restart_matches_straight_run(self):
    workdir = self.create_tempdir().full_path
    with self.assertRaises(Crash):
      _train(workdir, crash_at=12)
    self.assertEqual(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=5).latest_step(), 10)
    result, seen_after = _train(workdir)
    self.assertEqual(result.resumed_from, 10)
    self.assertEqual(result.final_step, 20)
    self.assert_same_params(result.state.params)
    # The resumed run consumed exactly batches 11..20 of the straight run.
    self.assertLen(self.straight_batches, 20)
    for pos, digest in seen_after.items():
      self.assertEqual(self.straight_batches[pos], digest)
    # (The trainer peeks at the first position to learn batch shapes before restoring.)
    first = (("batch", 0), ("epoch", 0), ("global_batch_size", 16), ("num_shards", 1),
             ("seed", 3))
    self.assertLen([p for p in seen_after if p != first], 10)

  def test_metrics_once_each_and_written_before_their_checkpoint(self):
    workdir = self.create_tempdir().full_path
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    logged_at_save = {}
    save = checkpoint_lib.Checkpointer.save

    def checking_save(ckpt, step, *args, **kwargs):
      records = metrics_lib.read_metrics(metrics_path)
      logged_at_save[int(step)] = any(r["step"] == step and "train/loss" in r for r in records)
      return save(ckpt, step, *args, **kwargs)

    with mock.patch.object(checkpoint_lib.Checkpointer, "save", checking_save):
      with self.assertRaises(Crash):
        _train(workdir, crash_at=12, log_every=1)
      result, _ = _train(workdir, log_every=1)
    self.assertEqual(result.resumed_from, 10)
    self.assert_same_params(result.state.params)
    self.assertEqual(logged_at_save, {5: True, 10: True, 15: True, 20: True})
    records = metrics_lib.read_metrics(metrics_path)
    count = collections.Counter((r["step"], k) for r in records for k in r if k != "step")
    self.assertEqual([key for key, n in count.items() if n > 1], [])
    self.assertEqual(sorted(r["step"] for r in records if "train/loss" in r),
                     list(range(1, 21)))

  def test_partial_save_is_never_loaded(self):
    workdir = self.create_tempdir().full_path
    with self.assertRaises(Crash):
      _train(workdir, crash_at=12)
    # A save of step 15 that died midway: orbax's temporary directory, half written.
    tmp = os.path.join(workdir, "checkpoints", "15.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(tmp, "state"))
    with open(os.path.join(tmp, "state", "garbage"), "wb") as f:
      f.write(b"\x00" * 100)
    result, _ = _train(workdir)
    self.assertEqual(result.resumed_from, 10)
    self.assert_same_params(result.state.params)

  def test_sigterm_saves_and_resumes(self):
    workdir = self.create_tempdir().full_path
    result, _ = _train(workdir, sigterm_at=7)
    self.assertTrue(result.preempted)
    stopped = result.final_step
    self.assertBetween(stopped, 7, 9)
    self.assertEqual(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every=5).latest_step(), stopped)
    result, _ = _train(workdir)
    self.assertEqual(result.resumed_from, stopped)
    self.assert_same_params(result.state.params)


if __name__ == "__main__":
  absltest.main()
