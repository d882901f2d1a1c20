"""One contract test for every registered model (`models.contract`).

Each model, built from the registry with a tiny config: init is a pure
function of the key; loss returns sums (the loss of a batch is the loss of its
halves added); jit and grad work and give finite, non-zero gradients; and one
train step of the common step gives the same loss and parameters on 1 device
and on a (data=2, fsdp=2, tensor=2) mesh of 8 fake CPU devices.

A model added to the registry must add a case to CASES (the completeness
test fails otherwise).
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest, parameterized

from framework import mesh as mesh_lib
from framework import optim
from framework import sharding as sharding_lib
from framework import train_state as train_state_lib
from framework import train_step as train_step_lib
from models import contract
from models import registry


def _lm_batch(rng: np.random.Generator, n: int = 8, t: int = 8, vocab: int = 64):
  seq = rng.integers(0, vocab, (n, t + 1))
  return {"inputs": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
          "weights": np.ones((n, t), np.float32),
          "segment_ids": np.ones((n, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (n, 1))}


def _classifier_batch(shape):
  def make(rng: np.random.Generator, n: int = 8):
    return {"x": rng.normal(size=(n,) + shape).astype(np.float32),
            "y": rng.integers(0, 3, n).astype(np.int32)}
  return make


def _orders_batch(rng: np.random.Generator, n: int = 8, num_lags: int = 4):
  rho = rng.dirichlet(np.ones(num_lags), n) * rng.uniform(0.5, 1.0, (n, 1))
  return {"x": rng.normal(size=(n, 3)).astype(np.float32), "rho": rho.astype(np.float32)}


def _pairs_batch(rng: np.random.Generator, n: int = 8, vocab: int = 5):
  return {"inputs": rng.integers(0, vocab, (n, 2)).astype(np.int32),
          "labels": rng.integers(0, vocab, n).astype(np.int32)}


def _signs_batch(rng: np.random.Generator, n: int = 8, dim: int = 6):
  return {"inputs": rng.choice([-1.0, 1.0], (n, dim)).astype(np.float32),
          "labels": rng.integers(0, 2, n).astype(np.int32)}


# name -> (config fields, batch maker)
CASES: dict[str, tuple[dict[str, Any], Callable]] = {
    "transformer": (dict(vocab_size=64, d_model=16, num_layers=1, num_heads=4,
                         num_kv_heads=2, head_dim=4, d_ff=32), _lm_batch),
    "mlp": (dict(hidden_sizes=(8, 8), num_outputs=3), _classifier_batch((5,))),
    "cnn": (dict(channels=(4,), hidden_sizes=(8,), num_outputs=3), _classifier_batch((8, 8, 1))),
    # log_objective=False: the log objective is |B| log(mean), not a sum over examples.
    "two_input_net": (dict(vocab_size=5, num_classes=5, width=4, log_objective=False),
                      _pairs_batch),
    "parity_net": (dict(input_dim=6, width=4, degree=2, log_objective=False), _signs_batch),
    "genqot": (dict(num_lags=4, hidden=8), _orders_batch),
    "sparse_mlp": (dict(width=8, sparsity=2, num_outputs=3, loss="xent"),
                   _classifier_batch((5,))),
    "matformer": (dict(vocab_size=64, d_model=16, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=4, d_ff=32, granularities=(8, 16, 32), interleave=4),
                  _lm_batch),
}


def _build(name):
  fields, make_batch = CASES[name]
  model = registry.build(dict(name=name, **fields))
  return model, make_batch(np.random.default_rng(0))


def _half(batch, lo, hi):
  return {k: v[lo:hi] for k, v in batch.items()}


class ModelContractTest(parameterized.TestCase):

  def test_every_registered_model_has_a_case(self):
    self.assertEqual(sorted(CASES), registry.names())

  @parameterized.parameters(*sorted(CASES))
  def test_init_loss_jit_grad(self, name):
    model, batch = _build(name)
    self.assertIsInstance(model, contract.Model)
    unbox = lambda t: jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, t,
                                   is_leaf=lambda x: hasattr(x, "unbox"))
    params = unbox(model.init(jax.random.PRNGKey(0), batch))
    again = unbox(model.init(jax.random.PRNGKey(0), batch))
    other = unbox(model.init(jax.random.PRNGKey(1), batch))
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), params, again)
    self.assertTrue(all(jax.tree.leaves(chex_equal)), "init must be a function of the key")
    self.assertFalse(all(jax.tree.leaves(jax.tree.map(np.array_equal, params, other))))

    sums = model.loss(params, batch)
    self.assertIn("loss", sums)
    count = float(contract.count_of(sums))
    self.assertEqual(count, float(len(next(iter(batch.values())))) *
                     (batch["weights"].shape[1] if "weights" in batch else 1))
    n = len(next(iter(batch.values())))
    a = model.loss(params, _half(batch, 0, n // 2))
    b = model.loss(params, _half(batch, n // 2, n))
    for key in sums:  # sums, not means: halves add up to the whole
      np.testing.assert_allclose(float(a[key]) + float(b[key]), float(sums[key]), rtol=1e-5,
                                 err_msg=f"{name}: {key} is not a sum over examples")

    jitted = jax.jit(model.loss)(params, batch)
    np.testing.assert_allclose(float(jitted["loss"]), float(sums["loss"]), rtol=1e-5)
    grads = jax.grad(lambda p: model.loss(p, batch)["loss"])(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    self.assertTrue(all(np.isfinite(norms)))
    self.assertGreater(sum(norms), 0.0)

  @parameterized.parameters(*sorted(CASES))
  def test_one_device_equals_eight(self, name):
    self._one_device_equals_eight(*_build(name))

  def test_scanned_transformer_one_device_equals_eight(self):
    fields, make_batch = CASES["transformer"]
    model = registry.build(dict(name="transformer", **{**fields, "num_layers": 2},
                                scan_layers=True, remat="full"))
    self._one_device_equals_eight(model, make_batch(np.random.default_rng(0)))

  def _one_device_equals_eight(self, model, batch):
    sched = ml_collections.ConfigDict(dict(name="constant", peak_lr=1e-2, warmup_steps=0))
    opt = ml_collections.ConfigDict(dict(name="adamw", b1=0.9, b2=0.99, eps=1e-8,
                                         weight_decay=0.0, grad_clip_norm=0.0, kwargs={}))
    schedule = optim.make_schedule(sched, 10)
    tx = optim.make_optimizer(opt, schedule)
    results = []
    for devices, shape in ((jax.devices()[:1], {"data": 1}),
                           (jax.devices(), {"data": 2, "fsdp": 2, "tensor": 2})):
      mesh = mesh_lib.create_mesh(shape, devices)
      rules = sharding_lib.DEFAULT_RULES
      state, shardings = train_state_lib.create_sharded_state(model, tx, batch, mesh, rules)
      step = train_step_lib.jit_train_step(train_step_lib.make_train_step(model, tx),
                                           shardings, mesh, rules, batch)
      losses = []
      for _ in range(2):
        state, metrics = step(state, sharding_lib.global_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
      results.append((losses, jax.device_get(state.params)))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[0][1], results[1][1])


if __name__ == "__main__":
  absltest.main()
