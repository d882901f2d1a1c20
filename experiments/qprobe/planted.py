"""A planted Q-probe problem whose answer is known.

Features phi_{x,i} ~ N(0, I_D) for n prompts x k samples; a unit vector w*;
scores s = phi . w* + sigma eps (eps ~ N(0, 1)). Two rewards:
  regression:   r = s                                   (MSE should recover w*)
  verifiable:   r = 1[s > tau], tau the (1 - base_rate) quantile of s
                                                        (selection should approach pass@k)
A probe w recovers the direction when cos(w, w*) = w . w* / (|w| |w*|) -> 1.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from experiments.qprobe import probe_losses as pl


def make(n: int, k: int, dim: int, noise: float, seed: int,
         base_rate: float = 0.3) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  w_star = rng.normal(size=dim)
  w_star /= np.linalg.norm(w_star)
  phi = rng.normal(size=(n, k, dim))
  score = phi @ w_star + noise * rng.normal(size=(n, k))
  tau = np.quantile(score, 1.0 - base_rate)
  return {"phi": phi.astype(np.float32), "w_star": w_star, "score": score,
          "binary": (score > tau).astype(np.float32)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def run(n: int, k: int, dim: int, noise: float, seed: int, steps: int = 300,
        learning_rate: float = 1e-2, l2: float = 1e-4) -> dict[str, Any]:
  """Fits every loss on a training half and evaluates on the other half:
  cos(w, w*) per loss and, for the binary reward, argmax-selection pass@1
  against the base rate and the pass@k oracle."""
  both = make(2 * n, k, dim, noise, seed)
  train = {key: (v[:n] if v.ndim > 1 else v) for key, v in both.items()}
  test = {key: (v[n:] if v.ndim > 1 else v) for key, v in both.items()}
  out: dict[str, Any] = {"base_pass1": float(test["binary"].mean()),
                         "pass_at_k": float(test["binary"].max(axis=1).mean())}
  for loss in pl.LOSSES:
    reward = "score" if loss == "mse" else "binary"
    cfg = pl.ProbeConfig(loss=loss, steps=steps, learning_rate=learning_rate, l2=l2, seed=seed)
    params, _ = pl.train_probe(train["phi"], train[reward], cfg)
    w = np.asarray(params["w"], np.float64)
    q = test["phi"] @ w + float(params["b"])
    out[loss] = {"cosine": cosine(w, train["w_star"]),
                 "pass1_argmax": float(pl.expected_reward(q, test["binary"], 0.0).mean())}
  return out
