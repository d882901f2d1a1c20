"""Float64 numpy references of our optimizers, written from their papers' math.

Each takes parameters and a list of gradient trees (dicts of arrays) and
returns the list of updates (dicts of float64 arrays). They share no code
with `optimizers/`.
"""
from __future__ import annotations

import numpy as np


def _f64(x):
  return np.asarray(x, np.float64)


def ridge_power(f, exponent, epsilon):
  """(F + epsilon lambda_max(F) I)^exponent of a PSD matrix (eigenvalues >= 0)."""
  w, v = np.linalg.eigh(0.5 * (f + f.T))
  w = np.maximum(w, 0.0)
  w = w + epsilon * w.max()
  return (v * w ** exponent) @ v.T


def numpy_shampoo(params, grads, *, learning_rate, b1, b2, weight_decay, epsilon,
                  exponent, diag_eps=1e-8):
  """`optimizers.shampoo` with full-matrix factors, Adam grafting, roots every step.

  Per step t and matrix G (vectors skip the Kronecker part):
    L <- b2 L + (1-b2) G G^T,  R <- b2 R + (1-b2) G^T G,
    v <- b2 v + (1-b2) G^2,    D = G / (sqrt(v / (1 - b2^t)) + diag_eps),
    Y = L_e^p G R_e^p (F_e = F + epsilon lambda_max(F) I, p = exponent),
    U = Y ||D|| / ||Y||  (vectors: U = D),
    m <- b1 m + (1-b1) U,
    update = -learning_rate (m / (1 - b1^t) + weight_decay theta).
  """
  params = {k: _f64(p) for k, p in params.items()}
  st = {k: dict(v=np.zeros_like(p), m=np.zeros_like(p),
                l=np.zeros((p.shape[0],) * 2) if p.ndim == 2 else None,
                r=np.zeros((p.shape[1],) * 2) if p.ndim == 2 else None)
        for k, p in params.items()}
  out = []
  for t, grad in enumerate(grads, 1):
    upd = {}
    for k, g in grad.items():
      g, s = _f64(g), st[k]
      s["v"] = b2 * s["v"] + (1 - b2) * g * g
      d = g / (np.sqrt(s["v"] / (1 - b2 ** t)) + diag_eps)
      if g.ndim == 2:
        s["l"] = b2 * s["l"] + (1 - b2) * g @ g.T
        s["r"] = b2 * s["r"] + (1 - b2) * g.T @ g
        y = ridge_power(s["l"], exponent, epsilon) @ g @ ridge_power(s["r"], exponent, epsilon)
        d = y * np.linalg.norm(d) / np.linalg.norm(y)
      s["m"] = b1 * s["m"] + (1 - b1) * d
      upd[k] = -learning_rate * (s["m"] / (1 - b1 ** t) + weight_decay * params[k])
      params[k] = params[k] + upd[k]
    out.append(upd)
  return out


def _eig_desc(f):
  _, v = np.linalg.eigh(f)
  return v[:, ::-1]


def _qr_step(f, q):
  est = np.einsum("ji,jk,ki->i", q, f, q)
  order = np.argsort(-est, kind="stable")
  q = q[:, order]
  qn, r = np.linalg.qr(f @ q)
  return qn * np.where(np.diag(r) < 0, -1.0, 1.0), order


def numpy_soap(grads, b1, b2, sb2, eps, freq, qr, precondition=(True, True)):
  """SOAP's direction for one matrix, float64: Adam on Q_L^T G Q_R, bases from L, R."""
  m, n = grads[0].shape
  fac = [np.zeros((m, m)), np.zeros((n, n))]
  q = [np.eye(m), np.eye(n)]
  mu, nu, outs = np.zeros((m, n)), np.zeros((m, n)), []
  for t, g in enumerate(grads, 1):
    g = _f64(g)
    gr = q[0].T @ g @ q[1]
    mu = b1 * mu + (1 - b1) * gr
    nu = b2 * nu + (1 - b2) * gr * gr
    step = (mu / (1 - b1 ** t)) / (np.sqrt(nu / (1 - b2 ** t)) + eps)
    outs.append(q[0] @ step @ q[1].T)
    fac = [sb2 * fac[0] + (1 - sb2) * g @ g.T, sb2 * fac[1] + (1 - sb2) * g.T @ g]
    if (t - 1) % freq == 0:
      new_q = list(q)
      for i in range(2):
        if not precondition[i]:
          continue
        if t == 1 or not qr:
          new_q[i] = _eig_desc(fac[i])
        else:
          new_q[i], order = _qr_step(fac[i], q[i])
          nu = nu[order, :] if i == 0 else nu[:, order]
      mu = new_q[0].T @ (q[0] @ mu @ q[1].T) @ new_q[1]
      q = new_q
  return outs


def numpy_adam_direction(grads, b1, b2, eps):
  """Adam's bias-corrected direction m_hat / (sqrt(v_hat) + eps) per step."""
  m = v = 0.0
  outs = []
  for t, g in enumerate(grads, 1):
    g = _f64(g)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    outs.append((m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps))
  return outs


def numpy_soap_tree(params, grads, *, learning_rate, b1, b2, weight_decay, eps,
                    precondition_frequency):
  """`optimizers.soap` (QR refresh) on matrices and vectors (vectors: Adam)."""
  params = {k: _f64(p) for k, p in params.items()}
  dirs = {}
  for k, p in params.items():
    gs = [g[k] for g in grads]
    dirs[k] = (numpy_soap(gs, b1, b2, b2, eps, precondition_frequency, True) if p.ndim == 2
               else numpy_adam_direction(gs, b1, b2, eps))
  out = []
  for t in range(len(grads)):
    upd = {k: -learning_rate * (dirs[k][t] + weight_decay * params[k]) for k in params}
    params = {k: params[k] + upd[k] for k in params}
    out.append(upd)
  return out


def numpy_normalized_sgd(params, grads, *, learning_rate, weight_decay=0.0, eps=1e-30):
  """theta <- theta - learning_rate (g / (||g|| + eps) + weight_decay theta)."""
  params = {k: _f64(p) for k, p in params.items()}
  out = []
  for grad in grads:
    norm = np.sqrt(sum(np.sum(_f64(g) ** 2) for g in grad.values()))
    upd = {k: -learning_rate * (_f64(g) / (norm + eps) + weight_decay * params[k])
           for k, g in grad.items()}
    params = {k: params[k] + upd[k] for k in params}
    out.append(upd)
  return out
