"""MatFormer (models/matformer.py): nested slices, extraction, joint/sampled
objectives, real FLOP savings, balanced tensor shards, and the cache interface.

References: numpy for the nested layout, the plain `TransformerLM` for logits
and gradients (extracted parameters run by the transformer's own code), and
the closed-form FFN FLOPs for the compiled cost analysis.
"""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized
from jax.sharding import NamedSharding, PartitionSpec as P

from framework import mesh as mesh_lib
from framework import sharding as sharding_lib
from models import matformer as mf
from models import registry
from models import transformer as tr

CFG = mf.MatFormerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, d_ff=64, granularities=(8, 16, 32, 64), interleave=4)


# One layer, for the tests that compile many granularities.
SMALL = mf.MatFormerConfig(**dict(CFG.__dict__, num_layers=1))


def _batch(rng, n=4, t=12, vocab=64):
  seq = rng.integers(0, vocab, (n, t + 1))
  return {"inputs": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
          "weights": (rng.random((n, t)) > 0.1).astype(np.float32)}


@functools.lru_cache(maxsize=None)
def _init_cached(cfg, seed):
  batch = _batch(np.random.default_rng(seed))
  init = jax.jit(lambda key: mf.MatFormerLM(cfg).init(key, batch, method="loss")["params"])
  return nn.meta.unbox(init(jax.random.PRNGKey(seed))), batch


def _init(cfg=CFG, seed=0):
  return _init_cached(cfg, seed)


@functools.partial(jax.jit, static_argnames=("cfg", "granularity"))
def _logits(params, tokens, cfg=CFG, granularity=None):
  return mf.MatFormerLM(cfg, granularity).apply({"params": params}, tokens)


@functools.partial(jax.jit, static_argnames=("pcfg",))
def _plain_logits(params, tokens, pcfg):
  return tr.TransformerLM(pcfg).apply({"params": params}, tokens)


class ConfigTest(parameterized.TestCase):

  def test_default_granularities_are_the_papers(self):
    cfg = mf.MatFormerConfig(d_ff=768)
    self.assertEqual(cfg.granularities, (96, 192, 384, 768))
    self.assertEqual(cfg.weights, (0.25,) * 4)
    self.assertEqual(mf.MatFormerConfig(d_ff=64, sample_probs=(1, 1, 2, 4)).probs,
                     (0.125, 0.125, 0.25, 0.5))
    self.assertIsInstance(cfg, tr.TransformerConfig)

  @parameterized.parameters(
      (dict(granularities=(8, 16)), "end with model.d_ff"),
      (dict(granularities=(16, 8, 64)), "ascending"),
      (dict(granularities=(6, 64)), "multiple of model.interleave"),
      (dict(interleave=5), "model.interleave"),
      (dict(loss_weights=(1.0, 1.0)), "model.loss_weights"),
      (dict(sample_probs=(1, -1, 0, 1)), "model.sample_probs"),
      (dict(mode="mixed"), "model.mode"),
  )
  def test_bad_config_names_the_field(self, change, message):
    fields = dict(d_ff=64, interleave=4, granularities=(8, 16, 32, 64))
    fields.update(change)
    with self.assertRaisesRegex(ValueError, re.escape(message)):
      mf.MatFormerConfig(**fields)

  def test_registry_builds_it(self):
    model = registry.build(dict(name="matformer", d_ff=64, interleave=4,
                                granularities=[8, 16, 32, 64], mode="sampled"))
    self.assertEqual(model.module.cfg.granularities, (8, 16, 32, 64))
    self.assertTrue(model.uses_step)

  def test_bad_granularity_is_rejected(self):
    params, batch = _init()
    with self.assertRaisesRegex(ValueError, "multiple of interleave"):
      _logits(params, batch["inputs"], granularity=10)
    with self.assertRaisesRegex(ValueError, "num_layers=2"):
      _logits(params, batch["inputs"], granularity=(8, 8, 8))


