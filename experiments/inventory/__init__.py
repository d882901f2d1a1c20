"""Inventory control with quantity-over-time arrivals (Andaz et al., 2023).

simulator.py (the differentiable QOT backtest), policies.py (base stock,
newsvendor, neural), history.py (the buyer's order/arrival history),
arrival_eval.py (CRPS / quantile / calibration of arrival models),
policy_objective.py (the policy's simulated profit as a model for
framework.trainer), inventory_runner.py (the study), inventory_plots.py,
inventory_report.py, sim_benchmark.py, config.py (variants default, small, tiny).
"""
