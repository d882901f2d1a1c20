"""Shampoo and SOAP follow the optax conventions a user importing them relies on.

1. optax's own test suite for contributed optimizers
   (`optax/contrib/_common_test.py`, shipped in the installed wheel) runs on
   `shampoo` and `soap`: its test functions and the other axes of its
   parameter lists (targets, dtypes) are read off the installed `ContribTest`
   class, only the optimizer is ours. Its inject_hyperparams case knows the
   uninjectable arguments of optax's optimizers by name (`ns_steps`, `rank`,
   ...); ours are SHAMPOO_STATIC_ARGS / SOAP_STATIC_ARGS, so that case sees the
   factory with those bound, which is what
   `inject_hyperparams(factory, static_args=...)` does.
2. `optax.inject_hyperparams`: numeric hyper-parameters change at run time
   without recompiling and act exactly as the same value given to the plain
   factory (b2 = 1 included); the injected inner state has the plain
   factory's structure; a structural option injected is a clear error.
3. A donated update works on an eagerly initialised state (no two state leaves
   share a buffer).
4. `jax_enable_x64`, `optax.MultiSteps`, `optax.partition`, bf16 parameters.
"""
import contextlib
import functools
import importlib
import inspect
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizers import SHAMPOO_STATIC_ARGS, SOAP_STATIC_ARGS, shampoo, soap

_suite = importlib.import_module("optax.contrib._common_test")

# Ours, as entries of the suite's optimizer lists.
_OURS = {
    "shampoo": (shampoo, SHAMPOO_STATIC_ARGS, {"learning_rate": 1e-2}),
    "soap": (soap, SOAP_STATIC_ARGS, {"learning_rate": 1e-2}),
}
_OPTIMIZER_KEYS = ("opt_name", "opt_kwargs", "wrapper_name", "wrapper_kwargs")


def _bind_static(factory, static_args):
  """factory with static_args left at their defaults and hidden from its signature."""
  sig = inspect.signature(factory)

  @functools.wraps(factory)
  def bound(*args, **kwargs):
    return factory(*args, **kwargs)

  bound.__signature__ = sig.replace(
      parameters=[p for n, p in sig.parameters.items() if n not in static_args])
  del bound.__wrapped__
  return bound


def _suite_cases():
  """(name, raw suite function, params) for each suite case, with our optimizers.

  Each generated method of the suite's ContribTest closes over its raw test
  function and parameters (absl parameterized); the parameters other than the
  optimizer (target, dtype) are kept, the optimizer entries replaced by ours.
  `wrap` only matters for optax's wrappers, so it is dropped.
  """
  axes = {}
  for attr in sorted(dir(_suite.ContribTest)):
    method = getattr(_suite.ContribTest, attr)
    if not attr.startswith("test") or not getattr(method, "__closure__", None):
      continue
    cells = dict(zip(method.__code__.co_freevars,
                     (c.cell_contents for c in method.__closure__)))
    raw, params = cells["test_method"], cells["testcase_params"]
    rest = {k: v for k, v in params.items() if k not in _OPTIMIZER_KEYS + ("wrap",)}
    if "wrap" in params:
      rest["wrap"] = False
    key = (raw.__name__, tuple(sorted((k, repr(v)) for k, v in rest.items())))
    axes.setdefault(key, (raw, rest))
  cases = []
  for (fn_name, _), (raw, rest) in sorted(axes.items(), key=lambda kv: kv[0]):
    for opt_name, (_, _, kwargs) in _OURS.items():
      label = "_".join(getattr(v, "__name__", str(v)).replace(".", "")
                       for k, v in rest.items() if k != "wrap")
      name = "_".join(x for x in (fn_name.removeprefix("test_"), opt_name, label) if x)
      cases.append(dict(testcase_name=name, raw=raw, params=dict(
          rest, opt_name=opt_name, opt_kwargs=dict(kwargs), wrapper_name=None,
          wrapper_kwargs=None)))
  return cases


_SUITE_CASES = _suite_cases()


