"""Gen-QOT inventory control: arrival model + policies trained through the simulator.

  python -m experiments.launch --config=experiments/configs/inventory_genqot.py \
      --workdir=runs/inventory_genqot
  python -m experiments.launch --config=experiments/configs/inventory_genqot.py:tiny ...

The default finishes in a few minutes on 2 CPU cores; `tiny` is the smoke test.
"""
import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.inventory"
  c.seed = 0
  c.gamma = 0.99                 # weekly discount.

  c.data = ml_collections.ConfigDict()
  c.data.num_products = 2000
  c.data.history_weeks = 104     # training window (arrivals + policy training);
                                 # a multiple of test_weeks.
  c.data.test_weeks = 52         # held-out backtest window.
  c.data.num_lags = 10           # arrival lags j = 0..L-1 (weeks).
  c.data.behaviour_noise = 0.3   # lognormal noise of historical orders.

  c.genqot = ml_collections.ConfigDict()
  c.genqot.hidden = 32
  c.genqot.steps = 1000
  c.genqot.batch_size = 256
  c.genqot.learning_rate = 3e-3
  c.genqot.eval_orders = 2000    # held-out orders scored.
  c.genqot.eval_samples = 64     # samples per order for CRPS / quantiles.

  c.policy = ml_collections.ConfigDict()
  c.policy.hidden = (64, 64)
  c.policy.steps = 300
  c.policy.batch_products = 128
  c.policy.window_weeks = 52     # random history window per training step.
  c.policy.learning_rate = 3e-3
  c.policy.grad_clip = 1.0
  c.policy.train_oracle = True   # also train with the true arrival process (reference).
  c.policy.tune_multipliers = (0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.6, 1.8)

  c.log_every = 50
  c.xla_fast_compile = False     # XLA backend optimisation level 0 (faster compiles).

  if variant == "tiny":
    c.data.num_products = 256
    c.data.history_weeks = 32
    c.data.test_weeks = 16
    c.data.num_lags = 8
    c.genqot.hidden = 16
    c.genqot.steps = 100
    c.genqot.batch_size = 256
    c.genqot.learning_rate = 1e-2
    c.genqot.eval_orders = 256
    c.genqot.eval_samples = 16
    c.policy.hidden = (16,)
    c.policy.steps = 4
    c.policy.batch_products = 32
    c.policy.window_weeks = 16
    c.policy.train_oracle = False
    c.policy.tune_multipliers = (1.0, 1.4)
    c.log_every = 100
    c.xla_fast_compile = True
  elif variant != "default":
    raise ValueError(f"unknown variant {variant!r}")
  return c