class NestedLayoutTest(parameterized.TestCase):

  @parameterized.parameters(4, 8, 16, 32)
  def test_prefix_is_the_numpy_nested_units(self, m):
    d_ff, b = 32, 4
    w = np.random.default_rng(0).normal(size=(3, d_ff)).astype(np.float32)
    # Stored index p = blk * (d_ff / B) + l holds nested unit u = l * B + blk.
    stored_of_unit = {l * b + blk: blk * (d_ff // b) + l
                      for blk in range(b) for l in range(d_ff // b)}
    prefix_units = sorted(stored_of_unit[u] for u in range(m))
    got = np.asarray(mf.nested_prefix(jnp.asarray(w), m, 1, b))
    np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(w[:, prefix_units], axis=1))
    self.assertEqual(got.shape, (3, m))
    np.testing.assert_array_equal(mf.nested_order(d_ff, b),
                                  [stored_of_unit[u] for u in range(d_ff)])
    # Prefixes nest: the m units are among the 2m units.
    bigger = np.asarray(mf.nested_prefix(jnp.asarray(w), min(2 * m, d_ff), 1, b))
    self.assertTrue(set(got.ravel()) <= set(bigger.ravel()))

  def test_ffn_matches_numpy_on_the_first_m_nested_units(self):
    cfg, m = CFG, 16
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, cfg.d_model)).astype(np.float32)
    ffn = mf.NestedSwiGLU(cfg, m)
    params = nn.meta.unbox(ffn.init(jax.random.PRNGKey(0), x))
    got = np.asarray(ffn.apply(params, x))
    p = jax.tree.map(np.asarray, params["params"])
    units = mf.nested_order(cfg.d_ff, cfg.interleave)[:m]
    g, u, d = p["w_gate"][:, units], p["w_up"][:, units], p["w_down"][units]
    a = x @ g
    want = (a / (1 + np.exp(-a)) * (x @ u)) @ d
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class ExtractionTest(parameterized.TestCase):

  def test_universal_params_are_transformer_params(self):
    params, batch = _init()
    want = _plain_logits(params, batch["inputs"], mf.plain_config(CFG, CFG.d_ff))
    np.testing.assert_allclose(_logits(params, batch["inputs"]), want, rtol=1e-6, atol=1e-6)

  @parameterized.parameters(8, 64, [(64, 16)], [(24, 40)])
  def test_extracted_lm_equals_the_sub_model(self, granularity):
    params, batch = _init()
    sub, pcfg = mf.extract(params, CFG, granularity)
    widths = mf.resolve_widths(CFG, granularity)
    self.assertEqual(pcfg.d_ff, max(widths))
    self.assertEqual(type(pcfg), tr.TransformerConfig)
    np.testing.assert_allclose(_plain_logits(sub, batch["inputs"], pcfg),
                               _logits(params, batch["inputs"], granularity=granularity),
                               rtol=2e-5, atol=2e-5)
    # The real (unpadded) parameter count; uniform ones equal the plain LM's.
    nonzero = sum(int(np.count_nonzero(np.asarray(v))) for v in jax.tree.leaves(sub))
    self.assertEqual(nonzero, mf.count_params(CFG, granularity)["total"])
    if len(set(widths)) == 1:
      size = sum(int(np.size(v)) for v in jax.tree.leaves(sub))
      self.assertEqual(size, tr.count_params(pcfg)["total"])

  def test_extraction_is_prefix_consistent(self):
    # The extracted universal LM holds its units in nested order: its own first
    # m units are the sub-model of width m.
    params, batch = _init()
    full, pcfg = mf.extract(params, CFG, None)
    sub, _ = mf.extract(params, CFG, 16)
    for i in range(CFG.num_layers):
      np.testing.assert_array_equal(full[f"layer_{i}"]["mlp"]["w_up"][:, :16],
                                    sub[f"layer_{i}"]["mlp"]["w_up"])
      np.testing.assert_array_equal(full[f"layer_{i}"]["mlp"]["w_down"][:16],
                                    sub[f"layer_{i}"]["mlp"]["w_down"])

  def test_extract_rejects_mismatched_params(self):
    params, _ = _init()
    other = mf.MatFormerConfig(**dict(CFG.__dict__, d_ff=128, granularities=()))
    with self.assertRaisesRegex(ValueError, "layer_0/mlp/w_gate"):
      mf.extract(params, other, 16)


