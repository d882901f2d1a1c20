"""Hugging Face Llama-family checkpoints against transformers' own outputs.

The reference is `tests/fixtures/hf` (tools/make_hf_fixtures.py): tiny random
Llama / Llama-3-scaled / linear-RoPE Llama / Mistral / Qwen2 models saved by
transformers with their logits and greedy generations. No torch here.
"""
import dataclasses
import json
import os
import shutil
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import NamedSharding, PartitionSpec as P
from safetensors import safe_open
from safetensors.numpy import save_file

from experiments import lm
from experiments.configs import lm_quickstart
from framework import config as config_lib
from framework import hf_checkpoint
from framework import mesh as mesh_lib
from framework import sharding as sharding_lib
from models import hf_llama
from models import transformer
from tools import export_hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
NAMES = ("llama", "llama3_scaled", "mistral", "qwen2", "llama_linear")
ATOL = 1e-4          # float32 logits of magnitude <= ~10
NEW_TOKENS = 12


def _fixture(name):
  return os.path.join(FIXTURES, name)


def _expected(name):
  with np.load(os.path.join(_fixture(name), "expected.npz")) as e:
    return {k: e[k] for k in e.files}


def _logits_fn(cfg):
  module = transformer.TransformerLM(cfg)
  return jax.jit(lambda params, tokens: module.apply({"params": params}, tokens))


def _greedy(logits_fn, params, prompts, lengths, steps=NEW_TOKENS):
  """Plain greedy decoding recomputing the whole prefix every step: row b's next
  token is argmax of the logits at its last position. Rows are right-padded to
  one static length; with causal attention the padding after a row's last
  token does not touch that token's logits."""
  tokens = np.zeros((len(prompts), prompts.shape[1] + steps), np.int32)
  tokens[:, :prompts.shape[1]] = prompts
  lengths = np.array(lengths)
  out = []
  for _ in range(steps):
    logits = np.asarray(logits_fn(params, jnp.asarray(tokens)))
    nxt = logits[np.arange(len(tokens)), lengths - 1].argmax(-1).astype(np.int32)
    tokens[np.arange(len(tokens)), lengths] = nxt
    lengths += 1
    out.append(nxt)
  return np.stack(out, axis=1)


