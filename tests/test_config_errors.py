"""Bad configs fail at start, before anything compiles, naming the problem."""
import os
import subprocess
import sys
from unittest import mock

import jax
from absl.testing import absltest

from experiments import lm
from experiments.configs import lm_quickstart
from framework import config as config_lib
from framework import mesh as mesh_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigErrorTest(absltest.TestCase):

  def _run_expecting(self, config, error, pattern):
    workdir = self.create_tempdir().full_path
    with mock.patch.object(jax, "jit", side_effect=AssertionError("compiled")):
      with self.assertRaisesRegex(error, pattern):
        lm.run(config, workdir)

  def test_unknown_key_names_it_with_a_hint(self):
    config = lm_quickstart.get_config()
    config.trainer.totl_steps = 5
    self._run_expecting(config, config_lib.ConfigError,
                        r"trainer\.totl_steps \(did you mean trainer\.total_steps\?\)")

  def test_mesh_that_does_not_divide_devices(self):
    config = lm_quickstart.get_config()
    config.mesh.shape = {"data": 3, "fsdp": -1, "tensor": 1}
    self._run_expecting(config, mesh_lib.MeshError, r"do(es)? not divide the 8")

  def test_mesh_with_wrong_product(self):
    config = lm_quickstart.get_config()
    config.mesh.shape = {"data": 2, "fsdp": 2, "tensor": 1}
    self._run_expecting(config, mesh_lib.MeshError, r"needs 4 devices but 8")

  def test_bad_enum_and_numeric_fields_fail_before_data(self):
    cases = [("schedule.peak_lr", -1e-3), ("schedule.peak_lr", float("nan")),
             ("trainer.nan_policy", "ignore"), ("optimizer.name", "adam2"),
             ("schedule.name", "cos"), ("data.vocab", "bpe"),
             ("trainer.max_consecutive_skips", -1), ("optimizer.weight_decay", float("inf"))]
    for field, value in cases:
      config = lm_quickstart.get_config()
      section, key = field.split(".")
      config[section][key] = value
      with mock.patch("data_pipelines.lm_sources.arrays_from_config",
                      side_effect=AssertionError("data was read")):
        self._run_expecting(config, config_lib.ConfigError, rf"config\.{field}")

  def test_missing_data_path(self):
    config = lm_quickstart.get_config()
    config.data.source = "files"
    config.data.train_path = "/nonexistent/train.jsonl"
    config.data.validation_path = "/nonexistent/valid.jsonl"
    self._run_expecting(config, config_lib.ConfigError,
                        r"data\.train_path: file not found: '/nonexistent/train\.jsonl'")

  def test_batch_not_divisible_by_mesh(self):
    config = lm_quickstart.get_config()
    config.data.global_batch_size = 12
    self._run_expecting(config, config_lib.ConfigError, r"data\.global_batch_size")

  def test_resolve_mesh_fills_minus_one(self):
    self.assertEqual(mesh_lib.resolve_mesh_shape({"data": -1, "tensor": 2}, 8),
                     {"data": 4, "fsdp": 1, "tensor": 2})
    with self.assertRaisesRegex(mesh_lib.MeshError, "at most one -1"):
      mesh_lib.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with self.assertRaisesRegex(mesh_lib.MeshError, "unknown axes"):
      mesh_lib.resolve_mesh_shape({"model": 2}, 8)

  def test_cli_override_of_unknown_key_fails_fast(self):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.launch",
         "--config=experiments/configs/lm_quickstart.py", "--config.trainer.totl_steps=3",
         f"--workdir={self.create_tempdir().full_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("totl_steps", proc.stderr)
    # One line with the hint, not a chained traceback.
    self.assertNotIn("Traceback", proc.stderr)
    self.assertRegex(proc.stderr, r"launch: .*totl_steps.*Did you mean \"total_steps\"")

  def test_cli_missing_config_file_fails(self):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.launch", "--config=experiments/configs/nope.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("nope.py", proc.stderr)
    self.assertNotIn("Traceback", proc.stderr)

  def test_cli_bad_value_is_one_line_before_data_loading(self):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.launch",
         "--config=experiments/configs/lm_quickstart.py", "--config.schedule.peak_lr=nan",
         "--config.data.data_dir=/nonexistent/never/created",
         f"--workdir={self.create_tempdir().full_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertNotIn("Traceback", proc.stderr)
    self.assertIn("launch: config.schedule.peak_lr", proc.stderr)
    self.assertFalse(os.path.exists("/nonexistent/never/created"))


if __name__ == "__main__":
  absltest.main()
