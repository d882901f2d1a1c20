"""The transformer's pieces against numpy references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from framework import flops as flops_lib
from models import mlp as mlp_lib
from models import transformer as tr

CFG = tr.TransformerConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4,
                           num_kv_heads=2, head_dim=8, d_ff=48)


def unbox(tree):
  return nn.meta.unbox(tree)


def np_rope(x, pos, theta):
  d = x.shape[-1]
  freqs = theta ** (-np.arange(0, d // 2) * 2.0 / d)
  ang = pos[..., None] * freqs
  cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class TransformerTest(parameterized.TestCase):

  def test_rmsnorm_matches_numpy(self):
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    params = {"params": {"scale": np.linspace(0.5, 2, 8).astype(np.float32)}}
    got = tr.RMSNorm().apply(params, x)
    want = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * params["params"]["scale"]
    np.testing.assert_allclose(got, want, rtol=1e-5)

  def test_rope_scores_depend_only_on_relative_position(self):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 16)).astype(np.float32)
    def score(m, n):
      qm = tr.rope(q, jnp.array([[m]]), 10_000.0)
      kn = tr.rope(k, jnp.array([[n]]), 10_000.0)
      return float(jnp.sum(qm * kn))
    self.assertAlmostEqual(score(5, 2), score(13, 10), places=4)
    self.assertAlmostEqual(score(0, 0), float(np.sum(q * k)), places=5)
    self.assertNotAlmostEqual(score(5, 2), score(5, 4), places=3)

  def test_attention_matches_numpy_reference(self):
    rng = np.random.default_rng(2)
    b, t = 2, 6
    x = rng.normal(size=(b, t, CFG.d_model)).astype(np.float32)
    pos = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 2, 3, 4, 5]])
    seg = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1]])
    attn = tr.Attention(CFG)
    params = unbox(attn.init(jax.random.PRNGKey(0), x, pos, seg))
    got = np.asarray(attn.apply(params, x, pos, seg))
    p = jax.tree.map(np.asarray, params["params"])
    q = np_rope(np.einsum("btd,dnh->btnh", x, p["wq"]), pos, CFG.rope_theta)
    k = np_rope(np.einsum("btd,dkh->btkh", x, p["wk"]), pos, CFG.rope_theta)
    v = np.einsum("btd,dkh->btkh", x, p["wv"])
    group = CFG.num_heads // CFG.num_kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # GQA: shared kv heads
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(CFG.head_dim)
    mask = np.tril(np.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :])
    scores = np.where(mask[:, None], scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bnts,bsnh->btnh", w, v)
    want = np.einsum("btnh,nhd->btd", out, p["wo"])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

  def test_packed_segments_do_not_see_each_other(self):
    model = tr.TransformerLM(CFG)
    rng = np.random.default_rng(3)
    a = rng.integers(3, 64, size=(1, 5))
    b = rng.integers(3, 64, size=(1, 4))
    packed = np.concatenate([a, b], 1)
    seg = np.array([[1] * 5 + [2] * 4])
    pos = np.array([list(range(5)) + list(range(4))])
    params = unbox(model.init(jax.random.PRNGKey(0), packed, pos, seg))
    together = model.apply(params, packed, pos, seg)
    alone = model.apply(params, b)
    np.testing.assert_allclose(together[:, 5:], alone, rtol=1e-4, atol=1e-4)
    other = packed.copy()
    other[0, :5] = (other[0, :5] + 7) % 64
    np.testing.assert_allclose(model.apply(params, other, pos, seg)[:, 5:], together[:, 5:],
                               rtol=1e-5, atol=1e-5)

  @parameterized.parameters(True, False)
  def test_param_count_formula(self, tied):
    cfg = tr.TransformerConfig(**{**CFG.__dict__, "tie_embeddings": tied})
    params = tr.TransformerLM(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    n = sum(x.size for x in jax.tree.leaves(unbox(params)))
    self.assertEqual(n, tr.count_params(cfg)["total"])
    self.assertEqual("lm_head" in params["params"], not tied)

  def test_every_weight_has_logical_axes(self):
    boxed = tr.TransformerLM(CFG).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    self.assertTrue(leaves)
    for leaf in leaves:
      self.assertIsInstance(leaf, nn.LogicallyPartitioned)
      self.assertLen(leaf.names, leaf.value.ndim)

  def test_bf16_compute_keeps_fp32_params_and_logits(self):
    cfg16 = tr.TransformerConfig(**{**CFG.__dict__, "dtype": jnp.bfloat16})
    tokens = np.random.default_rng(4).integers(0, 64, size=(2, 8))
    params = unbox(tr.TransformerLM(CFG).init(jax.random.PRNGKey(0), tokens))
    for leaf in jax.tree.leaves(params):
      self.assertEqual(leaf.dtype, jnp.float32)
    l32 = tr.TransformerLM(CFG).apply(params, tokens)
    l16 = tr.TransformerLM(cfg16).apply(params, tokens)
    self.assertEqual(l16.dtype, jnp.float32)
    np.testing.assert_allclose(l16, l32, atol=0.15)

  def test_loss_sums_match_numpy(self):
    logits = np.random.default_rng(5).normal(size=(2, 3, 7)).astype(np.float32)
    targets = np.array([[1, 2, 3], [4, 5, 6]])
    weights = np.array([[1, 1, 0], [1, 0, 0]])
    sums = tr.lm_loss_sums(logits, targets, weights)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    self.assertAlmostEqual(float(sums["loss"]), float((nll * weights).sum()), places=4)
    self.assertEqual(float(sums["tokens"]), 3.0)

  def test_flops_per_token_convention(self):
    n = tr.count_params(CFG)["non_embedding"]
    want = 6 * n + 6 * CFG.num_layers * 128 * CFG.num_heads * CFG.head_dim + 6 * 32 * 64
    self.assertEqual(tr.flops_per_token(CFG, 128), want)


  @parameterized.parameters("full", "dots_saveable", "dots_with_no_batch_dims_saveable")
  def test_remat_policies_keep_loss_and_gradients(self, policy):
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, CFG.vocab_size)
    batch = {"inputs": tokens, "targets": tokens, "weights": jnp.ones_like(tokens)}
    plain = tr.TransformerLM(CFG)
    params = unbox(plain.init(jax.random.key(1), tokens)["params"])
    remat = tr.TransformerLM(tr.TransformerConfig(**{**CFG.__dict__, "remat": policy}))
    grad = lambda m: jax.jit(jax.grad(
        lambda p: m.apply({"params": p}, batch, method="loss")["loss"]))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grad(plain), grad(remat))
    # The policy really reaches the program: the blocks are checkpointed.
    jaxpr = lambda m: str(jax.make_jaxpr(jax.grad(
        lambda p: m.apply({"params": p}, batch, method="loss")["loss"]))(params))
    self.assertEqual(jaxpr(remat).count("remat2["), CFG.num_layers)
    self.assertNotIn("remat", jaxpr(plain))

  @parameterized.parameters("none", "full")
  def test_scanned_layers_equal_unrolled_layers(self, remat):
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, CFG.vocab_size)
    batch = {"inputs": tokens, "targets": tokens, "weights": jnp.ones_like(tokens)}
    plain = tr.TransformerLM(CFG)
    params = unbox(plain.init(jax.random.key(1), tokens)["params"])
    scan_cfg = tr.TransformerConfig(**{**CFG.__dict__, "scan_layers": True, "remat": remat})
    scanned = tr.TransformerLM(scan_cfg)
    boxed = scanned.init(jax.random.key(1), tokens)["params"]
    # Weights stack on a leading "layers" axis with its logical name.
    wq = boxed["layers"]["block"]["attn"]["wq"]
    self.assertEqual(wq.names, ("layers", "embed", "heads", "kv"))
    self.assertEqual(wq.value.shape, (CFG.num_layers, 32, 4, 8))
    stacked = {k: v for k, v in params.items() if not k.startswith("layer_")}
    stacked["layers"] = {"block": jax.tree.map(
        lambda *xs: jnp.stack(xs), *[params[f"layer_{i}"] for i in range(CFG.num_layers)])}
    loss = lambda m, p: m.apply({"params": p}, batch, method="loss")["loss"]
    np.testing.assert_allclose(scanned.apply({"params": stacked}, tokens),
                               plain.apply({"params": params}, tokens), rtol=1e-5, atol=1e-5)
    g_scan = jax.jit(jax.grad(lambda p: loss(scanned, p)))(stacked)
    g_plain = jax.jit(jax.grad(lambda p: loss(plain, p)))(params)
    for i in range(CFG.num_layers):
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6),
                   g_scan["layers"]["block"], g_plain[f"layer_{i}"])
    np.testing.assert_allclose(g_scan["embedding"], g_plain["embedding"], rtol=1e-4, atol=1e-6)
    with self.assertRaisesRegex(NotImplementedError, "scan_layers"):
      scanned.apply({"params": stacked}, tokens, cache=tr.init_cache(scan_cfg, 2, 8),
                    starts=jnp.zeros(2, jnp.int32))

  @parameterized.product(scan=(False, True), remat=("none", "full"))
  def test_traced_matmul_flops_match_the_closed_form(self, scan, remat):
    b, t = 2, 8
    cfg = tr.TransformerConfig(**{**CFG.__dict__, "scan_layers": scan, "remat": remat})
    model = tr.TransformerLM(cfg)
    tokens = jnp.zeros((b, t), jnp.int32)
    batch = {"inputs": tokens, "targets": tokens, "weights": jnp.ones_like(tokens)}
    params = unbox(model.init(jax.random.key(0), tokens)["params"])
    grad = jax.make_jaxpr(jax.grad(
        lambda p: model.apply({"params": p}, batch, method="loss")["loss"]))(params)
    n = tr.count_params(cfg)["non_embedding"] - (2 * cfg.num_layers + 1) * cfg.d_model  # norms
    attn = 4 * t * cfg.num_heads * cfg.head_dim * cfg.num_layers   # QK^T + AV, unmasked
    head = 2 * cfg.d_model * cfg.vocab_size
    forward = 2 * n + attn + head
    # The backward costs twice the forward; "full" remat recomputes each block
    # except its last matmul (w_down), whose output the backward does not need.
    recompute = 2 * n + attn - 2 * cfg.d_model * cfg.d_ff * cfg.num_layers
    want = b * t * (3 * forward + (recompute if remat == "full" else 0))
    self.assertEqual(flops_lib.jaxpr_matmul_flops(grad), want)

  def test_bool_remat_is_read_as_a_policy(self):
    self.assertEqual(tr.TransformerConfig(remat=True).remat, "full")
    self.assertEqual(tr.TransformerConfig(remat=False).remat, "none")
    with self.assertRaisesRegex(ValueError, "model.remat"):
      tr.TransformerConfig(remat="everything")

  def test_llama3_rope_scaling_bands(self):
    cfg = tr.TransformerConfig(head_dim=16, rope_theta=500_000.0, rope_scaling="llama3",
                               rope_scaling_factor=8.0, rope_original_max_len=64)
    plain = tr.rope_frequencies(tr.TransformerConfig(head_dim=16, rope_theta=500_000.0))
    got = tr.rope_frequencies(cfg)
    wavelength = 2 * np.pi / plain.astype(np.float64)
    long_waves = wavelength > 64 / 1.0
    short_waves = wavelength < 64 / 4.0
    mid = ~long_waves & ~short_waves
    self.assertTrue(long_waves.any() and short_waves.any() and mid.any())
    np.testing.assert_allclose(got[long_waves], plain[long_waves] / 8.0, rtol=1e-6)
    np.testing.assert_allclose(got[short_waves], plain[short_waves], rtol=1e-6)
    smooth = (64 / wavelength[mid] - 1.0) / (4.0 - 1.0)   # Llama 3.1's interpolation
    np.testing.assert_allclose(got[mid], (1 - smooth) * plain[mid] / 8.0 + smooth * plain[mid],
                               rtol=1e-5)
    linear = tr.rope_frequencies(tr.TransformerConfig(head_dim=16, rope_scaling="linear",
                                                      rope_scaling_factor=2.0))
    np.testing.assert_allclose(linear, tr.rope_frequencies(tr.TransformerConfig(head_dim=16)) / 2,
                               rtol=1e-6)


class MLPTest(absltest.TestCase):

  def test_forward_matches_numpy(self):
    model = mlp_lib.MLP(hidden_sizes=(5, 4), num_outputs=3, activation="relu")
    x = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    params = unbox(model.init(jax.random.PRNGKey(0), x))["params"]
    h = x
    for i in range(3):
      h = h @ np.asarray(params[f"dense_{i}"]["kernel"]) + np.asarray(params[f"dense_{i}"]["bias"])
      if i < 2:
        h = np.maximum(h, 0)
    np.testing.assert_allclose(model.apply({"params": params}, x), h, rtol=1e-5, atol=1e-6)
    sums = model.apply({"params": params}, {"x": x, "y": np.zeros(6, np.int32)}, method="loss")
    self.assertEqual(float(sums["count"]), 6.0)

  def test_unknown_activation_is_rejected(self):
    with self.assertRaisesRegex(ValueError, "unknown activation 'swish2'"):
      mlp_lib.MLP((4,), 2, activation="swish2").init(jax.random.PRNGKey(0), np.zeros((1, 2)))


if __name__ == "__main__":
  absltest.main()
