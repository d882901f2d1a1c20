"""The CoLoR-Filter study's pieces that the tiny end-to-end run relies on:
fine-tuning init from another run's checkpoint, loading a run's params (a
given step or the newest), the report's curve arithmetic, config checks and
the scoring benchmark."""
import json
import os

from absl.testing import absltest
import jax
import ml_collections
import numpy as np

from experiments.color_filter import color_bench
from experiments.color_filter import color_report
from experiments.color_filter import color_runs
from experiments.color_filter import color_study
from experiments.configs import color_filter as color_config
from framework import checkpoint as checkpoint_lib
from framework import config as config_lib
from framework import mesh as mesh_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from models import registry


def small_lm_config(d_model: int = 32) -> ml_collections.ConfigDict:
  c = color_config.get_config("tiny").lm
  c.model.update(dict(d_model=d_model, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                      d_ff=32))
  c.data.seq_len = 16
  c.data.global_batch_size = 8
  return c


def fresh_state(config, seed: int):
  model = registry.build(config.model)
  mesh = mesh_lib.create_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, 10))
  state, _ = train_state_lib.create_sharded_state(
      model, tx, color_runs.example_batch(config), mesh,
      sharding_lib.normalize_rules(config.sharding.rules), seed=seed)
  return state


def write_run(run_dir: str, config, steps_and_seeds) -> dict:
  """A run directory with config.json and checkpoints at the given steps."""
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort())
  ckpt = checkpoint_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), save_every=1, keep=5,
                                     async_save=False)
  saved = {}
  for step, seed in steps_and_seeds:
    state = fresh_state(config, seed)
    ckpt.save(step, state.replace(step=state.step + step), {"epoch": 0, "batch": 0}, force=True)
    saved[step] = jax.device_get(state.params)
  ckpt.close()
  return saved


class RunsTest(absltest.TestCase):

  def test_init_from_run_and_load_run_params(self):
    config = small_lm_config()
    run_dir = self.create_tempdir().full_path
    saved = write_run(run_dir, config, [(3, 11), (6, 12)])
    _, _, params, step = color_runs.load_run_params(run_dir)
    self.assertEqual(step, 6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved[6])):
      np.testing.assert_array_equal(np.asarray(a), b)
    _, _, params3, step3 = color_runs.load_run_params(run_dir, step=3)
    self.assertEqual(step3, 3)
    for a, b in zip(jax.tree.leaves(params3), jax.tree.leaves(saved[3])):
      np.testing.assert_array_equal(np.asarray(a), b)
    with self.assertRaisesRegex(FileNotFoundError, "no step 4"):
      color_runs.load_run_params(run_dir, step=4)

    fresh = fresh_state(config, 99)
    got = color_runs.init_from_run(run_dir)(fresh)
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(saved[6])):
      np.testing.assert_array_equal(np.asarray(a), b)
    self.assertEqual(int(got.step), 0)   # a fine-tune starts at step 0, fresh optimizer
    for a, b in zip(jax.tree.leaves(got.opt_state), jax.tree.leaves(fresh.opt_state)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    self.assertNotEqual(color_runs.params_fingerprint(saved[3]),
                        color_runs.params_fingerprint(saved[6]))

    other = fresh_state(small_lm_config(d_model=48), 0)
    with self.assertRaisesRegex(ValueError, "has shape"):
      color_runs.init_from_run(run_dir)(other)
    with self.assertRaisesRegex(FileNotFoundError, "not an LM run directory"):
      color_runs.load_run_params(self.create_tempdir().full_path)


class ReportTest(absltest.TestCase):

  def test_crossing_and_mean_curve(self):
    curve = [(10.0, 4.0), (20.0, 3.0), (30.0, 2.0)]
    self.assertEqual(color_report.crossing(curve, 2.5), (25.0, "="))
    self.assertEqual(color_report.crossing(curve, 3.0), (20.0, "="))
    self.assertEqual(color_report.crossing(curve, 1.0), (30.0, ">"))
    self.assertEqual(color_report.crossing(curve, 5.0), (10.0, "<"))
    self.assertEqual(color_report.crossing([], 1.0), (None, "?"))
    mc = color_report.mean_curve([[(1, 2.0), (2, 1.0)], [(1, 4.0), (2, 3.0), (3, 0.0)]])
    self.assertEqual(mc, [(1, 3.0, 2.0, 4.0), (2, 2.0, 1.0, 3.0)])

  def test_eval_curve_reads_metrics(self):
    d = self.create_tempdir().full_path
    with open(os.path.join(d, "metrics.jsonl"), "w", encoding="utf-8") as f:
      for step, loss in ((20, 3.0), (40, 2.5)):
        f.write(json.dumps({"step": step, "eval/loss": loss}) + "\n")
        f.write(json.dumps({"step": step, "train/loss": loss + 1}) + "\n")
    self.assertEqual(color_report.eval_curve(d), [(20, 3.0), (40, 2.5)])


class ConfigTest(absltest.TestCase):

  def test_variants_and_validation(self):
    tiny = color_config.get_config("tiny")
    self.assertTrue(tiny.smoke)
    self.assertFalse(color_config.get_config().smoke)
    config_lib.check_keys(tiny, color_study.default_config())
    color_study.validate(tiny)
    with self.assertRaisesRegex(ValueError, "unknown variant"):
      color_config.get_config("huge")
    bad = color_config.get_config("tiny")
    bad.selection.taus = [0.5]
    with self.assertRaisesRegex(config_lib.ConfigError, "selection.taus"):
      color_study.validate(bad)
    bad = color_config.get_config("tiny")
    bad.selection.methods = ["color", "oracle"]
    with self.assertRaisesRegex(config_lib.ConfigError, "oracle"):
      color_study.validate(bad)


class BenchTest(absltest.TestCase):

  def test_bench_measures_both_sides(self):
    lines = []
    texts = color_bench.documents("", 12, seed=0)
    r = color_bench.measure(texts=texts, shape="tiny", batch_rows=8, rounds=1, seed=0,
                            print_fn=lines.append)
    self.assertEqual(r["doc_tokens"], sum(len(t.encode()) + -(-len(t.encode()) // 127)
                                          for t in texts))   # bytes + one EOS per chunk
    self.assertGreater(r["scorer"]["tokens_per_s"], 0)
    self.assertGreater(r["plain"]["tokens_per_s"], 0)
    self.assertAlmostEqual(r["ratio"], r["scorer"]["tokens_per_s"] / r["plain"]["tokens_per_s"])
    self.assertIn("scorer / plain forward", lines[-1])


if __name__ == "__main__":
  absltest.main()
