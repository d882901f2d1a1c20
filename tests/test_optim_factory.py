"""framework.optim: every config.optimizer field takes effect or is rejected."""
from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import optimizer_references as refs
import optimizers
from framework import optim
from framework.config import ConfigError


def _opt(**fields):
  base = dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
              grad_clip_norm=0.0, momentum=0.9, kwargs={})
  base.update(fields)
  return ml_collections.ConfigDict(base)


def _params():
  rng = np.random.default_rng(0)
  return {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}


def _grads(n=3, scale=1.0):
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), jnp.float32),
                       _params()) for _ in range(n)]


def _updates(tx, grads=None):
  params, state, outs = _params(), None, []
  state = tx.init(params)
  for g in grads or _grads():
    u, state = tx.update(g, state, params)
    params = optax.apply_updates(params, u)
    outs.append(u)
  return outs


class FieldsTest(parameterized.TestCase):

  @parameterized.parameters(
      ("shampoo", lambda lr: optimizers.shampoo(lr, b1=0.5, b2=0.8, diag_eps=1e-3,
                                                weight_decay=0.1)),
      ("soap", lambda lr: optimizers.soap(lr, b1=0.5, b2=0.8, eps=1e-3, weight_decay=0.1)),
      ("adamw", lambda lr: optax.adamw(lr, b1=0.5, b2=0.8, eps=1e-3, weight_decay=0.1)))
  def test_adam_fields_reach_the_optimizer(self, name, explicit):
    # b1 / b2 / eps used to reach only AdamW; Shampoo and SOAP dropped them.
    opt = _opt(name=name, b1=0.5, b2=0.8, eps=1e-3, weight_decay=0.1)
    got = _updates(optim.make_optimizer(opt, 0.1))
    chex.assert_trees_all_close(got, _updates(explicit(0.1)), rtol=1e-6, atol=1e-7)
    with_defaults = _updates(optim.make_optimizer(_opt(name=name, weight_decay=0.1), 0.1))
    self.assertGreater(float(jnp.max(jnp.abs(got[-1]["w"] - with_defaults[-1]["w"]))), 1e-3)

  def test_adam_against_numpy(self):
    grads = _grads()
    got = _updates(optim.make_optimizer(_opt(name="adam", b1=0.8, b2=0.9, eps=1e-3), 0.1), grads)
    for k in ("w", "b"):
      ref = refs.numpy_adam_direction([g[k] for g in grads], 0.8, 0.9, 1e-3)
      for u, r in zip(got, ref):
        np.testing.assert_allclose(u[k], -0.1 * r, rtol=1e-5, atol=1e-7)

  @parameterized.parameters(0.0, None)
  def test_sgd_without_momentum_is_plain_sgd(self, momentum):
    grads = _grads()
    got = _updates(optim.make_optimizer(_opt(name="sgd", momentum=momentum), 0.1), grads)
    for u, g in zip(got, grads):
      chex.assert_trees_all_close(u, jax.tree.map(lambda x: -0.1 * x, g), rtol=1e-6)

  def test_sgd_momentum_and_l2_against_numpy(self):
    grads = _grads()
    got = _updates(optim.make_optimizer(_opt(name="sgd", momentum=0.5, weight_decay=0.01), 0.1),
                   grads)
    p = {k: np.asarray(v, np.float64) for k, v in _params().items()}
    m = {k: 0.0 for k in p}
    for u, g in zip(got, grads):
      for k in p:
        m[k] = 0.5 * m[k] + np.asarray(g[k], np.float64) + 0.01 * p[k]
        np.testing.assert_allclose(u[k], -0.1 * m[k], rtol=1e-5, atol=1e-7)
        p[k] = p[k] - 0.1 * m[k]

  def test_normalized_gd_against_numpy(self):
    grads = _grads(scale=1e-3)
    got = _updates(optim.make_optimizer(_opt(name="normalized_gd", weight_decay=0.01), 0.1), grads)
    ref = refs.numpy_normalized_sgd(_params(), grads, learning_rate=0.1, weight_decay=0.01)
    for u, r in zip(got, ref):
      for k in r:
        np.testing.assert_allclose(u[k], r[k], rtol=1e-5, atol=1e-8)

  @parameterized.parameters("adamw", "sgd", "shampoo", "normalized_gd")
  def test_grad_clip_norm_applies(self, name):
    big = _grads(1, scale=1e3)
    clipped = _updates(optim.make_optimizer(_opt(name=name, grad_clip_norm=1.0), 0.1), big)
    unit = jax.tree.map(lambda g: g / optax.global_norm(big[0]), big[0])
    expected = _updates(optim.make_optimizer(_opt(name=name), 0.1), [unit])
    chex.assert_trees_all_close(clipped, expected, rtol=1e-4, atol=1e-6)
    if name == "sgd":  # no momentum yet: the step is lr times the clipped gradient
      self.assertAlmostEqual(float(optax.global_norm(clipped[0])), 0.1, places=5)

  def test_kwargs_that_agree_with_a_field_or_replace_an_absent_one(self):
    same = _opt(name="soap", b1=0.9, kwargs=dict(b1=0.9, precondition_frequency=2))
    self.assertEqual(optim.optimizer_kwargs(same)["b1"], 0.9)
    opt = _opt(name="soap", kwargs=dict(b1=0.7))
    del opt["b1"]
    self.assertEqual(optim.optimizer_kwargs(opt)["b1"], 0.7)


