"""Checkpoint integrity: fingerprints, verified restore with fallback, retention
that keeps the last good step, failed saves that stop the run, atomic files."""
import collections
import errno
import json
import os
import shutil
import tempfile
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding, PartitionSpec as P
from orbax.checkpoint._src.handlers import json_checkpoint_handler

import lm_testlib
from data_pipelines import batching
from framework import checkpoint as checkpoint_lib
from framework import files
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import trainer

TOTAL = 10


def _config(total=TOTAL):
  config = lm_testlib.tiny_config(total_steps=total, eval_every=5, log_every=1)
  config.checkpoint.update(dict(every=5, keep=3))
  return config


def _mesh():
  return mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _eval_batches():
  arrays = lm_testlib.synthetic_arrays(num=32, seed=1)
  for b in range(2):
    yield {k: v[b * 16:(b + 1) * 16] for k, v in arrays.items()}


def _train(workdir, total=TOTAL, step_callback=None):
  config = _config(total)
  it = batching.BatchIterator(lm_testlib.synthetic_arrays(num=48), 16, seed=3)
  return trainer.train(config, lm_testlib.tiny_model(config), it, workdir=workdir,
                       mesh=_mesh(), eval_batches=_eval_batches, step_callback=step_callback)


def _abstract_and_shardings():
  """The trainer's state layout for `_config()` (to call the Checkpointer directly)."""
  config = _config()
  tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, TOTAL))
  batch = next(iter(batching.BatchIterator(lm_testlib.synthetic_arrays(num=48), 16, seed=3)))
  state, shardings = train_state_lib.create_sharded_state(
      lm_testlib.tiny_model(config), tx, sharding_lib.example_global_batch(batch), _mesh(),
      sharding_lib.normalize_rules(config.sharding.rules), seed=0)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state), shardings


def _flip(path, offset=None):
  with open(path, "rb") as f:
    data = bytearray(f.read())
  offset = len(data) // 2 if offset is None else offset
  data[offset] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def _records(workdir):
  return metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))


def _duplicates(records):
  count = collections.Counter((r["step"], k) for r in records for k in r if k != "step")
  return sorted(key for key, n in count.items() if n > 1)


# ------------------------------------------------------------------ fingerprints

def _np_fingerprint(x: np.ndarray) -> str:
  """Independent numpy reference of the module docstring's F1, F2."""
  x = np.asarray(x)
  if x.dtype == np.bool_:
    u = x.astype(np.uint64).ravel()
  else:
    u = x.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize]).astype(
        np.uint64).ravel()
  i = np.arange(u.size, dtype=np.uint64)
  m = np.uint64(2**32)
  f1 = int(np.sum((u * ((2 * i + 1) % m)) % m) % m)
  h = (i * np.uint64(0x9E3779B1) + np.uint64(0x7F4A7C15)) % m
  h = ((h ^ (h >> np.uint64(15))) * np.uint64(0x85EBCA6B)) % m
  h = (h ^ (h >> np.uint64(13))) | np.uint64(1)
  mixed = ((u ^ (u >> np.uint64(16))) * np.uint64(0x85EBCA6B)) % m
  mixed = ((mixed ^ (mixed >> np.uint64(13))) * np.uint64(0xC2B2AE35)) % m
  mixed = mixed ^ (mixed >> np.uint64(16))
  f2 = int(np.sum((mixed * h) % m) % m)
  return "%08x%08x" % (f1, f2)


def _fp(x):
  return checkpoint_lib.fingerprints({"x": x})["['x']"]


class FingerprintTest(parameterized.TestCase):

  @parameterized.parameters("float32", "bfloat16", "int8", "int32", "uint16")
  def test_matches_numpy_reference_and_every_byte_flip_changes_it(self, dtype):
    rng = np.random.default_rng(0)
    x = np.asarray(jnp.asarray(rng.normal(size=(5, 7)) * 50, dtype=dtype))
    self.assertEqual(_fp(x), _np_fingerprint(x))
    raw = bytearray(x.tobytes())
    for b in range(len(raw)):
      for mask in (0x01, 0x80, 0xFF):
        flipped = bytearray(raw)
        flipped[b] ^= mask
        y = np.frombuffer(bytes(flipped), dtype=x.dtype).reshape(x.shape)
        fx, fy = _fp(x), _fp(y)
        self.assertNotEqual(fy[:8], fx[:8], f"F1: byte {b} ^ {mask:#x} went unnoticed")
        self.assertNotEqual(fy[8:], fx[8:], f"F2: byte {b} ^ {mask:#x} went unnoticed")

  def test_bool(self):
    x = np.zeros((3, 4), bool)
    seen = {_fp(x)}
    for i in range(x.size):
      y = x.copy().ravel()
      y[i] = True
      seen.add(_fp(y.reshape(x.shape)))
      self.assertEqual(_fp(y.reshape(x.shape)), _np_fingerprint(y.reshape(x.shape)))
    self.assertLen(seen, x.size + 1)

  @parameterized.parameters([("data",)], [(None, "data")], [("data", "tensor")],
                            [(("data", "fsdp"), "tensor")])
  def test_same_for_every_sharding(self, spec):
    mesh = _mesh()
    x = np.random.default_rng(1).normal(size=(8, 16)).astype(np.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, P(*spec)))
    one = jax.device_put(x, jax.devices()[0])
    self.assertEqual(_fp(sharded), _fp(one))
    self.assertEqual(_fp(sharded), _np_fingerprint(x))


