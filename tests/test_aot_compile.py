"""Ahead-of-time compilation for TPU topologies on this CPU host (tools/aot_compile).

Without libtpu only the parts that need no compiler run (topology names,
the HLO collective parser, the compiler's out-of-memory message, the
analytic memory count); the compiling tests skip, saying why.

With libtpu: the quickstart's own train step compiles for v5e:2x2 and
v4:2x2x2 with (data, fsdp, tensor) meshes, its compiled FLOPs are the model's
6N + attention + head count (within the few percent that norms, softmax and
the optimizer add), and the compiled per-device argument memory of the
parameters and AdamW moments (12 bytes per parameter, fp32) shrinks as
1/fsdp within 10% of that analytic count. A step that cannot fit is reported
as not fitting (the compiler's own verdict), and the sweep finds the fewest
micro-batches that fit.
"""
from __future__ import annotations

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import pytest

from experiments.configs import lm_quickstart
from models import registry
from models import transformer
from tools import aot_compile

NEEDS_LIBTPU = ("libtpu is not installed (pip install -e '.[tpu]'): there is no TPU "
                "compiler to compile for TPU topologies")
requires_libtpu = absltest.skipUnless(aot_compile.libtpu_available(), NEEDS_LIBTPU)


@functools.lru_cache(maxsize=None)
def _devices(topology: str):
  return aot_compile.topology_devices(topology)[1]


def _quickstart(**model):
  c = lm_quickstart.get_config()
  c.model.update(model)
  return c


# A hand-written compiled module: an all-gather in the entry computation, an
# async all-reduce inside a while body that runs 4 times, and a reduce-scatter
# whose operand (4 x 1024 f32 = 16 KiB) is bigger than its result.
_HLO = """\
HloModule jit_step, entry_computation_layout={()->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p = (s32[], bf16[8,128]) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%p), index=1
  %ars = bf16[8,128]{1,0} all-reduce-start(bf16[8,128]{1,0} %x), replica_groups={}, to_apply=%add
  %ard = bf16[8,128]{1,0} all-reduce-done(bf16[8,128]{1,0} %ars)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], bf16[8,128]) tuple(%i, %ard)
}

%cond (q: (s32[], bf16[8,128])) -> pred[] {
  %q = (s32[], bf16[8,128]) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (w: f32[256,64], g: f32[4,1024]) -> f32[] {
  %w = f32[256,64]{1,0} parameter(0)
  %ag = f32[1024,64]{1,0} all-gather(f32[256,64]{1,0} %w), dimensions={0}, replica_groups=[1,4]<=[4]
  %g = f32[4,1024]{1,0} parameter(1)
  %rs = f32[1,1024]{1,0} reduce-scatter(f32[4,1024]{1,0} %g), dimensions={0}, to_apply=%add
  %init = (s32[], bf16[8,128]) tuple()
  %loop = (s32[], bf16[8,128]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
  ROOT %r = f32[] constant(0)
}
"""


