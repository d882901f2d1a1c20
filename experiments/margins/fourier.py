"""Per-neuron Fourier analysis for modular addition, and parity support.

DFT convention: X_j = sum_a x_a exp(-2 pi i j a / p). For real x the power at
frequency j is pooled with -j: P_j = |X_j|^2 + |X_{-j}|^2, j = 1..floor(p/2)
(for even p the Nyquist term j = p/2 is counted once); the constant term
j = 0 is dropped. A neuron's spectrum pools u, v and w:
    P_j(i) = sum_{x in {u_i, v_i, w_i}} P_j(x),
normalised to sum 1 over j. Its "max normalised power" is max_j P_j(i).

Phases: a neuron u(a) = b cos(theta_u + w_j a) has X_j = (b p / 2) e^{i theta_u},
so theta_x = arg X_j. The max-margin neurons satisfy theta_u + theta_v =
theta_w (mod 2 pi), i.e. w(c) = cos(theta_u + theta_v + w_j c) and the neuron
computes cos(w_j (a + b - c)) after averaging.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


def raw_power(x: np.ndarray) -> np.ndarray:
  """Pooled +-j power of real vectors x (..., p) -> (..., p // 2)."""
  x = np.asarray(x, dtype=np.float64)
  p = x.shape[-1]
  spec = np.abs(np.fft.fft(x, axis=-1)) ** 2
  half = p // 2
  power = spec[..., 1:half + 1].copy()
  if p % 2 == 0:
    power[..., :-1] *= 2.0  # +-j pooled; Nyquist j = p/2 appears once.
  else:
    power *= 2.0
  return power


def fourier_power(x: np.ndarray) -> np.ndarray:
  """Normalised pooled power (..., p // 2), frequencies 1..p//2, sums to 1."""
  power = raw_power(x)
  return power / np.maximum(power.sum(axis=-1, keepdims=True), 1e-30)


class NeuronSpectra(NamedTuple):
  """Fourier summary of a two-input network's neurons (m neurons).

  spectrum: (m, K) normalised pooled power of (u, v, w), freqs 1..K.
  max_power: (m,) max_j spectrum; per_vector_max_power: (m, 3) for u, v, w.
  frequency: (m,) dominant frequency (1-based).
  phase_error: (m,) |wrap(theta_u + theta_v - theta_w)| at that frequency.
  """
  spectrum: np.ndarray
  max_power: np.ndarray
  per_vector_max_power: np.ndarray
  frequency: np.ndarray
  phases: np.ndarray
  phase_error: np.ndarray


def wrap_angle(x: np.ndarray) -> np.ndarray:
  """To (-pi, pi]."""
  return np.angle(np.exp(1j * np.asarray(x)))


def neuron_spectra(params) -> NeuronSpectra:
  """Spectra, dominant frequencies and phase relation of each neuron."""
  vecs = [np.asarray(params[k], dtype=np.float64) for k in ("u", "v", "w")]
  raw = sum(raw_power(x) for x in vecs)
  spectrum = raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-30)
  per_vec = np.stack([fourier_power(x).max(axis=1) for x in vecs], axis=1)
  freq = spectrum.argmax(axis=1) + 1
  coeffs = [np.fft.fft(x, axis=1)[np.arange(len(freq)), freq] for x in vecs]
  phases = np.stack([np.angle(c) for c in coeffs], axis=1)
  err = np.abs(wrap_angle(phases[:, 0] + phases[:, 1] - phases[:, 2]))
  return NeuronSpectra(spectrum, spectrum.max(axis=1), per_vec, freq, phases,
                       err)


def frequency_counts(frequency: np.ndarray, p: int) -> np.ndarray:
  """Number of neurons whose dominant frequency is j, for j = 1..p//2."""
  return np.bincount(np.asarray(frequency) - 1, minlength=p // 2)[:p // 2]


def parity_support_fraction(u: np.ndarray, support: Sequence[int]) -> np.ndarray:
  """||u_i restricted to S||^2 / ||u_i||^2 per neuron, (m,)."""
  u = np.asarray(u, dtype=np.float64)
  on = np.sum(u[:, np.asarray(support)] ** 2, axis=1)
  return on / np.maximum(np.sum(u ** 2, axis=1), 1e-30)


def parity_balance(u: np.ndarray, support: Sequence[int]) -> np.ndarray:
  """min_i |u_i| / max_i |u_i| over i in S per neuron (1 = equal magnitudes)."""
  a = np.abs(np.asarray(u, dtype=np.float64)[:, np.asarray(support)])
  return a.min(axis=1) / np.maximum(a.max(axis=1), 1e-30)