# ------------------------------------------------------------ restore fallback

class CorruptionFallbackTest(parameterized.TestCase):
  """One 10-step run (checkpoints 5 and 10); each test damages a copy of it."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp()
    cls.workdir = os.path.join(cls.root, "run")
    cls.result = _train(cls.workdir)
    cls.params = jax.device_get(cls.result.state.params)
    cls.abstract, cls.shardings = _abstract_and_shardings()
    ckpt = checkpoint_lib.Checkpointer(os.path.join(cls.workdir, "checkpoints"), save_every=5)
    cls.step5 = jax.device_get(ckpt.restore(5, cls.abstract, cls.shardings)[0])
    cls.step10 = jax.device_get(ckpt.restore(10, cls.abstract, cls.shardings)[0])
    ckpt.close()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def copy_run(self):
    dest = os.path.join(self.create_tempdir().full_path, "run")
    shutil.copytree(self.workdir, dest)
    return dest

  def step_files(self, workdir, step=10):
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    return sorted(os.path.relpath(os.path.join(root, n), step_dir)
                  for root, _, names in os.walk(step_dir) for n in names)

  def restore_latest(self, workdir):
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=5)
    try:
      return ckpt.restore_latest(self.abstract, self.shardings)
    finally:
      ckpt.close()

  def assert_state(self, state, expected):
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), expected)

  def assert_falls_back(self, workdir, file):
    with self.assertLogs(level="WARNING") as logs:
      step, state, _ = self.restore_latest(workdir)
    self.assertEqual(step, 5)
    self.assert_state(state, self.step5)
    line = [l for l in logs.output if "step 10 unusable" in l]
    self.assertLen(line, 1, logs.output)
    self.assertIn(file, line[0])
    self.assertNotIn("\n", line[0])
    self.assertTrue(os.listdir(os.path.join(workdir, "checkpoints", "corrupt")))
    self.assertNotIn("10", os.listdir(os.path.join(workdir, "checkpoints")))

  def test_verified_steps_have_file_digests(self):
    files_10 = self.step_files(self.workdir)
    self.assertIn(checkpoint_lib.FILE_DIGESTS, files_10)
    self.assertIn("checksums/metadata", files_10)
    self.assertIn("data/metadata", files_10)
    self.assertTrue([f for f in files_10 if f.startswith("state/") and "/d/" in f])
    step, state, data = self.restore_latest(self.workdir)
    self.assertEqual(step, 10)
    self.assert_state(state, self.step10)
    it = batching.BatchIterator(lm_testlib.synthetic_arrays(num=48), 16, seed=3)
    for _ in range(10):
      next(it)
    self.assertEqual(data, it.get_state())

  def test_one_flipped_byte_in_any_file_falls_back(self):
    """Every file of a verified step: array data, orbax metadata, data JSON, checksums."""
    kinds = self.step_files(self.workdir)
    self.assertGreaterEqual(len(kinds), 10)
    for rel in kinds:
      with self.subTest(file=rel):
        workdir = self.copy_run()
        _flip(os.path.join(workdir, "checkpoints", "10", rel))
        self.assert_falls_back(workdir, rel)

  @parameterized.named_parameters(
      # Every array data file: orbax writes them under ocdbt.process_*/d/ and, after
      # merging, under state/d/; which of them a restore reads depends on timing.
      ("array_data", lambda fs: [f for f in fs if f.startswith("state/") and "/d/" in f],
       "state"),
      ("data_position", lambda fs: ["data/metadata"], "data/metadata"),
      ("checksums", lambda fs: ["checksums/metadata"], "checksums/metadata"))
  def test_unverified_step_flipped_byte_falls_back(self, pick, file):
    """A step killed before it was verified has no digests: checksums catch it."""
    workdir = self.copy_run()
    step_dir = os.path.join(workdir, "checkpoints", "10")
    os.remove(os.path.join(step_dir, checkpoint_lib.FILE_DIGESTS))
    for rel in pick(self.step_files(workdir)):
      _flip(os.path.join(step_dir, rel))
    self.assert_falls_back(workdir, file)

  @parameterized.named_parameters(("truncated", "truncate"), ("missing", "remove"))
  def test_unverified_step_damaged_data_file_falls_back(self, how):
    workdir = self.copy_run()
    step_dir = os.path.join(workdir, "checkpoints", "10")
    os.remove(os.path.join(step_dir, checkpoint_lib.FILE_DIGESTS))
    for rel in self.step_files(workdir):
      if rel.startswith("state/") and "/d/" in rel:
        path = os.path.join(step_dir, rel)
        if how == "remove":
          os.remove(path)
        else:
          os.truncate(path, os.path.getsize(path) // 2)
    self.assert_falls_back(workdir, "state")

  def test_checksum_mismatch_names_the_array(self):
    workdir = self.copy_run()
    step_dir = os.path.join(workdir, "checkpoints", "10")
    os.remove(os.path.join(step_dir, checkpoint_lib.FILE_DIGESTS))
    path = os.path.join(step_dir, "checksums", "metadata")
    with open(path) as f:
      sums = json.load(f)
    key = ".params['embedding']"
    sums["arrays"][key] = "%016x" % (int(sums["arrays"][key], 16) ^ 1)
    with open(path, "w") as f:
      json.dump(sums, f)
    with self.assertLogs(level="WARNING") as logs:
      step, _, _ = self.restore_latest(workdir)
    self.assertEqual(step, 5)
    self.assertTrue(any("state.params['embedding']" in l and "checksum mismatch" in l
                        for l in logs.output), logs.output)

  def test_no_usable_checkpoint_is_one_line_error(self):
    workdir = self.copy_run()
    for step in (5, 10):
      _flip(os.path.join(workdir, "checkpoints", str(step), "checksums", "metadata"), 0)
    with self.assertLogs(level="WARNING"):
      with self.assertRaises(checkpoint_lib.CheckpointCorruptError) as cm:
        self.restore_latest(workdir)
    message = str(cm.exception)
    self.assertNotIn("\n", message)
    for part in (os.path.join(workdir, "checkpoints"), "step 10", "step 5",
                 "checksums/metadata"):
      self.assertIn(part, message)

  def test_training_resumes_from_fallback_and_matches(self):
    workdir = self.copy_run()
    data_file = [f for f in self.step_files(workdir) if "ocdbt.process_0/d/" in f][0]
    _flip(os.path.join(workdir, "checkpoints", "10", data_file))
    with self.assertLogs(level="WARNING") as logs:
      result = _train(workdir)
    self.assertTrue(any("step 10 unusable" in l and data_file in l for l in logs.output))
    self.assertEqual(result.resumed_from, 5)
    self.assertEqual(result.final_step, TOTAL)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params),
                 self.params)
    records = _records(workdir)
    self.assertEqual(_duplicates(records), [])
    self.assertEqual(sorted(r["step"] for r in records if "train/loss" in r),
                     list(range(1, TOTAL + 1)))
    self.assertEqual(sorted(r["step"] for r in records if "eval/loss" in r), [5, 10])
    # The step rewritten by the resumed run verified and is the newest again.
    self.assertEqual(self.restore_latest(workdir)[0], 10)

  def test_rerun_after_the_end_reports_last_metrics_once(self):
    """Killed after the final checkpoint: the rerun trains nothing, yet reports
    the last logged losses, and metrics.jsonl still holds each record once."""
    workdir = self.copy_run()
    result = _train(workdir)
    self.assertEqual(result.resumed_from, TOTAL)
    records = _records(workdir)
    self.assertEqual(_duplicates(records), [])
    last_train = [r for r in records if "train/loss" in r][-1]
    last_eval = [r for r in records if "eval/loss" in r][-1]
    self.assertEqual(last_train["step"], TOTAL)
    self.assertEqual(result.metrics["loss"], last_train["train/loss"])
    self.assertEqual(result.eval_metrics["loss"], last_eval["eval/loss"])


# ------------------------------------------------------------------- retention

class RetentionTest(absltest.TestCase):

  def state(self, value):
    sharding = NamedSharding(_mesh(), P("data"))
    return {"w": jax.device_put(jnp.full((8, 4), value, jnp.float32), sharding),
            "step": jnp.asarray(value, jnp.int32)}

  def test_last_verified_step_survives_until_a_newer_one_verifies(self):
    directory = self.create_tempdir().full_path
    ckpt = checkpoint_lib.Checkpointer(directory, save_every=1, keep=1)
    ckpt.save(1, self.state(1), {"batch": 1})
    ckpt.save(2, self.state(2), {"batch": 2})  # verifies 1
    ckpt.manager.wait_until_finished()
    self.assertEqual(ckpt.steps(), [1, 2])      # 2 is unverified: 1 stays
    _flip(os.path.join(directory, "2", "checksums", "metadata"), 0)
    with self.assertRaises(checkpoint_lib.CheckpointCorruptError) as cm:
      ckpt.save(3, self.state(3), {"batch": 3})  # 2 fails verification
    self.assertIn("step 2 failed verification", str(cm.exception))
    self.assertIn(1, ckpt.steps())
    ckpt.manager.close()
    fresh = checkpoint_lib.Checkpointer(directory, save_every=1, keep=1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.state(0))
    shardings = jax.tree.map(lambda x: x.sharding, self.state(0))
    with self.assertLogs(level="WARNING"):
      step, state, data = fresh.restore_latest(abstract, shardings)
    self.assertEqual((step, int(state["step"]), data), (1, 1, {"batch": 1}))
    fresh.close()

  def test_keep_counts_verified_steps(self):
    directory = self.create_tempdir().full_path
    ckpt = checkpoint_lib.Checkpointer(directory, save_every=1, keep=2)
    for step in range(1, 6):
      ckpt.save(step, self.state(step), None)
    ckpt.close()  # verifies 5
    self.assertEqual(ckpt.steps(), [4, 5])


# ---------------------------------------------------------------- failed saves

class FailedSaveTest(absltest.TestCase):

  def test_disk_full_during_async_write_stops_at_once(self):
    workdir = self.create_tempdir().full_path
    original = json_checkpoint_handler.JsonCheckpointHandler._save_fn
    steps = []

    async def full_disk(self, x, directory):
      if os.path.basename(str(directory.parent)).startswith("10."):
        raise OSError(errno.ENOSPC, "No space left on device")
      return await original(self, x, directory)

    def callback(step, metrics):
      del metrics
      steps.append(step)
      time.sleep(0.05)

    with mock.patch.object(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn",
                           full_disk):
      with self.assertRaises(checkpoint_lib.CheckpointSaveError) as cm:
        _train(workdir, total=20, step_callback=callback)
    message = str(cm.exception)
    self.assertNotIn("\n", message)
    self.assertIn(os.path.join(workdir, "checkpoints", "10"), message)
    self.assertIn("No space left on device", message)
    self.assertIn("free of", message)
    self.assertLess(max(steps), 15)  # before the next checkpoint interval
    ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=5)
    self.assertEqual(ckpt.steps(), [5])

  def test_failed_start_of_save_names_path_and_free_space(self):
    directory = self.create_tempdir().full_path
    ckpt = checkpoint_lib.Checkpointer(directory, save_every=1)
    with mock.patch.object(ckpt.manager, "save",
                           side_effect=OSError(errno.EROFS, "Read-only file system")):
      with self.assertRaises(checkpoint_lib.CheckpointSaveError) as cm:
        ckpt.save(1, {"w": jnp.ones(3)}, None)
    self.assertIn(os.path.join(directory, "1"), str(cm.exception))
    self.assertIn("Read-only file system", str(cm.exception))
    self.assertIn("free of", str(cm.exception))
    ckpt.close()


class AtomicWriteTest(absltest.TestCase):

  def test_failed_write_leaves_old_file_and_no_partial_one(self):
    d = self.create_tempdir().full_path
    path = os.path.join(d, "config.json")
    files.write_text(path, "old")
    with self.assertRaises(OSError) as cm:
      with files.atomic_open(path) as f:
        f.write("new, half")
        raise OSError(errno.ENOSPC, "No space left on device")
    self.assertEqual(cm.exception.errno, errno.ENOSPC)
    self.assertIn(path, str(cm.exception))
    self.assertIn("free of", str(cm.exception))
    with open(path) as f:
      self.assertEqual(f.read(), "old")
    self.assertEqual(os.listdir(d), ["config.json"])

  def test_full_disk_on_flush_leaves_no_empty_file(self):
    d = self.create_tempdir().full_path
    path = os.path.join(d, "summary.json")
    with mock.patch.object(os, "fsync", side_effect=OSError(errno.ENOSPC, "No space left")):
      with self.assertRaises(files.WriteError):
        files.write_text(path, "{}")
    self.assertEqual(os.listdir(d), [])

  def test_lm_runner_leaves_no_empty_config_json_on_a_full_disk(self):
    from experiments import lm  # pylint: disable=g-import-not-at-top
    workdir = self.create_tempdir().full_path
    config = lm_testlib.tiny_config()
    config.model.vocab_size = 384   # validate() wants room for the 259 byte ids
    with mock.patch.object(os, "fsync", side_effect=OSError(errno.ENOSPC, "No space left")):
      with self.assertRaises(files.WriteError) as cm:
        lm.run(config, workdir)
    self.assertIn(os.path.join(workdir, "config.json"), str(cm.exception))
    self.assertIn("free of", str(cm.exception))
    self.assertEqual(os.listdir(workdir), [])


if __name__ == "__main__":
  absltest.main()
