"""Gen-QOT inventory control: arrival model + policies trained through the simulator.

  python -m experiments.launch --config=experiments/inventory/inventory_config.py \
      --workdir=runs/inventory_genqot
  python -m experiments.launch --config=experiments/inventory/inventory_config.py:small ...
  python -m experiments.launch --config=experiments/inventory/inventory_config.py:tiny ...

Variants (`get_config(arg)`): the default (2000 products, a few minutes on 2
CPU cores); `small` (512 products, about a minute: the policy ranking of the
default in miniature); `tiny` (the smoke test, seconds plus compiles).

Both trainings run on `framework.trainer`; each has its own `optimizer`,
`schedule` and `trainer` sections (framework schema) and its own run
directory under the workdir (`genqot/`, `policy_<arrivals>/`) for metrics and
checkpoints. `genqot.model` names the registered model (`models.genqot`;
`num_lags` comes from `data.num_lags`); `policy.model` holds the fields of
`models.genqot.PolicyNet`.
"""
import ml_collections

from framework import sharding


def _optimizer(clip: float) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      name="adam", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip_norm=clip,
      kwargs={}))


def _trainer(steps: int, log_every: int, eval_every: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      total_steps=steps, num_microbatches=1, log_every=log_every, eval_every=eval_every,
      nan_policy="skip", peak_flops=0.0, progress_every_s=10.0, print_progress=True))


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant = arg or "default"
  c = ml_collections.ConfigDict()
  c.runner = "experiments.inventory.inventory_runner"
  c.seed = 0
  # A smoke-test config (tiny: a 4-step policy training) checks that the
  # pipeline runs; its report says its numbers are not findings.
  c.smoke = False
  c.gamma = 0.99                 # weekly discount.

  c.data = ml_collections.ConfigDict()
  c.data.num_products = 2000
  c.data.history_weeks = 104     # training window (arrivals + policy training);
                                 # a multiple of test_weeks.
  c.data.test_weeks = 52         # held-out backtest window.
  c.data.num_lags = 10           # arrival lags j = 0..L-1 (weeks).
  c.data.behaviour_noise = 0.3   # lognormal noise of historical orders.

  # Gen-QOT: maximum likelihood on the history's complete orders.
  c.genqot = ml_collections.ConfigDict()
  c.genqot.model = ml_collections.ConfigDict(dict(name="genqot", hidden=32,
                                                  min_concentration=0.2))
  c.genqot.batch_size = 256
  c.genqot.eval_orders = 2000    # held-out orders scored.
  c.genqot.eval_samples = 64     # samples per order for CRPS / quantiles.
  c.genqot.optimizer = _optimizer(clip=1.0)
  c.genqot.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", peak_lr=3e-3, warmup_steps=100, end_lr_fraction=0.05))
  # eval_every: train / held-out NLL per lag (a hook).
  c.genqot.trainer = _trainer(steps=1000, log_every=50, eval_every=50)

  # Neural buying policies: one per arrival model, trained through the simulator.
  c.policy = ml_collections.ConfigDict()
  c.policy.model = ml_collections.ConfigDict(dict(hidden=(64, 64), init_bias=0.55))
  c.policy.rows = 128            # (product, start week, scenario) rows per step.
  c.policy.window_weeks = 52     # weeks simulated per row, from a random history week.
  c.policy.train_oracle = True   # also train with the true arrival process (reference).
  c.policy.tune_multipliers = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.8)
  c.policy.optimizer = _optimizer(clip=1.0)
  c.policy.schedule = ml_collections.ConfigDict(dict(
      name="cosine", peak_lr=3e-3, warmup_steps=0, end_lr_fraction=0.1))
  c.policy.trainer = _trainer(steps=300, log_every=5, eval_every=300)

  # Shared by both trainings (framework schema).
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = sharding.DEFAULT_RULES
  # Saved at the end of each training (and every `every` steps): re-running
  # with the same workdir reuses finished trainings.
  c.checkpoint = ml_collections.ConfigDict(dict(enabled=True, every=1000, keep=1,
                                                async_save=False))
  c.xla_fast_compile = False     # XLA backend optimisation level 0 for the study's own
                                 # programs (history, backtests): faster compiles.

  if variant == "small":
    c.data.num_products = 512
    c.data.history_weeks = 52
    c.data.test_weeks = 26
    c.data.num_lags = 8
    c.genqot.model.hidden = 16
    c.genqot.eval_orders = 512
    c.genqot.eval_samples = 32
    c.genqot.schedule.peak_lr = 1e-2
    c.genqot.schedule.warmup_steps = 31
    c.genqot.trainer = _trainer(steps=300, log_every=50, eval_every=50)
    c.policy.model.hidden = (32,)
    c.policy.rows = 64
    c.policy.window_weeks = 26
    c.policy.tune_multipliers = (0.8, 1.0, 1.2, 1.4)
    c.policy.trainer = _trainer(steps=100, log_every=2, eval_every=100)
    c.xla_fast_compile = True
  elif variant == "tiny":
    c.data.num_products = 256
    c.data.history_weeks = 32
    c.data.test_weeks = 16
    c.data.num_lags = 8
    c.genqot.model.hidden = 16
    c.genqot.eval_orders = 256
    c.genqot.eval_samples = 16
    c.genqot.schedule.peak_lr = 1e-2
    c.genqot.schedule.warmup_steps = 11
    c.genqot.trainer = _trainer(steps=100, log_every=100, eval_every=100)
    c.policy.model.hidden = (16,)
    c.policy.rows = 32
    c.policy.window_weeks = 16
    c.policy.train_oracle = False
    c.policy.tune_multipliers = (1.0, 1.4)
    c.policy.trainer = _trainer(steps=4, log_every=1, eval_every=4)
    c.smoke = True
    c.checkpoint.enabled = False
    c.xla_fast_compile = True
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}: default, small or tiny")
  return c
