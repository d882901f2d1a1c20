"""Sparse parity study (Edelman et al., NeurIPS 2023): one config, variants by argument.

  python -m experiments.launch --config=experiments/parity/parity_config.py:small --workdir=/tmp/x

Variants (`get_config(arg)`):
  frontier  (default) the (50, 3) offline sparse parity grid: widths
            100 / 300 / 1000 x m 700 / 1000 / 1400 / 2000 x init (dense, s = 4
            sparse) x 10 seeds = 240 runs, SGD lr 0.1 / batch 32 / hinge / weight
            decay 0.01, at most 4000 steps, success = test accuracy >= 0.95.
  lottery   width-1000, s = 4 nets on m = 1000 (10 seeds); top-K tickets
            (K = 16, 64) rewound and retrained vs K random neurons.
  tabular   sparse / dense MLPs (width 512, s = 2) vs random forests on
            breast_cancer, wine, digits, iris, each also with 2 x d noise
            features, training fractions 0.1 / 0.3 / 1.0, 3 seeds; AdamW lr 3e-3.
  small     a (40, 3) grid that runs in about a minute on a laptop CPU:
            widths 32 / 128 / 512 x m 400 / 700 / 1000 / 1400 x (dense, s = 3) x
            10 seeds, at most 3000 steps (the old-vs-new reproduction grid).
  small_lottery, small_tabular: the lottery / tabular experiments at that scale.

Every run of one width trains in one population (`framework.population`), the
member axis split over the mesh's (data, fsdp) axes.
"""
import ml_collections

from framework import sharding

VARIANTS = ("frontier", "lottery", "tabular", "small", "small_lottery", "small_tabular")


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.parity.parity_runner"
  c.experiment = "frontier"  # frontier | lottery | tabular
  c.seed = 0  # first data / init seed; seed j of a cell is seed + j
  c.parity = ml_collections.ConfigDict(dict(n=50, k=3, num_test=1000))
  c.grid = ml_collections.ConfigDict(dict(
      widths=(100, 300, 1000), num_samples=(700, 1000, 1400, 2000),
      sparsities=(0, 4), num_seeds=10))  # sparsity 0: dense
  # `models.sparse_mlp` (width, sparsity and num_outputs are set per population).
  c.model = ml_collections.ConfigDict(dict(
      name="sparse_mlp", loss="hinge", bias_scale=1.0, out_scale=1.0))
  # Barak et al. (2022) / Edelman et al. (2023) recipe: hinge loss, plain SGD,
  # lr 0.1, batch 32, weight decay 0.01 (framework.optim.make_optimizer).
  c.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", momentum=0.0, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
      grad_clip_norm=0.0, kwargs={}))
  c.schedule = ml_collections.ConfigDict(dict(
      name="constant", peak_lr=0.1, warmup_steps=0, end_lr_fraction=0.0))
  c.trainer = ml_collections.ConfigDict(dict(
      batch_size=32, max_steps=4000, eval_every=100, success_acc=0.95,
      steps_per_call=0))  # steps per dispatch (0: eval_every)
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = sharding.DEFAULT_RULES
  c.lottery = ml_collections.ConfigDict(dict(
      width=1000, num_samples=1000, sparsity=4, num_seeds=10, keep=(16, 64)))
  c.tabular = ml_collections.ConfigDict(dict(
      datasets=("breast_cancer", "wine", "digits", "iris"), noise_factors=(0, 2),
      fractions=(0.1, 0.3, 1.0), num_seeds=3, width=512, sparsity=2, rf_trees=200,
      test_fraction=0.25))
  return c


def _tabular(c: ml_collections.ConfigDict) -> None:
  """Softmax cross-entropy, AdamW lr 3e-3 / wd 1e-4, 1000 steps, no early stopping."""
  c.experiment = "tabular"
  c.model.loss = "xent"
  c.optimizer.name = "adamw"
  c.optimizer.momentum = None  # no meaning for AdamW
  c.optimizer.weight_decay = 1e-4
  c.schedule.peak_lr = 3e-3
  c.trainer.max_steps = 1000
  c.trainer.eval_every = 1000
  c.trainer.success_acc = 2.0  # > 1: never stops early


def _small_parity(c: ml_collections.ConfigDict) -> None:
  c.parity.n, c.parity.k, c.parity.num_test = 40, 3, 500
  c.trainer.max_steps = 3000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "frontier"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
  c = _base()
  if variant == "lottery":
    c.experiment = "lottery"
  elif variant == "tabular":
    _tabular(c)
  elif variant == "small":
    _small_parity(c)
    c.grid.widths = (32, 128, 512)
    c.grid.num_samples = (400, 700, 1000, 1400)
    c.grid.sparsities = (0, 3)
    c.grid.num_seeds = 10
  elif variant == "small_lottery":
    _small_parity(c)
    c.experiment = "lottery"
    c.lottery.update(dict(width=512, num_samples=700, sparsity=3, num_seeds=10, keep=(8, 32)))
  elif variant == "small_tabular":
    _tabular(c)
    c.trainer.max_steps = c.trainer.eval_every = 500
    c.tabular.update(dict(datasets=("iris", "wine", "breast_cancer"), fractions=(0.3, 1.0),
                          num_seeds=2, width=128, rf_trees=50))
  return c