def _our_factory(raw_name, opt_name):
  factory, static_args, _ = _OURS[opt_name]
  if raw_name == "test_optimizers_can_be_wrapped_in_inject_hyperparams":
    return _bind_static(factory, static_args)
  return factory


class OptaxSuiteTest(parameterized.TestCase):
  """optax's contrib common tests, on shampoo and soap."""

  def test_the_suite_was_found(self):
    # 7 test functions in optax 0.2.8; all of them must have been picked up.
    names = {c["raw"].__name__ for c in _SUITE_CASES}
    self.assertGreaterEqual(len(names), 7, names)
    self.assertIn("test_optimizers_can_be_wrapped_in_inject_hyperparams", names)
    self.assertEqual(len(_SUITE_CASES) % len(_OURS), 0)

  @parameterized.named_parameters(*_SUITE_CASES)
  def test_suite(self, raw, params):
    lookup = functools.partial(_our_factory, raw.__name__)
    with mock.patch.object(_suite, "_get_opt_factory", lookup):
      raw(self, **params)


def _params(dtype=jnp.float32):
  # 8 x 4 in blocks of 4: no zero-padded block, whose rank-deficient factors
  # make the roots sensitive to round-off (eager vs jit, x64 vs not).
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(8, 4)), dtype),
          "b": jnp.asarray(rng.normal(size=(4,)), dtype)}


def _grads(n, dtype=jnp.float32, seed=1):
  rng = np.random.default_rng(seed)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), dtype), _params())
          for _ in range(n)]


def _run(tx, grads, params, update=None, state=None):
  update = update or jax.jit(tx.update)
  state = tx.init(params) if state is None else state
  outs = []
  for g in grads:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    outs.append(u)
  return outs, state


# name, factory, its static args, structural options for the tests.
_OPTS = (
    dict(testcase_name="shampoo", factory=shampoo, static_args=SHAMPOO_STATIC_ARGS,
         structure=dict(block_size=4, preconditioning_frequency=2)),
    dict(testcase_name="soap", factory=soap, static_args=SOAP_STATIC_ARGS,
         structure=dict(block_size=4, precondition_frequency=2)),
)