class HFExportTest(absltest.TestCase):

  def test_extracted_sub_model_exports_and_reloads(self):
    from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
    params, batch = _init()
    sub, pcfg = mf.extract(params, CFG, (8, 16))
    path = self.create_tempdir().full_path
    hf_checkpoint.save_hf(path, pcfg, sub)
    loaded_cfg, loaded = hf_checkpoint.load_hf(path)
    self.assertEqual(loaded_cfg.d_ff, 16)
    np.testing.assert_allclose(_plain_logits(loaded, batch["inputs"], loaded_cfg),
                               _logits(params, batch["inputs"], granularity=(8, 16)),
                               rtol=1e-5, atol=1e-5)


class StudyPiecesTest(absltest.TestCase):
  """The study's helpers (experiments/matformer), without training."""

  def test_config_variants_validate_and_baselines_share_fields(self):
    from experiments.configs import matformer_small  # pylint: disable=g-import-not-at-top
    from experiments.matformer import matformer_study  # pylint: disable=g-import-not-at-top
    config = matformer_small.get_config("tiny")
    cfg = matformer_study.validate(config)
    self.assertEqual(cfg.granularities, (16, 32, 64, 128))
    base = matformer_study.baseline_config(config.lm, cfg, 32)
    self.assertEqual(base.model.name, "transformer")
    plain = registry.make_config(base.model)
    self.assertEqual(plain, mf.plain_config(cfg, 32))
    self.assertEqual(base.trainer.total_steps, config.lm.trainer.total_steps)
    config.study.spec_prompt_len = 1000
    with self.assertRaisesRegex(Exception, "study.spec_prompt_len"):
      matformer_study.validate(config)
    with self.assertRaisesRegex(ValueError, "unknown variant"):
      matformer_small.get_config("huge")

  def test_mixnmatch_choices_and_the_uniform_line(self):
    from experiments.matformer import matformer_eval  # pylint: disable=g-import-not-at-top
    choices = matformer_eval.mixnmatch_choices(CFG, 5, seed=0)
    self.assertEqual(choices[:4], [(8, 8), (16, 16), (32, 32), (64, 64)])
    rest = choices[4:]
    self.assertLen(rest, 5)
    self.assertLen(set(rest), 5)
    self.assertTrue(all(len(set(c)) > 1 and set(c) <= {8, 16, 32, 64} for c in rest))
    # 2 layers, 4 widths: only 12 non-uniform choices exist.
    self.assertLen(matformer_eval.mixnmatch_choices(CFG, 50, seed=0), 4 + 12)
    line = [(10.0, 3.0), (30.0, 2.0)]
    self.assertAlmostEqual(matformer_eval.below_uniform_line(20.0, 2.4, line), -0.1)
    self.assertAlmostEqual(matformer_eval.below_uniform_line(15.0, 3.0, line), 0.25)


