"""The same train steps give the same losses on 1 device and on 8-device meshes."""
import jax
import numpy as np
import optax
from absl.testing import absltest, parameterized

import lm_testlib
from data_pipelines import batching
from framework import mesh as mesh_lib
from framework import sharding as sharding_lib
from framework import trainer

MESHES = {
    "data8": {"data": 8},
    "data2_fsdp4": {"data": 2, "fsdp": 4},
    "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}


def _run(mesh, workdir, steps=3):
  config = lm_testlib.tiny_config(total_steps=steps, log_every=1, eval_every=10**6)
  config.checkpoint.enabled = False
  losses = []
  it = batching.BatchIterator(lm_testlib.synthetic_arrays(), 16, seed=1)
  result = trainer.train(config, lm_testlib.tiny_model(config), it, workdir=workdir, mesh=mesh,
                         step_callback=lambda s, m: losses.append(m["loss"]))
  return losses, result.state


class ShardedTrainingTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    assert jax.device_count() == 8, "tests need 8 fake CPU devices (see conftest.py)"
    single = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
    cls.ref_losses, state = _run(single, cls.create_tempdir_cls())
    cls.ref_params = jax.device_get(state.params)

  @classmethod
  def create_tempdir_cls(cls):
    import tempfile  # pylint: disable=g-import-not-at-top
    return tempfile.mkdtemp()

  @parameterized.named_parameters(*MESHES.items())
  def test_losses_and_params_match_single_device(self, shape):
    mesh = mesh_lib.create_mesh(shape)
    losses, state = _run(mesh, self.create_tempdir().full_path)
    self.assertLen(losses, 3)
    np.testing.assert_allclose(losses, self.ref_losses, rtol=2e-5)
    self.assertLess(losses[-1], losses[0])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=2e-5, rtol=2e-4),
                 state.params, self.ref_params)
    # The state really is laid out over the mesh as the rules say.
    w_up = state.params["layer_0"]["mlp"]["w_up"]
    want = sharding_lib.normalize_rules(lm_testlib.tiny_config().sharding.rules)
    want = dict(want)
    expected = tuple(a if (a and mesh.shape.get(a, 1) > 1) else None
                     for a in (want["embed"], want["mlp"]))
    got = tuple(a if (a and mesh.shape[a] > 1) else None
                for a in tuple(w_up.sharding.spec) + (None,) * (2 - len(w_up.sharding.spec)))
    self.assertEqual(got, expected)
    # Adam's moments follow their parameter's sharding (found by type, wherever
    # the optimizer chain puts them).
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
    self.assertLen(adam, 1)
    for moment in (adam[0].mu, adam[0].nu):
      self.assertEqual(moment["layer_0"]["mlp"]["w_up"].sharding, w_up.sharding)


if __name__ == "__main__":
  absltest.main()
