"""Checks every optimizer of ours passes, from one list (as optax's contrib tests).

Each entry of `_OPTIMIZERS` is an alias `factory(learning_rate, ...)` with its
structural options; every test below runs over all entries:

  * init / update keep shapes and dtypes (float32 and bfloat16 parameters),
  * the jitted update matches the eager one and compiles once,
  * `optax.inject_hyperparams` gives the same updates and makes the learning
    rate a state value,
  * the state is a tree of NamedTuples,
  * a quadratic (vector, matrix, mixed tree) and the Rosenbrock function are
    minimised,
  * fixed-seed updates match an independent float64 numpy reference
    (tests/optimizer_references.py) where one exists.
"""
import functools

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimizer_references as refs
from optimizers import (SHAMPOO_STATIC_ARGS, SOAP_STATIC_ARGS, ShampooState, SoapState,
                        normalized_sgd, shampoo, soap)


def _entry(name, factory, state_type, static_args, kwargs=None, converge=None,
           reference=None):
  """converge: (peak lr of a cosine decay, steps, extra kwargs for those runs).
  reference: (kwargs for the numerics check, numpy fn(params, grads, lr, wd)).
  """
  return dict(testcase_name=name, factory=factory, state_type=state_type,
              static_args=static_args, kwargs=kwargs or {}, converge=converge,
              reference=reference)


def _shampoo_ref(exponent_per_factor, epsilon=1e-3):
  kw = dict(b1=0.9, b2=0.95, epsilon=epsilon)
  fn = lambda params, grads, lr, wd: refs.numpy_shampoo(
      params, grads, learning_rate=lr, weight_decay=wd, exponent=exponent_per_factor, **kw)
  return kw, fn


def _soap_ref():
  kw = dict(b1=0.9, b2=0.95, eps=1e-8, precondition_frequency=2)
  fn = lambda params, grads, lr, wd: refs.numpy_soap_tree(
      params, grads, learning_rate=lr, weight_decay=wd, **kw)
  return kw, fn


def _normalized_ref():
  return {}, lambda params, grads, lr, wd: refs.numpy_normalized_sgd(
      params, grads, learning_rate=lr, weight_decay=wd)


# Vectors get a full-matrix factor in the convergence runs (precondition_1d),
# so the Rosenbrock function is solved by the Kronecker path itself.
_1D = dict(precondition_1d=True)
_OPTIMIZERS = (
    _entry("shampoo2", shampoo, ShampooState, SHAMPOO_STATIC_ARGS,
           dict(exponent="shampoo2"), (0.05, 1000, _1D), _shampoo_ref(-0.5)),
    _entry("shampoo_classic", shampoo, ShampooState, SHAMPOO_STATIC_ARGS,
           dict(exponent="classic"), (0.05, 1000, _1D), _shampoo_ref(-0.25)),
    # L^-1 G R^-1 of nearly rank-deficient factors needs a larger ridge.
    _entry("shampoo_newton", shampoo, ShampooState, SHAMPOO_STATIC_ARGS,
           dict(exponent="newton", epsilon=1e-2), (0.05, 1000, _1D),
           _shampoo_ref(-1.0, epsilon=1e-2)),
    _entry("shampoo_exponent_float", shampoo, ShampooState, SHAMPOO_STATIC_ARGS,
           dict(exponent=-0.3), (0.05, 1000, _1D), _shampoo_ref(-0.3)),
    _entry("shampoo_power_nesterov", shampoo, ShampooState, SHAMPOO_STATIC_ARGS,
           dict(factor_update="power", nesterov=True), (0.05, 1000, _1D)),
    _entry("soap", soap, SoapState, SOAP_STATIC_ARGS, {}, (0.05, 1000, _1D), _soap_ref()),
    _entry("normalized_sgd", normalized_sgd, optax.EmptyState, (), {},
           (0.01, 5000, {}), _normalized_ref()),
)
_WITH_REFERENCE = tuple(o for o in _OPTIMIZERS if o["reference"] is not None)


def _parabola():
  final = jnp.array([1.0, -1.0, 1.0])
  return jnp.array([-1.0, 10.0, 1.0]), final, lambda p: jnp.sum((p - final) ** 2)


def _matrix_parabola():
  final = jnp.array([[3.0, -2.0], [1.0, 4.0]])
  return jnp.zeros((2, 2)), final, lambda p: jnp.sum((p - final) ** 2)


def _mixed_parabola():
  final = {"v": jnp.array([1.0, -1.0, 2.0]), "m": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
  loss = lambda p: sum(jnp.sum((p[k] - final[k]) ** 2) for k in final)
  return jax.tree.map(jnp.zeros_like, final), final, loss


def _rosenbrock():
  loss = lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2
  return jnp.zeros(2), jnp.array([1.0, 1.0]), loss


def _params(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(5, 4)), dtype),
          "b": jnp.asarray(rng.normal(size=(4,)), dtype)}