class ObjectiveTest(parameterized.TestCase):

  def test_joint_loss_and_gradient_are_weighted_sums_over_granularities(self):
    cfg = mf.MatFormerConfig(**dict(SMALL.__dict__, granularities=(8, 32, 64),
                                    loss_weights=(0.2, 0.3, 0.5)))
    params, batch = _init(cfg)
    model = mf.build(cfg)

    def plain_loss(p, m):
      sub, pcfg = mf.extract(p, cfg, m)
      return tr.TransformerLM(pcfg).apply({"params": sub}, batch, method="loss")["loss"]

    @jax.jit
    def both(p):
      grad = jax.grad(lambda q: model.loss(q, batch)["loss"])(p)
      separate = {m: jax.value_and_grad(plain_loss)(p, m) for m in cfg.granularities}
      small = jax.grad(lambda q: model.module.apply({"params": q}, batch, 8,
                                                    method="granularity_sums")["loss"])(p)
      return model.loss(p, batch), grad, separate, small

    sums, loss_grad, separate, g8 = both(params)
    want_loss = sum(w * separate[m][0] for m, w in zip(cfg.granularities, cfg.weights))
    want_grad = jax.tree.map(jnp.zeros_like, params)
    for m, w in zip(cfg.granularities, cfg.weights):
      want_grad = jax.tree.map(lambda a, b, w=w: a + w * b, want_grad, separate[m][1])
      np.testing.assert_allclose(sums[f"loss_ffn{m}"], separate[m][0], rtol=1e-5)
    np.testing.assert_allclose(sums["loss"], want_loss, rtol=1e-5)
    self.assertEqual(float(sums["tokens"]), float(batch["weights"].sum()))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 loss_grad, want_grad)
    # Units beyond the smallest width get no gradient from the smallest model.
    outside = np.asarray(g8["layer_0"]["mlp"]["w_up"])[:, mf.nested_order(64, 4)[8:]]
    inside = np.asarray(g8["layer_0"]["mlp"]["w_up"])[:, mf.nested_order(64, 4)[:8]]
    self.assertEqual(float(np.abs(outside).max()), 0.0)
    self.assertGreater(float(np.abs(inside).max()), 0.0)

  def test_sampled_mode_picks_one_granularity_per_step_with_its_probability(self):
    probs = (0.5, 0.3, 0.15, 0.05)
    cfg = mf.MatFormerConfig(**dict(SMALL.__dict__, mode="sampled", sample_probs=probs))
    params, batch = _init(cfg)
    model = mf.build(cfg)
    per_gran = jax.jit(model.loss)(params, batch)   # no step: every granularity and the expectation
    losses = np.array([float(per_gran[f"loss_ffn{m}"]) for m in cfg.granularities])
    np.testing.assert_allclose(float(per_gran["loss"]), float(np.dot(probs, losses)), rtol=1e-5)
    step_loss = jax.jit(lambda s: model.loss(params, dict(batch, step=s)))
    picks = []
    for s in range(400):
      out = step_loss(jnp.int32(s))
      match = np.flatnonzero(np.isclose(losses, float(out["loss"]), rtol=1e-5))
      self.assertLen(match, 1)
      self.assertEqual(float(out["ffn_width"]) / float(out["tokens"]),
                       cfg.granularities[match[0]])
      picks.append(match[0])
    freq = np.bincount(picks, minlength=4) / len(picks)
    # 400 draws: 4 standard errors of the largest cell is < 0.1.
    np.testing.assert_allclose(freq, probs, atol=0.1)
    self.assertEqual(step_loss(jnp.int32(7))["loss"], step_loss(jnp.int32(7))["loss"])