class InjectHyperparamsTest(parameterized.TestCase):

  @parameterized.named_parameters(*_OPTS)
  def test_learning_rate_changes_without_recompiling(self, factory, static_args, structure):
    params, grads = _params(), _grads(3)
    tx = optax.inject_hyperparams(factory, static_args=static_args)(
        learning_rate=0.1, **structure)
    update = jax.jit(tx.update)
    _, state = _run(tx, grads[:2], params, update)
    lr = state.hyperparams["learning_rate"]
    u1, _ = update(grads[2], state, params)
    state.hyperparams["learning_rate"] = jnp.full_like(lr, 0.03)
    u2, _ = update(grads[2], state, params)
    self.assertEqual(update._cache_size(), 1)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      self.assertGreater(float(jnp.max(jnp.abs(a))), 1e-3)
      np.testing.assert_allclose(b, 0.3 * a, rtol=1e-5, atol=1e-7)

  @parameterized.named_parameters(*_OPTS)
  def test_numeric_hyperparameters_changed_at_run_time_act_as_given(
      self, factory, static_args, structure):
    # Starts from the defaults (weight_decay 0: no decay term), switches to
    # `change` after 2 steps; must equal the plain factory given `change` from
    # that point on, with one compiled update for all changes. b2 = 1 turns
    # Shampoo's diagonal moments into running sums (Adagrad), traced or not.
    changes = [dict(weight_decay=0.1), dict(b1=0.5), dict(b2=0.8)]
    if factory is shampoo:  # Adam in SOAP's eigenbasis has no b2 = 1 mode
      changes += [dict(b2=1.0), dict(epsilon=1e-2, diag_eps=1e-3)]
    params, grads = _params(), _grads(4)
    tx = optax.inject_hyperparams(factory, static_args=static_args)(
        learning_rate=0.1, **structure)
    update = jax.jit(tx.update)
    _, start = _run(tx, grads[:2], params, update)
    _, plain_start = _run(factory(0.1, **structure), grads[:2], params)
    for change in changes:
      with self.subTest(str(change)):
        state = start._replace(hyperparams={
            k: jnp.full_like(v, change[k]) if k in change else v
            for k, v in start.hyperparams.items()})
        got, _ = _run(tx, grads[2:], params, update, state)
        want, _ = _run(factory(0.1, **structure, **change), grads[2:], params,
                       state=plain_start)
        chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    self.assertEqual(update._cache_size(), 1)

  @parameterized.named_parameters(*_OPTS)
  def test_injected_inner_state_has_the_plain_structure(self, factory, static_args,
                                                        structure):
    # weight_decay 0 used to drop the decay transformation from the plain chain
    # only, so the injected state (weight_decay an array) had another structure.
    params = _params()
    injected = optax.inject_hyperparams(factory, static_args=static_args)(
        learning_rate=0.1, **structure).init(params)
    plain = factory(0.1, **structure).init(params)
    self.assertEqual(jax.tree.structure(injected.inner_state), jax.tree.structure(plain))

  @parameterized.named_parameters(*_OPTS)
  def test_frequency_may_be_injected(self, factory, static_args, structure):
    freq = [k for k in structure if k.endswith("frequency")][0]
    dynamic = tuple(a for a in static_args if a != freq)
    params, grads = _params(), _grads(6)
    tx = optax.inject_hyperparams(factory, static_args=dynamic)(
        learning_rate=0.1, **structure)
    update = jax.jit(tx.update)
    _, state = _run(tx, grads[:2], params, update)
    self.assertIn(freq, state.hyperparams)
    _, plain_state = _run(factory(0.1, **structure), grads[:2], params)
    plain = factory(0.1, **{**structure, freq: 3})
    state.hyperparams[freq] = jnp.full_like(state.hyperparams[freq], 3)
    got, _ = _run(tx, grads[2:], params, update, state)
    want, _ = _run(plain, grads[2:], params, state=plain_state)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    self.assertEqual(update._cache_size(), 1)

  @parameterized.named_parameters(*_OPTS)
  def test_injected_structural_option_is_a_clear_error(self, factory, static_args,
                                                       structure):
    name = "SHAMPOO_STATIC_ARGS" if factory is shampoo else "SOAP_STATIC_ARGS"
    tx = optax.inject_hyperparams(factory)(learning_rate=0.1, **structure)
    with self.assertRaisesRegex(ValueError, f"block_size is structural.*{name}"):
      jax.jit(tx.init)(_params())

  @parameterized.named_parameters(*_OPTS)
  def test_bf16_params_with_float32_hyperparameters(self, factory, static_args,
                                                    structure):
    # optax stores injected hyper-parameters in the params' dtype unless told
    # otherwise (b2 = 0.999 is 1 in bf16); with hyperparam_dtype=float32, bf16
    # params match the plain run (updates are then float32, as optax.adamw's).
    params = _params(jnp.bfloat16)
    grads = _grads(3, jnp.bfloat16)
    tx = optax.inject_hyperparams(factory, static_args=static_args,
                                  hyperparam_dtype=jnp.float32)(
                                      learning_rate=0.1, **structure)
    got, state = _run(tx, grads, params)
    want, _ = _run(factory(0.1, **structure), grads, params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      self.assertEqual(b.dtype, jnp.bfloat16)
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                 rtol=1e-2, atol=1e-3)
    self.assertEqual(state.hyperparams["b2"].dtype, jnp.float32)
    self.assertLess(float(state.hyperparams["b2"]), 1.0)


