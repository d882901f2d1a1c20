"""LM evaluation: a CORE-style in-context-learning harness and the ICL calibration study.

icl_tasks.py (llm-foundry / DCLM task files, k-shot prompts, centered accuracy),
icl_scoring.py (batched masked continuation scoring, sharded), core_eval.py (the
CORE runner, experiments/configs/eval_core.py), checkpoint_loading.py (a run
directory or hf:<dir>), calibration.py (ECE variants, Brier, NLL, temperature
scaling, scaling-binning, reliability diagrams), icl_synthetic.py (per-sequence
random rules and their Bayes-optimal predictor), calibration_study.py (the study,
experiments/configs/icl_calibration.py), bench_icl_scoring.py (throughput).
Task files from offline text: tools/make_icl_tasks.py.
"""