class RejectionTest(parameterized.TestCase):

  @parameterized.parameters(
      ("sgd", "b2", 0.95), ("sgd", "b1", 0.5), ("sgd", "eps", 1e-6),
      ("adamw", "momentum", 0.5), ("shampoo", "momentum", 0.0), ("soap", "momentum", 0.99),
      ("adam", "weight_decay", 0.1), ("normalized_gd", "eps", 1e-3),
      ("normalized_gd", "b1", 0.95), ("normalized_gd", "momentum", 0.5))
  def test_field_without_meaning_is_rejected_unless_default(self, name, field, value):
    with self.assertRaisesRegex(ConfigError, rf"config\.optimizer\.{field}=.*{name}"):
      optim.make_optimizer(_opt(name=name, **{field: value}), 0.1)
    optim.make_optimizer(_opt(name=name, **{field: optim.FIELD_DEFAULTS[field]}), 0.1)
    optim.make_optimizer(_opt(name=name, **{field: None}), 0.1)

  def test_field_and_kwarg_that_disagree(self):
    opt = _opt(name="shampoo", b1=0.9, kwargs=dict(b1=0.95))
    with self.assertRaisesRegex(ConfigError, r"optimizer\.b1=0\.9 and .*kwargs\.b1=0\.95"):
      optim.make_optimizer(opt, 0.1)
    opt = _opt(name="shampoo", eps=1e-8, kwargs=dict(diag_eps=1e-6))
    with self.assertRaisesRegex(ConfigError, r"kwargs\.diag_eps"):
      optim.make_optimizer(opt, 0.1)

  def test_unknown_name_field_and_learning_rate_kwarg(self):
    with self.assertRaisesRegex(ConfigError, r"optimizer\.name='lion'"):
      optim.make_optimizer(_opt(name="lion"), 0.1)
    with self.assertRaisesRegex(ConfigError, r"optimizer\.beta1: unknown field"):
      optim.make_optimizer(_opt(beta1=0.9), 0.1)
    with self.assertRaisesRegex(ConfigError, r"kwargs\.learning_rate"):
      optim.make_optimizer(_opt(kwargs=dict(learning_rate=1.0)), 0.1)

  def test_study_configs_switch_between_their_optimizers(self):
    lm = _opt(b2=0.95, weight_decay=0.1, grad_clip_norm=1.0)  # the LM quickstart's fields
    for name in ("adamw", "shampoo", "soap"):
      lm.name = name
      optim.make_optimizer(lm, 0.1)
    small = _opt(b2=0.999)  # the margin study's fields
    for name in ("adam", "sgd", "normalized_gd", "adamw", "shampoo", "soap"):
      small.name = name
      optim.make_optimizer(small, 0.1)


class ScheduleTest(absltest.TestCase):

  def _sched(self, **kw):
    return ml_collections.ConfigDict(dict(dict(name="cosine", peak_lr=0.1, warmup_steps=0,
                                               end_lr_fraction=0.01), **kw))

  def test_cosine_closed_form(self):
    fn = optim.make_schedule(self._sched(), 100)
    for t in (0, 10, 50, 99, 100, 150):
      frac = min(t, 100) / 100
      ref = 0.1 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * frac)))
      self.assertAlmostEqual(float(fn(t)), ref, places=6)

  def test_cosine_rejects_warmup_and_unknown_names_are_rejected(self):
    with self.assertRaisesRegex(ConfigError, r"schedule\.warmup_steps=5 .*'cosine'"):
      optim.make_schedule(self._sched(warmup_steps=5), 100)
    with self.assertRaisesRegex(ConfigError, r"schedule\.name='linear'"):
      optim.make_schedule(self._sched(name="linear"), 100)

  def test_warmup_schedules_keep_their_shape(self):
    fn = optim.make_schedule(self._sched(name="warmup_cosine", warmup_steps=10), 100)
    self.assertAlmostEqual(float(fn(0)), 0.0)
    self.assertAlmostEqual(float(fn(10)), 0.1, places=6)
    self.assertAlmostEqual(float(fn(100)), 0.001, places=6)
    fn = optim.make_schedule(self._sched(name="constant", warmup_steps=4), 100)
    self.assertEqual([round(float(fn(t)), 6) for t in (0, 2, 4, 50)], [0.0, 0.05, 0.1, 0.1])


if __name__ == "__main__":
  absltest.main()