def _random_params(cfg, seed):
  """Random params of the model's shapes (numpy draws: compiling Flax's init is slow)."""
  abstract = jax.eval_shape(transformer.TransformerLM(cfg).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 4), jnp.int32))["params"]
  rng = np.random.default_rng(seed)
  flat = {k: (1.0 if k.endswith("scale") else 0.0) + 0.2 * rng.standard_normal(x.shape)
          for k, x in hf_llama.flatten(nn.meta.unbox(abstract)).items()}
  return hf_llama.unflatten({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def _flat_np(params):
  return {k: np.asarray(v) for k, v in hf_llama.flatten(params).items()}


def _read_all(path):
  out = {}
  for name, file in hf_checkpoint.tensor_files(path).items():
    with safe_open(file, framework="numpy") as f:
      out[name] = f.get_tensor(name)
  return out


class FixtureTest(parameterized.TestCase):

  @parameterized.parameters(*NAMES)
  def test_logits_and_greedy_match_transformers(self, name):
    cfg, params = hf_checkpoint.load_hf(_fixture(name))
    e = _expected(name)
    fn = _logits_fn(cfg)
    diff = float(np.abs(np.asarray(fn(params, jnp.asarray(e["prompts"]))) - e["logits"]).max())
    ragged = np.asarray(fn(params, jnp.asarray(e["ragged_prompts"])))
    ragged_diff = max(float(np.abs(ragged[i, :n] - e["ragged_logits"][i, :n]).max())
                      for i, n in enumerate(e["ragged_prompt_lengths"]))
    print(f"{name}: max |logits - transformers| = {diff:.3g}, ragged {ragged_diff:.3g}")
    self.assertLess(diff, ATOL)
    self.assertLess(ragged_diff, ATOL)
    np.testing.assert_array_equal(
        _greedy(fn, params, e["prompts"], e["prompt_lengths"]), e["greedy"])
    np.testing.assert_array_equal(
        _greedy(fn, params, e["ragged_prompts"], e["ragged_prompt_lengths"]),
        e["ragged_greedy"])
    self.assertEqual(cfg.sliding_window, int(e["sliding_window"]))
    if bool(e["sliding_window_effective"]):   # the window matters for these prompts
      full = _logits_fn(transformer.TransformerConfig(
          **{**cfg.__dict__, "sliding_window": 0}))(params, jnp.asarray(e["prompts"]))
      self.assertGreater(float(np.abs(np.asarray(full) - e["logits"]).max()), 10 * ATOL)

  @parameterized.parameters(*NAMES)
  def test_export_import_round_trips_bit_for_bit(self, name):
    cfg, params = hf_checkpoint.load_hf(_fixture(name))
    out = self.create_tempdir().full_path
    hf_checkpoint.save_hf(out, cfg, params)
    cfg2, params2 = hf_checkpoint.load_hf(out)
    self.assertEqual(cfg2, cfg)
    a, b = _flat_np(params), _flat_np(params2)
    self.assertEqual(sorted(a), sorted(b))
    for k in a:
      self.assertTrue(np.array_equal(a[k], b[k]), k)
    # The exported tensors are transformers' own, bit for bit (lm_head absent when tied).
    original, exported = _read_all(_fixture(name)), _read_all(out)
    self.assertEqual(sorted(original), sorted(exported))
    for k in original:
      self.assertTrue(np.array_equal(original[k], exported[k]), k)
    with open(os.path.join(out, "config.json")) as f:
      self.assertEqual(json.load(f)["model_type"],
                       {"mistral": "mistral", "qwen2": "qwen2"}.get(name, "llama"))

  @parameterized.parameters("llama", "mistral", "qwen2")
  def test_sharded_load_matches_unsharded(self, name):
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    reads = []
    real_read = hf_checkpoint._Reader.read

    def record(reader, tensor, index=None):
      block = real_read(reader, tensor, index)
      reads.append((tensor, block.size))
      return block

    with mock.patch.object(hf_checkpoint._Reader, "read", record):
      cfg, sharded = hf_checkpoint.load_hf(_fixture(name), mesh=mesh,
                                           rules=sharding_lib.DEFAULT_RULES)
    _, plain = hf_checkpoint.load_hf(_fixture(name))
    a, b = hf_llama.flatten(sharded), _flat_np(plain)
    for k in b:
      self.assertTrue(np.array_equal(np.asarray(a[k]), b[k]), k)
    # DEFAULT_RULES: embed -> fsdp; heads, kv_heads, mlp, vocab -> tensor. Mistral's
    # single kv head cannot split over tensor=2 and stays replicated.
    kv = None if cfg.num_kv_heads == 1 else "tensor"
    want = {"embedding": P("tensor", "fsdp"), "lm_head": P("fsdp", "tensor"),
            "layer_0/attn/wq": P("fsdp", "tensor", None), "layer_1/attn/wk": P("fsdp", kv, None),
            "layer_0/attn/wo": P("tensor", None, "fsdp"), "layer_1/mlp/w_up": P("fsdp", "tensor"),
            "layer_0/mlp/w_down": P("tensor", "fsdp"), "final_norm/scale": P(None)}
    if cfg.qkv_bias:
      want.update({"layer_0/attn/bq": P("tensor", None), "layer_1/attn/bv": P(kv, None)})
    for k, spec in want.items():
      self.assertTrue(a[k].sharding.is_equivalent_to(NamedSharding(mesh, spec), a[k].ndim),
                      f"{k}: {a[k].sharding.spec} != {spec}")
      self.assertEqual(len(a[k].addressable_shards), 8)
    # Each device's block is read alone: a q_proj split 2 x 2 is read in quarters.
    q = [size for t, size in reads if t == "model.layers.0.self_attn.q_proj.weight"]
    full = cfg.num_heads * cfg.head_dim * cfg.d_model
    self.assertEqual(sorted(set(q)), [full // 4])
    self.assertLen(q, 4)   # four distinct blocks, each read once for its two replicas

  def test_sharded_export_loads_back(self):
    cfg, params = hf_checkpoint.load_hf(_fixture("qwen2"))
    out = self.create_tempdir().full_path
    written = hf_checkpoint.save_hf(out, cfg, params, max_shard_bytes=100_000)
    self.assertGreater(len(written), 2)
    self.assertTrue(os.path.isfile(os.path.join(out, hf_checkpoint.INDEX)))
    self.assertFalse(os.path.exists(os.path.join(out, hf_checkpoint.SINGLE)))
    for file in written:
      self.assertLessEqual(os.path.getsize(file), 100_000 + 4096)
    with open(os.path.join(out, hf_checkpoint.INDEX)) as f:
      index = json.load(f)
    self.assertEqual(set(index["weight_map"].values()), {os.path.basename(w) for w in written})
    mesh = mesh_lib.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    for kwargs in ({}, {"mesh": mesh}):
      cfg2, back = hf_checkpoint.load_hf(out, **kwargs)
      self.assertEqual(cfg2, cfg)
      a, b = _flat_np(params), _flat_np(back)
      for k in a:
        self.assertTrue(np.array_equal(a[k], b[k]), k)
    # Re-exporting unsharded into the same directory drops the old shards and index.
    hf_checkpoint.save_hf(out, cfg, params)
    self.assertEqual(sorted(f for f in os.listdir(out) if "safetensors" in f),
                     [hf_checkpoint.SINGLE])
    self.assertEqual(hf_checkpoint.load_hf(out)[0], cfg)

  def test_bfloat16_export_and_load(self):
    cfg, params = hf_checkpoint.load_hf(_fixture("llama"))
    out = self.create_tempdir().full_path
    hf_checkpoint.save_hf(out, cfg, params, dtype=jnp.bfloat16)
    with safe_open(os.path.join(out, hf_checkpoint.SINGLE), framework="numpy") as f:
      self.assertEqual(f.get_slice("model.norm.weight").get_dtype(), "BF16")
    _, back = hf_checkpoint.load_hf(out)   # upcast to float32 params
    a, b = _flat_np(params), _flat_np(back)
    for k in a:
      self.assertEqual(b[k].dtype, np.float32)
      np.testing.assert_array_equal(b[k], a[k].astype(jnp.bfloat16).astype(np.float32))


class OurModelExportTest(absltest.TestCase):

  def test_scaled_tied_head_is_folded_into_the_final_norm(self):
    # Our default tied head divides the logits by sqrt(d); HF's does not.
    cfg = transformer.TransformerConfig(vocab_size=96, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, head_dim=8, d_ff=64)
    self.assertTrue(cfg.tie_embeddings and cfg.scale_tied_logits)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 10)), jnp.int32)
    params = _random_params(cfg, 0)
    out = self.create_tempdir().full_path
    hf_checkpoint.save_hf(out, cfg, params)
    cfg2, params2 = hf_checkpoint.load_hf(out)
    self.assertFalse(cfg2.scale_tied_logits)
    self.assertEqual(cfg2, transformer.TransformerConfig(**{**cfg.__dict__,
                                                            "scale_tied_logits": False}))
    want = _logits_fn(cfg)(params, tokens)
    got = _logits_fn(cfg2)(params2, tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params2["final_norm"]["scale"]) * np.sqrt(32),
                               np.asarray(params["final_norm"]["scale"]), rtol=1e-6)

  def test_tensor_map_covers_the_model_params(self):
    for kw in (dict(), dict(tie_embeddings=False), dict(qkv_bias=True, sliding_window=4)):
      cfg = transformer.TransformerConfig(vocab_size=64, d_model=16, num_layers=3,
                                          num_heads=4, num_kv_heads=2, head_dim=4, d_ff=24,
                                          **kw)
      abstract = jax.eval_shape(transformer.TransformerLM(cfg).init, jax.random.PRNGKey(0),
                                jnp.zeros((1, 4), jnp.int32))["params"]
      flat = hf_llama.flatten(nn.meta.unbox(abstract))
      maps = hf_llama.hf_to_ours(cfg)
      self.assertEqual(sorted(flat), sorted(maps), kw)
      for k, m in maps.items():
        self.assertEqual(tuple(flat[k].shape), m.shape, k)
      self.assertEqual(hf_llama.config_from_hf(hf_llama.config_to_hf(cfg)),
                       transformer.TransformerConfig(**{**cfg.__dict__,
                                                        "scale_tied_logits": False}))