def _grads(n, dtype=jnp.float32, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), _params())
          for _ in range(n)]


def _steps(tx, params, grads, update=None):
  """Applies tx for each gradient; returns (list of updates, final state)."""
  update = update or tx.update
  state, outs = tx.init(params), []
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    outs.append(u)
  return outs, state


class CommonTest(parameterized.TestCase):

  @parameterized.named_parameters(*_OPTIMIZERS)
  def test_init_update_keep_shapes_and_dtypes(self, factory, kwargs, **_):
    for dtype in (jnp.float32, jnp.bfloat16):
      params = _params(dtype)
      tx = factory(0.1, **kwargs)
      state = tx.init(params)
      u, new_state = tx.update(_grads(1, dtype)[0], state, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
      for x in jax.tree.leaves(u):
        self.assertTrue(np.all(np.isfinite(np.asarray(x, np.float32))))
        self.assertTrue(np.any(np.asarray(x, np.float32) != 0))

  @parameterized.named_parameters(*_OPTIMIZERS)
  def test_jit_matches_eager_and_compiles_once(self, factory, kwargs, **_):
    tx = factory(0.1, **kwargs)
    params, grads = _params(), _grads(3)
    eager, _ = _steps(tx, params, grads)
    update = jax.jit(tx.update)
    jitted, _ = _steps(tx, params, grads, update)
    chex.assert_trees_all_close(jitted, eager, rtol=1e-4, atol=1e-6)
    self.assertEqual(update._cache_size(), 1)

  @parameterized.named_parameters(*_OPTIMIZERS)
  def test_inject_hyperparams(self, factory, kwargs, static_args, **_):
    params, grads = _params(), _grads(3)
    plain, _ = _steps(factory(0.1, **kwargs), params, grads)
    tx = optax.inject_hyperparams(factory, static_args=static_args)(learning_rate=0.1, **kwargs)
    update = jax.jit(tx.update)
    injected, state = _steps(tx, params, grads, update)
    chex.assert_trees_all_close(injected, plain, rtol=1e-5, atol=1e-6)
    state.hyperparams["learning_rate"] = jnp.zeros_like(state.hyperparams["learning_rate"])
    u, _ = update(grads[0], state, params)
    for x in jax.tree.leaves(u):
      np.testing.assert_array_equal(x, 0.0)
    self.assertEqual(update._cache_size(), 1)

  @parameterized.named_parameters(*_OPTIMIZERS)
  def test_state_is_a_namedtuple_tree(self, factory, kwargs, state_type, **_):
    state = factory(0.1, **kwargs).init(_params())
    self.assertIsInstance(state, tuple)  # optax.chain's tuple of states
    for part in state:
      self.assertTrue(hasattr(part, "_fields"), type(part))
    self.assertIsInstance(state[0], state_type)
    leaves, treedef = jax.tree.flatten(state)
    self.assertEqual(jax.tree.unflatten(treedef, leaves), state)

  @parameterized.named_parameters(*_OPTIMIZERS)
  def test_minimises_quadratics_and_rosenbrock(self, factory, kwargs, converge, **_):
    peak, steps, extra = converge
    tx = factory(optax.cosine_decay_schedule(peak, steps), **kwargs, **extra)
    for target in (_parabola, _matrix_parabola, _mixed_parabola, _rosenbrock):
      initial, final, loss = target()

      @jax.jit
      def run(params, loss=loss):
        def body(carry, _):
          params, state = carry
          u, state = tx.update(jax.grad(loss)(params), state, params)
          return (optax.apply_updates(params, u), state), None
        return jax.lax.scan(body, (params, tx.init(params)), None, length=steps)[0][0]

      with self.subTest(target.__name__):
        chex.assert_trees_all_close(run(initial), final, atol=3e-2, rtol=3e-2)

  @parameterized.named_parameters(*_WITH_REFERENCE)
  def test_matches_numpy_reference(self, factory, kwargs, reference, **_):
    opt_kwargs, numpy_fn = reference
    lr, wd = 0.1, 0.01
    params, grads = _params(), _grads(5)
    tx = factory(lr, weight_decay=wd, **{**kwargs, **opt_kwargs})
    outs, _ = _steps(tx, params, grads, jax.jit(tx.update))
    ref = numpy_fn(params, grads, lr, wd)
    for t, (o, r) in enumerate(zip(outs, ref)):
      for k in r:
        np.testing.assert_allclose(o[k], r[k], rtol=2e-3, atol=2e-4 * np.abs(r[k]).max(),
                                   err_msg=f"step {t + 1}, {k}")


if __name__ == "__main__":
  absltest.main()