class SampledTrainStepTest(absltest.TestCase):

  def _sampled_setup(self, num_microbatches=1):
    """(cfg, model, batch, fresh state, jitted common train step) for sampled mode."""
    import optax  # pylint: disable=g-import-not-at-top
    from framework import train_state as train_state_lib  # pylint: disable=g-import-not-at-top
    from framework import train_step as train_step_lib  # pylint: disable=g-import-not-at-top
    cfg = mf.MatFormerConfig(**dict(SMALL.__dict__, mode="sampled", granularities=(16, 64)))
    model = mf.build(cfg)
    _, batch = _init(cfg)
    mesh = mesh_lib.create_mesh({"data": 1}, jax.devices()[:1])
    tx = optax.sgd(0.1)
    state, _ = train_state_lib.create_sharded_state(model, tx, batch, mesh,
                                                    sharding_lib.DEFAULT_RULES)
    step = jax.jit(train_step_lib.make_train_step(model, tx, num_microbatches=num_microbatches))
    return cfg, model, batch, state, step

  def test_common_train_step_passes_the_step_and_trains_the_drawn_granularity(self):
    cfg, model, batch, state, step = self._sampled_setup()
    per_gran = jax.jit(model.loss)(state.params, batch)
    for _ in range(3):
      before = per_gran
      state, metrics = step(state, batch)
      m = int(round(float(metrics["ffn_width"])))
      self.assertIn(m, cfg.granularities)
      np.testing.assert_allclose(float(metrics["loss"]),
                                 float(before[f"loss_ffn{m}"]) / float(before["tokens"]),
                                 rtol=1e-5)
      per_gran = jax.jit(model.loss)(state.params, batch)
    self.assertEqual(int(state.step), 3)

  def test_micro_batches_see_the_step_and_match_one_big_batch(self):
    out = []
    for mb in (1, 2):
      _, _, batch, state, step = self._sampled_setup(mb)
      widths = []
      for _ in range(3):
        state, metrics = step(state, batch)
        widths.append(float(metrics["ffn_width"]))
      out.append((widths, state.params))
    self.assertEqual(out[0][0], out[1][0])   # the same granularity drawn at each step
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 out[0][1], out[1][1])


def _forward_flops(cfg, granularity, tokens):
  params, _ = _init(cfg)
  fn = jax.jit(lambda p, x: mf.MatFormerLM(cfg, granularity).apply({"params": p}, x))
  analysis = fn.lower(params, tokens).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return float(analysis["flops"])


class FlopsTest(absltest.TestCase):

  def test_compiled_flops_drop_by_the_ffn_matmuls(self):
    cfg = mf.MatFormerConfig(**dict(SMALL.__dict__, d_ff=256, granularities=(32, 64, 128, 256),
                                    interleave=8))
    tokens = np.zeros((2, 16), np.int32)
    n = tokens.size
    flops = {m: _forward_flops(cfg, m, tokens) for m in cfg.granularities}
    full = flops[cfg.d_ff]
    for m in cfg.granularities[:-1]:
      # Three matmuls of 2 d m flops per token per layer fewer, plus the
      # elementwise silu * up on the m hidden units (a few flops each).
      saved = full - flops[m]
      matmuls = 2 * 3 * cfg.d_model * (cfg.d_ff - m) * n * cfg.num_layers
      self.assertGreaterEqual(saved, matmuls)
      self.assertLess(saved, matmuls * 1.1)
    self.assertLess(flops[32] / full, 0.6)