def _copy_fixture(test, name, edit_tensors=None, edit_config=None):
  out = test.create_tempdir().full_path
  src = _fixture(name)
  shutil.copy(os.path.join(src, "config.json"), out)
  tensors = _read_all(src)
  if edit_tensors:
    edit_tensors(tensors)
  save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  if edit_config:
    with open(os.path.join(out, "config.json")) as f:
      hf = json.load(f)
    edit_config(hf)
    with open(os.path.join(out, "config.json"), "w") as f:
      json.dump(hf, f)
  return out


class BadCheckpointTest(parameterized.TestCase):

  def test_wrong_shape_names_the_tensor(self):
    name = "model.layers.1.self_attn.k_proj.weight"
    out = _copy_fixture(self, "llama", lambda t: t.update({name: t[name][:16]}))
    with self.assertRaisesRegex(hf_checkpoint.HFTensorError,
                                rf"{name} has shape \[16, 64\], expected \[32, 64\]"):
      hf_checkpoint.load_hf(out)

  def test_missing_and_unexpected_tensors_are_named(self):
    name = "model.layers.0.mlp.up_proj.weight"
    out = _copy_fixture(self, "llama", lambda t: t.pop(name))
    with self.assertRaisesRegex(hf_checkpoint.HFTensorError, f"missing tensor.*{name}"):
      hf_checkpoint.load_hf(out)
    extra = "model.layers.0.self_attn.o_proj.bias"
    out = _copy_fixture(self, "llama", lambda t: t.update({extra: np.zeros(64, np.float32)}))
    with self.assertRaisesRegex(hf_checkpoint.HFTensorError, f"unexpected tensor.*{extra}"):
      hf_checkpoint.load_hf(out, mesh=mesh_lib.create_mesh({"data": 8}))
    # Rotary buffers some checkpoints carry are recomputed, not errors.
    buf = "model.layers.0.self_attn.rotary_emb.inv_freq"
    out = _copy_fixture(self, "llama", lambda t: t.update({buf: np.ones(8, np.float32)}))
    self.assertEqual(hf_checkpoint.load_hf(out)[0].num_layers, 2)
    # A tied model's stray lm_head.weight is ignored, as transformers ties it anyway.
    out = _copy_fixture(self, "llama3_scaled", lambda t: t.update(
        {"lm_head.weight": t["model.embed_tokens.weight"] + 1}))
    cfg, params = hf_checkpoint.load_hf(out)
    self.assertTrue(cfg.tie_embeddings)
    self.assertNotIn("lm_head", params)

  def test_index_naming_a_missing_shard_names_it(self):
    cfg, params = hf_checkpoint.load_hf(_fixture("llama"))
    out = self.create_tempdir().full_path
    written = hf_checkpoint.save_hf(out, cfg, params, max_shard_bytes=100_000)
    os.remove(written[1])
    with self.assertRaisesRegex(FileNotFoundError, os.path.basename(written[1])):
      hf_checkpoint.load_hf(out)

  @parameterized.parameters(
      (dict(model_type="gpt2"), "model_type='gpt2'"),
      (dict(hidden_act="gelu"), "hidden_act='gelu'"),
      (dict(attention_bias=True), "attention_bias"),
      (dict(mlp_bias=True), "mlp_bias"),
      (dict(rope_parameters={"rope_theta": 1e4, "rope_type": "yarn", "factor": 2.0}),
       "rope_parameters.rope_type='yarn'"),
      (dict(rope_parameters=None, rope_theta=1e4, rope_scaling={"type": "dynamic",
                                                                "factor": 2.0}),
       "rope_scaling.type='dynamic'"),
      (dict(rope_parameters={"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}),
       "rope_parameters.low_freq_factor is missing"),
      (dict(num_key_value_heads=3), "num_key_value_heads=3"),
      (dict(hidden_size=None), "hidden_size"),
  )
  def test_config_errors_name_the_field(self, changes, pattern):
    hf = json.load(open(os.path.join(_fixture("llama"), "config.json")))
    hf.update(changes)
    with self.assertRaisesRegex(hf_llama.HFConfigError, pattern):
      hf_llama.config_from_hf(hf)

  def test_qwen2_sliding_window_on_some_layers_is_rejected(self):
    hf = json.load(open(os.path.join(_fixture("qwen2"), "config.json")))
    hf.pop("layer_types")
    hf.update(use_sliding_window=True, sliding_window=8, max_window_layers=1)
    with self.assertRaisesRegex(hf_llama.HFConfigError, "max_window_layers=1"):
      hf_llama.config_from_hf(hf)
    hf.update(max_window_layers=0)    # every layer: supported
    self.assertEqual(hf_llama.config_from_hf(hf).sliding_window, 8)
    hf.update(max_window_layers=2)    # no layer
    self.assertEqual(hf_llama.config_from_hf(hf).sliding_window, 0)
    hf.update(layer_types=["full_attention", "sliding_attention"])
    with self.assertRaisesRegex(hf_llama.HFConfigError, "layer_types mixes"):
      hf_llama.config_from_hf(hf)

  def test_config_layouts_and_defaults(self):
    v5 = json.load(open(os.path.join(_fixture("llama"), "config.json")))
    v4 = dict(v5, rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
    v4.pop("rope_parameters")
    v5["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "linear", "factor": 2.0}
    self.assertEqual(hf_llama.config_from_hf(v4), hf_llama.config_from_hf(v5))
    self.assertEqual(hf_llama.config_from_hf(v4).rope_scaling, "linear")
    v4.pop("head_dim")   # default: hidden_size / heads
    self.assertEqual(hf_llama.config_from_hf(v4).head_dim, 16)
    bad = _copy_fixture(self, "llama", edit_config=lambda hf: hf.update(model_type="phi"))
    with self.assertRaisesRegex(hf_llama.HFConfigError, r"config\.json: model_type='phi'"):
      hf_checkpoint.load_hf(bad)


def _init_from_config(hf_dir, **model):
  c = lm_quickstart.get_config()
  c.init_from = f"hf:{hf_dir}"
  c.model.update(model)
  return c


class InitFromTest(absltest.TestCase):

  def test_config_checks_name_the_field(self):
    c = _init_from_config(_fixture("llama"), d_model=32)
    with self.assertRaisesRegex(config_lib.ConfigError,
                                r"config\.model\.d_model=32 \(config\.json: 64\)"):
      lm.resolve_init_from(c, self.create_tempdir().full_path)
    for bad, pattern in (("hf:/nonexistent/llama", r"config\.init_from: .*/nonexistent/llama"),
                         ("/no/prefix", r"config\.init_from: '/no/prefix' must be")):
      c = _init_from_config(_fixture("llama"))
      c.init_from = bad
      with self.assertRaisesRegex(config_lib.ConfigError, pattern):
        lm.resolve_init_from(c, self.create_tempdir().full_path)
    name = "model.layers.0.mlp.up_proj.weight"
    broken = _copy_fixture(self, "llama", lambda t: t.pop(name))
    with self.assertRaisesRegex(config_lib.ConfigError, rf"config\.init_from: .*{name}"):
      lm.resolve_init_from(_init_from_config(broken), self.create_tempdir().full_path)
    # Defaults are replaced, ours (dtype, remat) kept, fields that agree are fine.
    c = lm.resolve_init_from(_init_from_config(_fixture("qwen2"), d_model=64,
                                               remat="full"), "unused")
    self.assertEqual((c.model.d_model, c.model.vocab_size, c.model.qkv_bias, c.model.remat,
                      c.model.tie_embeddings), (64, 256, True, "full", False))

  def test_launch_fine_tunes_from_an_hf_checkpoint(self):
    tmp = self.create_tempdir().full_path
    # An HF checkpoint the byte vocabulary (259 ids) fits: ours, vocab 384, random init.
    cfg = transformer.TransformerConfig(vocab_size=384, d_model=32, num_layers=2, num_heads=4,
                                        num_kv_heads=2, head_dim=8, d_ff=64,
                                        tie_embeddings=False)
    hf_dirs = []
    for seed in (0, 1):
      params = _random_params(cfg, seed)
      hf_dirs.append(os.path.join(tmp, f"hf{seed}"))
      hf_checkpoint.save_hf(hf_dirs[-1], cfg, params)
    paths = {}
    for split, n in (("train", 60), ("validation", 20)):
      paths[split] = os.path.join(tmp, f"{split}.txt")
      with open(paths[split], "w") as f:
        f.writelines(f"line {i} of the {split} text, with some words in it.\n" for i in range(n))
    c = _init_from_config(hf_dirs[0])
    c.data.update(dict(source="files", train_path=paths["train"],
                       validation_path=paths["validation"], data_dir=tmp, seq_len=32,
                       global_batch_size=8, eval_batches=0))
    c.mesh.shape = ml_collections.ConfigDict({"data": 2, "fsdp": 2, "tensor": 2})
    c.trainer.update(dict(total_steps=2, log_every=1, eval_every=2, progress_every_s=1e9))
    c.checkpoint.update(dict(every=2, async_save=False))
    workdir = os.path.join(tmp, "run")

    started = []
    real = lm.hf_init_state

    def recording(path):
      fn = real(path)

      def init_state(state):
        state = fn(state)
        started.append(jax.tree.map(np.asarray, state.params))
        return state
      return init_state

    final = {}
    capture = lambda info: final.update(jax.tree.map(np.asarray, info.state.params))
    with mock.patch.object(lm, "hf_init_state", recording):
      summary = lm.run(c, workdir, hooks=[(capture, 2)])
    self.assertEqual(summary["final_step"], 2)
    self.assertTrue(np.isfinite(summary["train_loss"]))
    self.assertLen(started, 1)
    _, imported = hf_checkpoint.load_hf(hf_dirs[0])
    step0, want = hf_llama.flatten(started[0]), _flat_np(imported)
    self.assertEqual(sorted(step0), sorted(want))
    for k in want:
      self.assertTrue(np.array_equal(step0[k], want[k]), k)
    with open(os.path.join(workdir, "config.json")) as f:
      recorded = json.load(f)["model"]
    self.assertEqual((recorded["d_model"], recorded["vocab_size"], recorded["tie_embeddings"]),
                     (32, 384, False))
    # tools/export_hf: the run's newest checkpoint as an HF checkpoint that loads back.
    out = os.path.join(tmp, "exported")
    self.assertIn("model_type llama", export_hf.export(workdir, out))
    cfg_back, back = hf_checkpoint.load_hf(out)
    self.assertEqual(cfg_back, dataclasses.replace(cfg, scale_tied_logits=False))
    a, b = hf_llama.flatten(final), _flat_np(back)
    self.assertFalse(np.array_equal(a["layer_0/attn/wq"], want["layer_0/attn/wq"]))  # trained
    for k in a:
      self.assertTrue(np.array_equal(a[k], b[k]), k)
    # Resuming: the run's checkpoint wins over init_from (here other weights),
    # which are not even read (nothing is left to train: no compile).
    c.init_from = f"hf:{hf_dirs[1]}"
    with mock.patch.object(lm, "hf_init_state", recording):
      summary = lm.run(c, workdir)
    self.assertEqual((summary["resumed_from"], summary["final_step"]), (2, 2))
    self.assertLen(started, 1)
    # ... even once the HF directory is gone: the model recorded in the run is used.
    shutil.rmtree(hf_dirs[1])
    resolved = lm.resolve_init_from(c, workdir)
    self.assertEqual(resolved.model.d_model, 32)
    self.assertEqual(resolved.model.vocab_size, 384)
    with self.assertRaisesRegex(config_lib.ConfigError, r"config\.init_from"):
      lm.resolve_init_from(c, os.path.join(tmp, "fresh_run"))


if __name__ == "__main__":
  absltest.main()
