"""The optimizer-comparison runner: lr selection, sub-configs, a tiny sweep end to end."""
import json
import math
import os

import numpy as np
import pytest
from absl.testing import absltest

from experiments import lm
from experiments.optimizer_comparison import comparison as oc
from experiments.optimizer_comparison import comparison_config as lm_optimizer_comparison
from framework import metrics as metrics_lib

_PARTS = (("cat", "dog", "bird"), ("sat", "ran", "flew"), ("on", "under", "over"),
          ("red", "green", "blue", "small", "big"), ("mat", "tree", "house"))


def _write_text_corpus(directory: str, seed: int = 0) -> dict[str, str]:
  """JSONL train/validation files of sentences from a tiny grammar."""
  rng = np.random.default_rng(seed)
  paths = {}
  for split, n in (("train", 1500), ("validation", 200)):
    path = os.path.join(directory, f"{split}.jsonl")
    with open(path, "w") as f:
      for _ in range(n):
        a, v, p, j, o = (words[rng.integers(len(words))] for words in _PARTS)
        f.write(json.dumps({"text": f"the {a} {v} {p} the {j} {o}."}) + "\n")
    paths[split] = path
  return paths


class SelectBestTest(absltest.TestCase):

  def test_picks_lowest_finite_loss(self):
    best = oc.select_best({1e-3: 3.0, 3e-3: 2.5, 1e-2: float("nan"), 3e-2: 2.7})
    self.assertEqual(best, {"lr": 3e-3, "eval_loss": 2.5, "edge": ""})

  def test_flags_grid_edges(self):
    self.assertEqual(oc.select_best({1e-3: 2.0, 1e-2: 3.0})["edge"], "low")
    self.assertEqual(oc.select_best({1e-3: 2.0, 1e-2: 1.0, 3e-2: None})["edge"], "")
    self.assertEqual(oc.select_best({1e-3: 4.0, 1e-2: 3.0, 1e-1: 2.0})["edge"], "high")
    self.assertEqual(oc.select_best({1e-2: 3.0})["edge"], "")  # one lr: no edge

  def test_no_finite_run(self):
    best = oc.select_best({1e-3: float("inf"), 1e-2: None, 3e-2: "nan"})
    self.assertIsNone(best["lr"])
    self.assertIsNone(best["eval_loss"])


class SubConfigTest(absltest.TestCase):

  def test_sub_configs_are_valid_lm_configs(self):
    config = lm_optimizer_comparison.get_config()
    names = oc.optimizer_names(config)
    self.assertEqual(names, ["adamw", "shampoo_classic", "shampoo2", "shampoo_classic_eps1e_2",
                             "shampoo2_eps1e_2", "soap"])
    self.assertEqual(oc.sub_config(config, "shampoo2_eps1e_2", 1e-2).optimizer.kwargs.epsilon,
                     1e-2)
    self.assertEqual(oc.learning_rates(config, "soap"), [3e-3, 1e-2, 3e-2, 1e-1])
    for name in names:
      c = oc.sub_config(config, name, 0.02)
      lm.validate(c)  # experiments.lm's schema and checks
      self.assertEqual(c.runner, "experiments.lm")
      self.assertEqual(c.schedule.peak_lr, 0.02)
      self.assertFalse(c.checkpoint.enabled)
      self.assertEqual(c.optimizer.name, config.optimizers[name].name)
    self.assertEqual(oc.sub_config(config, "shampoo_classic", 1e-2).optimizer.kwargs.exponent,
                     "classic")
    self.assertEqual(oc.sub_config(config, "shampoo2", 1e-2).optimizer.kwargs.exponent,
                     "shampoo2")
    # The base config itself is untouched.
    self.assertEqual(config.base.optimizer.name, "adamw")
    self.assertEqual(config.base.optimizer.kwargs.to_dict(), {})

  def test_every_optimizer_builds_and_updates(self):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from framework import optim  # pylint: disable=g-import-not-at-top
    config = lm_optimizer_comparison.get_config("tiny")
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
              "t": jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32),
              "b": jnp.zeros(4)}
    for name in oc.optimizer_names(config):
      c = oc.sub_config(config, name, 1e-2)
      tx = optim.make_optimizer(c.optimizer, optim.make_schedule(c.schedule, 20))
      state = tx.init(params)
      for step in range(2):  # the first root / basis refresh, then a plain step
        grads = {k: jnp.asarray(rng.normal(size=v.shape), jnp.float32)
                 for k, v in params.items()}
        updates, state = tx.update(grads, state, params)
        for k, u in updates.items():
          self.assertTrue(bool(jnp.all(jnp.isfinite(u))), (name, k, step))
      self.assertGreater(float(jnp.abs(updates["w"]).sum()), 0.0, name)

  def test_merge_xla_flags(self):
    merged = oc.merge_xla_flags("--a=1 --xla_force_host_platform_device_count=8 --b",
                                "--xla_force_host_platform_device_count=1 --c=2")
    self.assertEqual(merged.split(), ["--a=1", "--xla_force_host_platform_device_count=1",
                                      "--b", "--c=2"])
    self.assertEqual(oc.merge_xla_flags("", ""), "")

  def test_own_grid_and_unknown_name(self):
    config = lm_optimizer_comparison.get_config()
    config.optimizers.soap.learning_rates = (1e-3, 3e-4)
    self.assertEqual(oc.learning_rates(config, "soap"), [3e-4, 1e-3])
    config.order = "adamw,sopa"
    with self.assertRaisesRegex(ValueError, "sopa"):
      oc.optimizer_names(config)


