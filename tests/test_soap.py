"""SOAP (optimizers.soap) against a numpy Adam-in-the-eigenbasis reference."""
from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from optimizers import SOAP_STATIC_ARGS, scale_by_soap, soap
from optimizer_references import numpy_soap


def _randn(rng, shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _run(tx, grads, params=None):
  """Runs tx over a list of gradient trees in one jitted scan."""
  params = params if params is not None else jax.tree.map(jnp.zeros_like, grads[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)

  @jax.jit
  def go(stacked, params):
    def body(state, g):
      u, state = tx.update(g, state, params)
      return state, u
    return jax.lax.scan(body, tx.init(params), stacked)

  state, us = go(stacked, params)
  return [jax.tree.map(lambda x, i=i: x[i], us) for i in range(len(grads))], state


class ReferenceTest(parameterized.TestCase):

  @parameterized.parameters(dict(basis_update="eigh", freq=1),
                            dict(basis_update="qr", freq=2))
  def test_matches_numpy_adam_in_eigenbasis(self, basis_update, freq):
    rng = np.random.default_rng(0)
    b1, b2, sb2, eps = 0.9, 0.95, 0.8, 1e-8
    grads = [{"sq": _randn(rng, (5, 5)), "wide": _randn(rng, (3, 12))} for _ in range(6)]
    tx = scale_by_soap(b1, b2, shampoo_b2=sb2, eps=eps, precondition_frequency=freq,
                       basis_update=basis_update, max_precond_dim=8)
    outs, state = _run(tx, grads)
    self.assertIsNone(state.leaves["wide"].bases[1])  # 12 > max_precond_dim
    for name, pre in (("sq", (True, True)), ("wide", (True, False))):
      ref = numpy_soap([g[name] for g in grads], b1, b2, sb2, eps, freq,
                       basis_update == "qr", pre)
      for t in range(len(grads)):
        np.testing.assert_allclose(outs[t][name], ref[t], rtol=2e-3, atol=2e-3)
    # Not plain Adam after the first step.
    adam, _ = _run(optax.scale_by_adam(b1, b2, eps), grads)
    np.testing.assert_allclose(outs[0]["sq"], adam[0]["sq"], rtol=1e-5, atol=1e-6)
    self.assertFalse(np.allclose(outs[-1]["sq"], adam[-1]["sq"], atol=1e-2))

  def test_vectors_are_adam(self):
    rng = np.random.default_rng(1)
    grads = [{"b": _randn(rng, (7,)), "s": _randn(rng, ())} for _ in range(4)]
    outs, state = _run(scale_by_soap(0.9, 0.99), grads)
    ref, _ = _run(optax.scale_by_adam(0.9, 0.99, 1e-8), grads)
    chex.assert_trees_all_close(outs[-1], ref[-1], rtol=1e-5, atol=1e-6)
    self.assertEqual(state.leaves["b"].factors, ())


class ConvergenceTest(absltest.TestCase):

  def test_mlp(self):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(256, 10)) * np.linspace(0.3, 2.0, 10), jnp.float32)
    labels = jnp.asarray(np.argmax(np.tanh(np.asarray(x) @ rng.normal(size=(10, 3))), -1))
    params = {"w1": _randn(rng, (10, 10)) * 0.3, "w2": _randn(rng, (10, 3)) * 0.3,
              "b2": jnp.zeros(3)}

    def loss(p, idx):
      logits = jnp.tanh(x[idx] @ p["w1"]) @ p["w2"] + p["b2"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    tx = soap(3e-2, weight_decay=1e-4, precondition_frequency=5)

    @jax.jit
    def train(params):
      def body(carry, key):
        p, s = carry
        g = jax.grad(loss)(p, jax.random.randint(key, (64,), 0, 256))
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), None
      keys = jax.random.split(jax.random.PRNGKey(0), 200)
      return jax.lax.scan(body, (params, tx.init(params)), keys)[0][0]

    everything = jnp.arange(256)
    self.assertLess(float(loss(train(params), everything)),
                    0.35 * float(loss(params, everything)))


class IntegrationTest(absltest.TestCase):

  def test_bf16_inject_multisteps_state_stable(self):
    rng = np.random.default_rng(3)
    params = {"w": _randn(rng, (6, 4)).astype(jnp.bfloat16), "v": jnp.zeros(4, jnp.bfloat16)}
    grads = [jax.tree.map(lambda p: _randn(rng, p.shape).astype(jnp.bfloat16), params)
             for _ in range(4)]
    inj = optax.inject_hyperparams(soap, static_args=SOAP_STATIC_ARGS)(
        learning_rate=0.1, precondition_frequency=2, block_size=4)
    ms = optax.MultiSteps(optax.chain(optax.clip_by_global_norm(1.0), inj), every_k_schedule=2)
    state = ms.init(params)
    upd = jax.jit(ms.update)
    for i, g in enumerate(grads):
      u, new_state = upd(g, state, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
      state = new_state
      self.assertEqual(u["w"].dtype, jnp.bfloat16)
      self.assertEqual(bool(np.any(np.asarray(u["w"], np.float32) != 0)), i % 2 == 1)
    self.assertEqual(upd._cache_size(), 1)
    inner = state.inner_opt_state[1].inner_state[0]
    self.assertEqual(inner.leaves["w"].factors[0].dtype, jnp.float32)
    self.assertEqual(inner.leaves["w"].factors[0].shape, (2, 4, 4))  # 6 -> 2 blocks

  def test_sharded_matches_single_device(self):
    if jax.device_count() < 8:
      self.skipTest("needs 8 (fake) devices")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
    rng = np.random.default_rng(4)
    params = {"w": _randn(rng, (16, 32)), "b": _randn(rng, (32,))}
    grads = [jax.tree.map(lambda p: _randn(rng, p.shape), params) for _ in range(3)]
    shard = {"w": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P("model"))}
    tx = soap(0.1, block_size=16, precondition_frequency=2)

    def run(params, sharded):
      if sharded:
        params = jax.device_put(params, shard)
      state = tx.init(params)
      state_sh = jax.tree.map(lambda x: x.sharding, state)
      upd = jax.jit(tx.update, out_shardings=(shard, state_sh) if sharded else None)
      for g in grads:
        u, state = upd(jax.device_put(g, shard) if sharded else g, state, params)
        params = optax.apply_updates(params, u)
      return params, state, state_sh, upd

    p1, _, _, _ = run(params, False)
    p8, s8, sh0, upd = run(params, True)
    chex.assert_trees_all_close(p1, p8, rtol=1e-4, atol=1e-4)
    self.assertEqual(upd._cache_size(), 1)
    self.assertEqual(jax.tree.leaves(sh0), [x.sharding for x in jax.tree.leaves(s8)])
    self.assertEqual(s8[0].leaves["b"].nu.sharding, shard["b"])


if __name__ == "__main__":
  absltest.main()