class WithoutCompilerTest(parameterized.TestCase):

  @parameterized.parameters(
      ("v5e:2x2", "v5e", "v5e:2x2"), ("v5e-16", "v5e", "v5e:4x4"),
      ("v5e-64", "v5e", "v5e:8x8"), ("v5p-64", "v5p", "v5p:2x4x4"),
      ("v5p-128", "v5p", "v5p:4x4x4"), ("v4-16", "v4", "v4:2x2x2"),
      ("v6e-8", "v6e", "v6e:2x4"), ("v5litepod-16", "v5e", "v5e:4x4"))
  def test_topology_names(self, spec, gen, name):
    self.assertEqual(aot_compile.topology_name(spec), (gen, name))

  @parameterized.parameters("v9:2x2", "v5e-12", "v5e", "v5e:4by4")
  def test_bad_topology_names_the_flag(self, spec):
    with self.assertRaisesRegex(aot_compile.AotError, "--topology"):
      aot_compile.topology_name(spec)

  def test_mesh_flag(self):
    self.assertEqual(aot_compile.parse_mesh("fsdp=-1,tensor=4"),
                     {"data": 1, "fsdp": -1, "tensor": 4})
    with self.assertRaisesRegex(aot_compile.AotError, "unknown axis 'model'"):
      aot_compile.parse_mesh("model=4")

  def test_collectives_counted_as_often_as_they_run(self):
    got = aot_compile.collectives(_HLO)
    self.assertEqual(got["all-gather"], {"count": 1, "bytes": 1024 * 64 * 4})
    self.assertEqual(got["all-reduce"], {"count": 4, "bytes": 4 * 8 * 128 * 2})
    self.assertEqual(got["reduce-scatter"], {"count": 1, "bytes": 4 * 1024 * 4})
    self.assertEqual(got["all-to-all"]["count"], 0)

  def test_trip_count_read_from_the_loop_condition(self):
    # The TPU compiler's HLO often has no known_trip_count: the loop runs while
    # counter < constant(N), the form JAX lowers scans to.
    cond = """%cond (q: (s32[], bf16[8,128])) -> pred[] {
  %k = s32[]{:T(128)} constant(6)
  %q = (s32[], bf16[8,128]) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%q), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i, %k), direction=LT, metadata={op_name="x"}
}"""
    hlo = _HLO.replace(', backend_config={"known_trip_count":{"n":"4"}}', "")
    start, end = hlo.index("%cond ("), hlo.index("ENTRY")
    self.assertEqual(aot_compile.collectives(hlo)["all-reduce"]["count"], 1)  # unknown: once
    got = aot_compile.collectives(hlo[:start] + cond + "\n\n" + hlo[end:])
    self.assertEqual(got["all-reduce"], {"count": 6, "bytes": 6 * 8 * 128 * 2})

  def test_compiler_out_of_memory_message(self):
    gib = 2 ** 30
    need, have, text = aot_compile.parse_oom(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (32.07G) exceeds available HBM (15.75G).")
    self.assertAlmostEqual(need / gib, 32.07)
    self.assertAlmostEqual(have / gib, 15.75)
    self.assertIn("HLO temporaries", text)
    need, have, _ = aot_compile.parse_oom("RESOURCE_EXHAUSTED: Ran out of memory in memory "
                                          "space hbm. Used 20.5G of 15.75G hbm.")
    self.assertAlmostEqual(need / gib, 20.5)
    need, _, text = aot_compile.parse_oom(
        "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom: Ran out of memory in memory "
        "space vmem while allocating on stack for %fusion.781. Scoped allocation with size "
        "16.25M and limit 16.00M exceeded scoped vmem limit by 256.0K.")
    self.assertTrue(math.isnan(need))
    self.assertIn("ran out of vmem", text)
    self.assertIsNone(aot_compile.parse_oom("INVALID_ARGUMENT: something else"))

  def test_analytic_state_memory(self):
    # Quickstart: per layer attention d*e*(2h + 2k) = 256*32*20 and SwiGLU 3*256*768
    # plus two norms of 256; a final norm; the tied 384 x 256 embedding.
    n = 4 * (256 * 32 * 20 + 3 * 256 * 768 + 512) + 256 + 384 * 256
    cfg = registry.make_config(_quickstart().model)
    self.assertEqual(transformer.count_params(cfg)["total"], n)
    rules = _quickstart().sharding.rules
    got = aot_compile.analytic_memory(cfg, seq_len=256, global_batch=16, num_microbatches=1,
                                      sizes=dict(data=1, fsdp=4, tensor=2), rules=rules)
    self.assertEqual(got["params"], 4 * n / 8)
    self.assertEqual(got["optimizer"], 8 * n / 8)
    self.assertEqual(got["gradients"], 4 * n / 8)
    self.assertEqual(got["batch"], 16 / 4 * 256 * 4 * 5)
    # Remat "full" keeps one block input per layer instead of all intermediates.
    full = aot_compile.analytic_memory(
        registry.make_config(_quickstart(remat="full").model), seq_len=256, global_batch=16,
        num_microbatches=1, sizes=dict(data=1, fsdp=4, tensor=2), rules=rules)
    self.assertLess(full["activations"], got["activations"] / 2)


@requires_libtpu
class CompileTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("v5e_2x2", "v5e:2x2", dict(data=1, fsdp=2, tensor=2), 16 * 2 ** 30),
      ("v4_2x2x2", "v4:2x2x2", dict(data=2, fsdp=2, tensor=2), 32 * 2 ** 30))
  def test_quickstart_step_compiles(self, topology, mesh, hbm):
    config = _quickstart()
    config.mesh.shape = mesh
    compiled, r = aot_compile.compile_step(config, _devices(topology), topology)
    self.assertIsNotNone(compiled)
    self.assertEqual(r.devices, 4 if topology.startswith("v5e") else 8)
    self.assertEqual(r.mesh, mesh)
    self.assertEqual(r.hbm_bytes, hbm)
    self.assertTrue(r.fits)
    m = r.memory
    self.assertEqual(m["total"], m["argument"] + m["output"] - m["alias"] + m["temp"])
    self.assertGreater(m["alias"], 0.9 * m["argument"] - r.analytic["batch"])  # donated state
    # FLOPs: the model's count plus a little (norms, softmax, optimizer); no remat.
    ratio = r.flops_per_device * r.devices / r.model_flops_per_step
    self.assertBetween(ratio, 1.0, 1.25)
    # fsdp gathers weights and reduces gradients; tensor all-reduces activations.
    self.assertGreater(r.collectives["all-gather"]["count"], 0)
    self.assertGreater(r.collectives["all-reduce"]["count"], 0)
    self.assertGreater(r.step_time_lb_s, 0)
    self.assertBetween(r.mfu_upper_bound, 0.0, 1.0)
    self.assertIn("fits", aot_compile.format_report(r))

  def test_parameter_memory_shrinks_as_one_over_fsdp(self):
    # One layer of the quickstart's schema keeps the compiles short. TPU
    # arrays are laid out in (8, 128) tiles of their two minor dimensions,
    # so a shard narrower than 128 lanes is padded (the quickstart's 32-wide
    # heads at fsdp 4 take 20% more than 12 N / 4): widths here are 128 per
    # shard at fsdp 4, as at real scale (d_model 2048+, head_dim 64-128).
    config = _quickstart(num_layers=1, d_model=512, num_heads=4, num_kv_heads=2,
                         head_dim=128, d_ff=1024)
    n = transformer.count_params(registry.make_config(config.model))["total"]
    state = {}
    for fsdp in (1, 4):   # two compiles: each takes ~1 min of a CI core
      config.mesh.shape = dict(data=4 // fsdp, fsdp=fsdp, tensor=1)
      _, r = aot_compile.compile_step(config, _devices("v5e:2x2"), "v5e:2x2")
      # Arguments = params + AdamW mu, nu (fp32) + this device's batch rows.
      state[fsdp] = r.memory["argument"] - r.analytic["batch"]
      self.assertAlmostEqual(state[fsdp] / (12 * n / fsdp), 1.0, delta=0.10,
                             msg=f"fsdp={fsdp}: {state[fsdp]} bytes vs 12 N / fsdp")
      self.assertAlmostEqual(r.param_bytes_per_device / (4 * n / fsdp), 1.0, delta=0.10)
    self.assertAlmostEqual(state[1] / state[4], 4.0, delta=0.4)

  @pytest.mark.slow   # 2-3 compiles of a 128k vocabulary; the parser and
  def test_sweep_finds_the_fewest_micro_batches_that_fit(self):  # compiles above are fast
    # A one-layer model with Llama 3's vocabulary: the fp32 logits of the
    # 16 x 2048 tokens per chip (16 GiB, and as much for their gradient) do
    # not fit 16 GiB in one micro-batch, nor in two.
    config = _quickstart(vocab_size=128_256, d_model=256, num_layers=1, dtype="bfloat16")
    config.data.update(dict(seq_len=2048, global_batch_size=64))
    reports, best = aot_compile.sweep(config, _devices("v5e:2x2"), "v5e:2x2",
                                      meshes=[dict(data=1, fsdp=4, tensor=1)],
                                      microbatches=(1, 2, 4), remats=("full",),
                                      log=lambda s: None)
    by_mb = {r.num_microbatches: r for r in reports}
    self.assertIsNotNone(best)
    self.assertTrue(best.fits)
    fewest = min(m for m, r in by_mb.items() if r.fits)
    self.assertGreater(fewest, 1)
    # The next fewer count was compiled and the compiler said it cannot fit.
    self.assertFalse(by_mb[fewest // 2].fits)
    self.assertIn("does not fit", by_mb[fewest // 2].note)


if __name__ == "__main__":
  absltest.main()