class TinyComparisonTest(absltest.TestCase):

  def _tiny_config(self, order: str):
    data_dir = self.create_tempdir().full_path
    paths = _write_text_corpus(data_dir)
    config = lm_optimizer_comparison.get_config("tiny")
    config.base.data.update(dict(source="files", train_path=paths["train"],
                                 validation_path=paths["validation"], data_dir=data_dir))
    config.order = order
    return config

  def _check_outputs(self, config, workdir, summary, names):
    for name in ("report.md", "loss_curves.png", "lr_sweep.png", "results.json",
                 "metrics.jsonl", "config.json"):
      self.assertTrue(os.path.exists(os.path.join(workdir, name)), name)
    with open(os.path.join(workdir, "report.md")) as f:
      report = f.read()
    for name in names:
      lr = summary[f"{name}/best_lr"]
      self.assertIsNotNone(lr, name)
      self.assertIn(config.optimizers[name].label, report)
      curves = oc.read_curves(os.path.join(workdir, "runs", oc.run_dir_name(name, lr)))
      train = [v for _, v in curves["train"]]
      evals = [v for _, v in curves["eval"]]
      self.assertLen(train, 10, name)  # every 2nd of 20 steps
      self.assertLen(evals, 2, name)   # steps 10 and 20
      self.assertTrue(all(math.isfinite(v) for v in train + evals), name)
      # Learns: from ~ln(384) = 5.95 at init well down, and still improving.
      self.assertLess(train[-1], train[0] - 1.0, name)
      self.assertLess(evals[-1], evals[0], name)
      self.assertAlmostEqual(summary[f"{name}/eval_loss"], evals[-1], places=5)
    # Top-level metrics hold every optimizer's best curve.
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    keys = set().union(*records)
    for name in names:
      self.assertIn(f"{name}/eval_loss", keys)
      self.assertIn(f"{name}/train_loss", keys)

  def test_tiny_sweep_end_to_end(self):
    names = ["adamw", "shampoo2"]
    config = self._tiny_config(",".join(names))
    config.optimizers.adamw.learning_rates = (3e-3, 1e-2)  # one real choice of lr
    workdir = self.create_tempdir().full_path
    summary = oc.run(config, workdir)
    self._check_outputs(config, workdir, summary, names)
    with open(os.path.join(workdir, "results.json")) as f:
      results = json.load(f)
    self.assertLen(results["runs"]["adamw"], 2)
    self.assertLen(results["runs"]["shampoo2"], 1)
    # The best adamw lr is the grid point with the lower final eval loss.
    adam = {float(lr): r["eval_loss"] for lr, r in results["runs"]["adamw"].items()}
    self.assertEqual(summary["adamw/best_lr"], min(adam, key=adam.get))

    # Re-running the same workdir reuses every finished run.
    again = oc.run(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
      rerun = json.load(f)
    self.assertTrue(all(r["reused"] for n in names for r in rerun["runs"][n].values()))
    for name in names:
      self.assertEqual(again[f"{name}/eval_loss"], summary[f"{name}/eval_loss"])

  def test_failed_run_is_reported_and_sweep_goes_on(self):
    config = self._tiny_config("shampoo2")
    config.isolate = False  # in-process: fails in optimizer construction
    config.optimizers.shampoo2.kwargs.not_an_option = 1
    workdir = self.create_tempdir().full_path
    summary = oc.run(config, workdir)
    self.assertIsNone(summary["shampoo2/best_lr"])
    with open(os.path.join(workdir, "report.md")) as f:
      self.assertIn("Failed runs", f.read())

  @pytest.mark.slow
  def test_tiny_sweep_all_optimizers(self):
    names = ["adamw", "shampoo_classic", "shampoo2", "soap"]
    config = self._tiny_config(",".join(names))
    workdir = self.create_tempdir().full_path
    self._check_outputs(config, workdir, oc.run(config, workdir), names)


if __name__ == "__main__":
  absltest.main()
