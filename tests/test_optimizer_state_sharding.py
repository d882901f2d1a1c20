"""framework.sharding.follow_param_shardings on 8 fake CPU devices.

Every optimizer-state leaf that mirrors a parameter (the parameter's key path
appears, contiguously, in the leaf's key path and the shapes agree: Adam's
mu / nu, Shampoo's momentum and per-parameter second moment
`leaves[p].nu`, SOAP's diagonal-fallback moments) must be laid out exactly
like that parameter; stacked per-block statistics are split over fsdp.
"""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import optimizers
from framework import sharding as sharding_lib

_SPECS = {
    "embed": P("fsdp", None),
    "layer": {"w_up": P("fsdp", "tensor"), "w_down": P("tensor", "fsdp"),
              "bias": P("tensor"), "scale": P()},
}
_SHAPES = {"embed": (16, 8), "layer": {"w_up": (8, 32), "w_down": (32, 8), "bias": (32,),
                                      "scale": (8,)}}

_OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "shampoo": lambda: optimizers.shampoo(1e-2, block_size=8, weight_decay=0.1,
                                          precondition_filter=optimizers.embedding_filter()),
    "shampoo_no_momentum_diagnostics": lambda: optimizers.shampoo(
        1e-2, b1=0.0, block_size=16, diagnostics=True),
    "soap": lambda: optimizers.soap(1e-2, block_size=8, precondition_frequency=2),
}


def _mirrored(state_path, param_paths):
  """The parameter path that occurs contiguously in state_path, or None."""
  keys = tuple(state_path)
  for p in param_paths:
    n = len(p)
    if any(keys[i:i + n] == p for i in range(len(keys) - n + 1)):
      return p
  return None


class StateShardingTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.assertEqual(jax.device_count(), 8, "tests need 8 fake CPU devices (conftest.py)")
    self.mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))

  @parameterized.named_parameters(*_OPTIMIZERS.items())
  def test_state_mirroring_a_parameter_is_sharded_like_it(self, make):
    tx = make()
    mesh = self.mesh
    is_spec = lambda x: isinstance(x, P)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), _SPECS, is_leaf=is_spec)
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), _SHAPES,
                            is_leaf=lambda x: isinstance(x, tuple))
    state = jax.eval_shape(tx.init, abstract)
    got = sharding_lib.follow_param_shardings(state, abstract, shardings, mesh)

    param_paths = {tuple(p): (leaf.shape, sh) for (p, leaf), sh in zip(
        jax.tree_util.tree_flatten_with_path(abstract)[0], jax.tree.leaves(shardings))}
    mirrored, split = 0, 0
    for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                jax.tree.leaves(got)):
      p = _mirrored(path, param_paths)
      if p is not None and tuple(leaf.shape) == tuple(param_paths[p][0]):
        self.assertEqual(sh, param_paths[p][1], jax.tree_util.keystr(path))
        mirrored += any(sh.spec)
      elif leaf.ndim >= 3:  # stacked blocks: over fsdp when it divides
        expected = P("fsdp") if leaf.shape[0] % 2 == 0 else P()
        self.assertEqual(sh.spec, expected, jax.tree_util.keystr(path))
        split += leaf.shape[0] % 2 == 0
      else:
        self.assertEqual(sh.spec, P(), jax.tree_util.keystr(path))
    self.assertGreater(mirrored, 0)

    # The shardings are usable: the state is created in them and one step
    # keeps them.
    params = jax.device_put(
        jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract), shardings)
    real = jax.jit(tx.init, out_shardings=got)(params)
    update = jax.jit(tx.update, out_shardings=(shardings, got))
    _, new = update(jax.tree.map(lambda p: 0.1 * p, params), real, params)
    self.assertEqual([x.sharding for x in jax.tree.leaves(new)], jax.tree.leaves(got))

  def test_shampoo_second_moment_follows_its_parameter(self):
    # The defect: `leaves[p].nu` ends with `.nu`, not the parameter's path, and
    # was replicated.
    tx = optimizers.shampoo(1e-2, block_size=8)
    shardings = jax.tree.map(lambda s: NamedSharding(self.mesh, s), _SPECS,
                             is_leaf=lambda x: isinstance(x, P))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), _SHAPES,
                            is_leaf=lambda x: isinstance(x, tuple))
    got = sharding_lib.follow_param_shardings(jax.eval_shape(tx.init, abstract), abstract,
                                              shardings, self.mesh)
    for name in ("w_up", "w_down", "bias"):
      self.assertEqual(got[0].leaves["layer"][name].nu, shardings["layer"][name])
      self.assertEqual(got[0].mu["layer"][name], shardings["layer"][name])
    self.assertEqual(got[0].leaves["layer"]["w_up"].factors[0].spec, P("fsdp"))
    self.assertEqual(got[0].count.spec, P())

  def test_single_array_parameters(self):
    tx = optimizers.shampoo(1e-2, block_size=8)
    sh = NamedSharding(self.mesh, P("fsdp", "tensor"))
    abstract = jax.ShapeDtypeStruct((8, 32), jnp.float32)
    got = sharding_lib.follow_param_shardings(jax.eval_shape(tx.init, abstract), abstract,
                                              sh, self.mesh)
    self.assertEqual(got[0].leaves.nu, sh)
    self.assertEqual(got[0].mu, sh)
    self.assertEqual(got[0].leaves.factors[0].spec, P("fsdp"))  # 4 blocks of 8
    self.assertEqual(got[0].count.spec, P())


if __name__ == "__main__":
  absltest.main()