class ShardingTest(parameterized.TestCase):

  @parameterized.parameters(2, 4)
  def test_every_prefix_is_balanced_and_local_on_tensor_shards(self, tensor):
    d_ff, b = 64, 4
    mesh = mesh_lib.create_mesh({"data": 8 // tensor, "tensor": tensor}, jax.devices())
    w = np.random.default_rng(0).normal(size=(8, d_ff)).astype(np.float32)
    w_sharded = jax.device_put(w, NamedSharding(mesh, P(None, "tensor")))
    local = d_ff // tensor
    for m in (8, 16, 32, 64):
      fn = jax.jit(lambda x, m=m: mf.nested_prefix(x, m, 1, b))
      hlo = fn.lower(w_sharded).compile().as_text()
      self.assertNotRegex(hlo, "all-gather|all-to-all|collective-permute|all-reduce",
                          f"slicing prefix {m} moved data between devices")
      out = fn(w_sharded)
      units = set(mf.nested_order(d_ff, b)[:m].tolist())
      for shard in out.addressable_shards:
        s = shard.index[1].start // (m // tensor)
        self.assertEqual(shard.data.shape, (8, m // tensor))   # equal share of the prefix
        stored = range(s * local, (s + 1) * local)           # the columns this device holds
        mine = [p for p in stored if p in units]
        self.assertLen(mine, m // tensor)
        np.testing.assert_array_equal(np.sort(np.asarray(shard.data), 1),
                                      np.sort(w[:, mine], 1))

  def test_sharded_forward_equals_one_device(self):
    params, batch = _init()
    rules = sharding_lib.DEFAULT_RULES
    abstract = jax.eval_shape(lambda: mf.MatFormerLM(CFG).init(
        jax.random.PRNGKey(0), batch, method="loss")["params"])
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 1, "tensor": 4}, jax.devices())
    shardings = sharding_lib.logical_shardings(abstract, mesh, rules)
    self.assertEqual(shardings["layer_0"]["mlp"]["w_up"].spec[1], "tensor")
    sharded = jax.device_put(params, shardings)
    want = {m: _logits(params, batch["inputs"], granularity=m) for m in (8, (16, 64))}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.normalize_rules(rules)):
      for m, ref in want.items():
        got = jax.jit(lambda p, x, m=m: _logits(p, x, granularity=m))(sharded, batch["inputs"])
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


class ConsistencyTest(absltest.TestCase):

  def test_agreement_and_kl_on_constructed_distributions(self):
    # Row 0: p = (1/4, 3/4), q = (1/2, 1/2) (argmax tie -> id 0: disagree).
    # Row 1: p = q = (0.9, 0.1) (agree, KL 0). Row 2: weight 0 (ignored).
    p = np.log(np.array([[0.25, 0.75], [0.9, 0.1], [0.5, 0.5]]))
    q = np.log(np.array([[0.5, 0.5], [0.9, 0.1], [0.99, 0.01]]))
    out = mf.consistency_sums(jnp.asarray(q[None]), jnp.asarray(p[None]),
                              jnp.asarray([[1.0, 1.0, 0.0]]))
    kl0 = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    rev0 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    self.assertEqual(float(out["tokens"]), 2.0)
    self.assertEqual(float(out["agree"]), 1.0)
    np.testing.assert_allclose(float(out["kl"]), kl0, rtol=1e-5)
    np.testing.assert_allclose(float(out["kl_reverse"]), rev0, rtol=1e-5)

  def test_universal_model_is_consistent_with_itself_and_sub_models_less(self):
    params, batch = _init()
    fn = jax.jit(lambda p, m: mf.MatFormerLM(CFG).apply({"params": p}, batch, m,
                                                        method="consistency"),
                 static_argnums=1)
    same = fn(params, CFG.d_ff)
    self.assertEqual(float(same["agree"]), float(same["tokens"]))
    self.assertAlmostEqual(float(same["kl"]), 0.0, places=6)
    sub = fn(params, 8)
    self.assertGreater(float(sub["kl"]), 1e-4)
    self.assertLessEqual(float(sub["agree"]), float(sub["tokens"]))


class DecodingInterfaceTest(absltest.TestCase):

  def test_kv_cache_decode_equals_full_forward_at_a_granularity(self):
    params, batch = _init()
    tokens = batch["inputs"][:2, :10]
    module = mf.MatFormerLM(CFG, granularity=(16, 32))
    full = _logits(params, tokens, granularity=(16, 32))
    step = jax.jit(lambda c, x, s: module.apply({"params": params}, x, cache=c, starts=s))
    cache = tr.init_cache(CFG, 2, 16)
    logits, cache = step(cache, tokens[:, :6], jnp.zeros((2,), jnp.int32))
    np.testing.assert_allclose(logits, full[:, :6], rtol=1e-5, atol=1e-5)
    for t in range(6, 10):
      out, cache = step(cache, tokens[:, t:t + 1], jnp.full((2,), t, jnp.int32))
      np.testing.assert_allclose(out[:, 0], full[:, t], rtol=1e-4, atol=1e-4)

if __name__ == "__main__":
  absltest.main()
