"""Margin maximisation on algebraic tasks (Morwani et al., ICLR 2024): all variants.

  python -m experiments.launch --config=experiments/margins/margins_config.py:p11 \
      --workdir=runs/margins_p11

Variants (`get_config(arg)`; about the times on an idle 2-core CPU):
  p11          modular addition mod 11, quadratic net, 96 neurons (5 frequencies,
               ~19 per frequency). Max L_{2,3} normalised margin
               sqrt(2/27) / (sqrt(11) 10). ~20 s. The default.
  p71          modular addition mod 71 as in the paper, 512 neurons (~15 per
               frequency: with 160 some frequencies kept too few neurons and the
               margin stalled near 0.9 of the max). Full batch 5041 x 71 is
               ~0.1-0.15 s a step: several minutes.
  s3           composition in S_3 (irreps: trivial, sign, 2-dim standard), 64 neurons.
  s4           composition in S_4 (real irreps of dims 1, 1, 2, 3, 3), 256 neurons.
  parity_10_4  (10, 4)-sparse parity on all 2^10 inputs, x^4 net (nu = 5), 16
               neurons (the construction needs 2^(k-1) = 8). Max L_{2,5}
               normalised margin 4! sqrt(2 * 5^-5). ~15 s.

Recipe that reaches the max margin: Adam, lr 1e-2 cosine-decayed to 1e-4, full
batch, lambda annealed 1e-5 -> 1e-30 over the first 80% of the run (then held
while the lr decays), and the log objective log(CE + lambda R), which keeps
gradients O(1) while the loss falls to ~exp(-margin) and margins grow to
~30-80 (the finite-lambda optimum of CE is only ~1 - O(1/margin) of the max
margin when the optimal dual weights are not uniform, e.g. for S_n).
lambda_start must be small enough that the first steps do not shrink the whole
network (at p = 71, 1e-3 killed ~60% of the neurons and left some frequencies
with too few to reach the max margin).

Tied fields (ml_collections FieldReferences, so one override moves both):
data.p -> model.vocab_size and model.num_classes; data.parity.{n, k} ->
model.{input_dim, degree}; trainer.total_steps -> model.schedule_steps.
data.batch_size = 0 trains on the full batch (trainer.full_batch);
otherwise minibatches of that size.
"""
import ml_collections

from data_pipelines import algebraic_tasks as data
from framework import sharding

VARIANTS = ("p11", "p71", "s3", "s4", "parity_10_4")


_OBJECTIVE = dict(init_scale=1.0, lambda_start=1e-5, lambda_end=1e-30, lambda_hold=0.0,
                  lambda_decay_end=0.8, log_objective=True)


def _base(total_steps: int, model: dict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.margins.margins_runner"
  c.seed = 0
  steps = ml_collections.FieldReference(total_steps)

  c.data = ml_collections.ConfigDict(dict(
      task="modular_addition",    # modular_addition | parity | group
      p=11,
      parity=dict(n=10, k=4, num_samples=0),   # num_samples 0: all 2^n inputs
      group=dict(family="symmetric", n=3),     # cyclic | dihedral | symmetric | alternating
      batch_size=0,               # 0: full batch
  ))
  # `name` picks the model from `models.registry` (models/algebraic_nets.py); the
  # other keys are its fields, the L_{2,nu}-penalised objective's included.
  c.model = ml_collections.ConfigDict(dict(model, **_OBJECTIVE, schedule_steps=steps))

  # The datasets are small and the hidden layer is what grows: the neurons
  # split over the `tensor` axis (all devices by default; a width the axis
  # does not divide is replicated), each device sees the whole batch.
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=1, fsdp=1, tensor=-1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = tuple(sharding.DEFAULT_RULES) + (
      ("neurons", "tensor"), ("inputs", None), ("classes", None))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam",                # adam | normalized_gd | sgd (framework.optim)
      b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0,
      momentum=0.9, kwargs={}))
  c.schedule = ml_collections.ConfigDict(dict(
      name="cosine", peak_lr=1e-2, warmup_steps=0, end_lr_fraction=1e-2))

  c.trainer = ml_collections.ConfigDict(dict(
      total_steps=steps, num_microbatches=1,
      steps_per_call=25,          # steps per dispatch (lax.scan in the train step)
      log_every=500, eval_every=500, nan_policy="skip", peak_flops=0.0,
      progress_every_s=10.0, print_progress=True))
  # The margin probe (a loop hook): normalised margin, fraction of the max,
  # accuracy and full-data CE every `every` steps, every `early_every` steps
  # during the first `early_steps`. Multiples of trainer.steps_per_call.
  c.measure = ml_collections.ConfigDict(dict(every=500, early_every=25, early_steps=1000))
  # Neurons with ||theta_i||^nu below this fraction of the largest are
  # "inactive" (random directions, no weight in f); feature statistics are
  # reported for all neurons and for the active ones.
  c.analysis = ml_collections.ConfigDict(dict(active_fraction=0.01))
  c.checkpoint = ml_collections.ConfigDict(dict(
      enabled=False, every=5000, keep=1, async_save=False))
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "p11"
  if variant not in VARIANTS:
    raise ValueError(f"unknown margins variant {variant!r}; choose from {VARIANTS}")
  if variant in ("p11", "p71"):
    p = ml_collections.FieldReference(int(variant[1:]))
    c = _base(20000 if p.get() == 11 else 3000,
              dict(name="two_input_net", vocab_size=p, num_classes=p,
                   width=96 if p.get() == 11 else 512, activation="quadratic"))
    c.data.p = p
    if p.get() == 71:
      c.model.lambda_end = 1e-20
      c.measure.every = c.trainer.log_every = 250
  elif variant in ("s3", "s4"):
    n = int(variant[1])
    order = data.make_group("symmetric", n).order
    c = _base(20000, dict(name="two_input_net", vocab_size=order, num_classes=order,
                          width=64 if n == 3 else 256, activation="quadratic"))
    c.data.task = "group"
    c.data.group.family = "symmetric"
    c.data.group.n = n
    if n == 4:
      c.measure.every = c.trainer.log_every = 1000
  else:  # parity_10_4
    n, k = ml_collections.FieldReference(10), ml_collections.FieldReference(4)
    c = _base(20000, dict(name="parity_net", input_dim=n, width=16, degree=k,
                          activation="power", num_classes=2))
    c.data.task = "parity"
    c.data.parity.n, c.data.parity.k = n, k
  return c
