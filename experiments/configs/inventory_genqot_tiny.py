"""Smoke-test variant of inventory_genqot (seconds on a laptop CPU)."""
from experiments.configs import inventory_genqot


def get_config():
  return inventory_genqot.get_config("tiny")