class BuffersAndModesTest(parameterized.TestCase):

  @parameterized.product(opt=_OPTS, inject=(False, True))
  def test_donated_update_of_an_eager_state(self, opt, inject):
    # SOAP's eager init used to give mu and nu one zeros buffer: "Attempt to
    # donate the same buffer twice".
    factory, structure = opt["factory"], opt["structure"]
    tx = (optax.inject_hyperparams(factory, static_args=opt["static_args"])
          if inject else factory)(0.1, **structure)
    params, grads = _params(), _grads(2)
    state = tx.init(params)
    pointers = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(state)]
    self.assertEqual(len(pointers), len(set(pointers)))
    got, _ = _run(tx, grads, params, jax.jit(tx.update, donate_argnums=(1,)), state)
    self.assertTrue(state[0].count.is_deleted() if not inject else
                    state.count.is_deleted())  # really donated
    for u in jax.tree.leaves(got):
      self.assertTrue(np.all(np.isfinite(u)) and np.any(u != 0))

  @parameterized.product(opt=_OPTS, dtype=("float32", "float64"))
  def test_x64(self, opt, dtype):
    # Under jax_enable_x64 the failure counters used to become int64 in one
    # branch of the root step's lax.cond; injected float64 hyper-parameters
    # promoted the float32 statistics and moments.
    factory, structure = opt["factory"], opt["structure"]
    grads = _grads(3)
    want, _ = _run(factory(0.1, **structure), grads, _params())  # 32-bit mode
    with jax.enable_x64(True):
      params = _params(dtype)
      grads = [jax.tree.map(lambda g: g.astype(dtype), g) for g in grads]
      for tx in (factory(0.1, **structure),
                 optax.inject_hyperparams(factory, static_args=opt["static_args"])(
                     learning_rate=0.1, **structure)):
        update = jax.jit(tx.update)
        state = tx.init(params)
        got = []
        for g in grads:
          u, new_state = update(g, state, params)
          chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
          state = new_state
          params = optax.apply_updates(params, u)
          got.append(u)
        self.assertEqual(update._cache_size(), 1)
        self.assertEqual(got[0]["w"].dtype, jnp.dtype(dtype))
        chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
        params = _params(dtype)
    self.assertFalse(jax.config.jax_enable_x64)

  @parameterized.named_parameters(*_OPTS)
  def test_multisteps_equals_the_mean_gradient(self, factory, static_args, structure):
    # Gradients on a 1/8 grid and k = 2: the mean is exact however it is summed.
    params = _params()
    grads = [jax.tree.map(lambda x: jnp.round(8 * x) / 8, g) for g in _grads(6)]
    tx = factory(0.1, **structure)
    k = 2
    ms = optax.MultiSteps(tx, every_k_schedule=k)
    got, _ = _run(ms, grads, params)
    means = [jax.tree.map(lambda *g: sum(g) / k, *grads[i:i + k])
             for i in range(0, len(grads), k)]
    want, _ = _run(tx, means, params)
    for i, u in enumerate(got):
      if (i + 1) % k:
        chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
      else:
        chex.assert_trees_all_close(u, want[i // k], rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*_OPTS)
  def test_partition_equals_the_optimizer_on_its_part(self, factory, static_args,
                                                      structure):
    rng = np.random.default_rng(5)
    params = {"w": jnp.asarray(rng.normal(size=(6, 4)), jnp.float32),
              "emb": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
              "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32),
                          params) for _ in range(4)]
    ours = factory(0.1, **structure)
    tx = optax.partition({"ours": ours, "adam": optax.adam(0.1)},
                         {"w": "ours", "b": "ours", "emb": "adam"})
    got, _ = _run(tx, grads, params)
    mine = lambda t: {k: t[k] for k in ("w", "b")}
    want, _ = _run(ours, [mine(g) for g in grads], mine(params))
    want_emb, _ = _run(optax.adam(0.1), [g["emb"] for g in grads], params["emb"])
    for u, w, e in zip(got, want, want_emb):
      chex.assert_trees_all_close(mine(u), w, rtol=1e-6, atol=1e-7)
      chex.assert_trees_all_close(u["emb"], e, rtol=1e-6, atol=1e-7)


if __name__ == "__main__":
  absltest.main()
