"""Margin maximisation on algebraic tasks (Morwani et al., ICLR 2024).

"Feature emergence via margin maximization: case studies in algebraic tasks":
one-hidden-layer bias-free networks (`models.algebraic_nets`) trained with a
vanishing L_{2,nu} penalty reach the maximum normalised margin, and the
max-margin theory predicts their features.

  margins.py         normalised margins, theoretical maxima gamma*, constructions
  fourier.py         per-neuron Fourier spectra (modular addition), parity support
  group_reps.py      real irreducible representations of finite groups
  features.py        the tasks (data + model + gamma*) and the feature statistics
  margin_probe.py    the loop hook measuring margin / gamma* during training
  margin_report.py   plots and report.md
  margins_runner.py  run(config, workdir) on framework.trainer
  margins_config.py  the variants: p11 (default), p71, s3, s4, parity_10_4

  python -m experiments.launch --config=experiments/margins/margins_config.py:p11 \
      --workdir=runs/margins_p11
"""
