"""Forecasts: what a lazy module returns, as a weighted sum of its last computed outputs.

Every forecaster here is linear in the outputs it keeps: stand-in = sum_j w_j * out_j, newest first, with
weights that depend only on the timesteps those outputs were computed at and on this step's timestep. So
the cache keeps K outputs and their timesteps per row, and a forecaster is a rule for the weights:

  repeat        K = 1: the last output (the LazyDiT paper, FORA).
  extrapolate   K = order + 1: the polynomial through the last K outputs in the timestep, evaluated now
                (Newton's divided differences, written as Lagrange weights); order 1 is the line through
                the last two.
  taylor        K = order + 1: TaylorSeer (Liu et al. 2025): a Taylor series in the step whose derivatives are
                backward differences of the outputs, assuming the computed steps are evenly spaced;
                x = (t - t1) / (t1 - t2) steps of that spacing. Order 1 equals the line.
  learned       K = 3: o1 + a (line - o1) + b (quad - line), with (a, b) fitted per block, module and position
                in a chain and stored in the gate file (training/forecaster.py); (1, 0) is the line.

A row with fewer outputs than K uses the ones it has (lower order); weights that are not finite (two
outputs at the same timestep) fall back to repeating the last output.
"""

import math

import torch

FORECASTS = ("extrapolate", "learned", "repeat", "taylor")


def history(reuse, order):
    """How many computed outputs a forecaster keeps per row and module."""
    return 1 if reuse == "repeat" else 3 if reuse == "learned" else order + 1


def learned(coef, times, now):
    """(rows, 3) weights of o1 + a (line - o1) + b (quad - line) for coef (rows, 2) = (a, b) per row."""
    w1 = weights("extrapolate", 1, times[:, :2], now)
    w1 = torch.cat([w1, torch.zeros_like(w1[:, :1])], 1)
    w2 = weights("extrapolate", 2, times, now)
    w0 = torch.zeros_like(w1)
    w0[:, 0] = 1.0
    a, b = coef[:, :1].to(w1), coef[:, 1:].to(w1)
    return w0 + a * (w1 - w0) + b * (w2 - w1)


def weights(reuse, order, times, now):
    """(rows, K) float32 weights of the outputs at `times` (rows, K; newest first, NaN = none) at `now`."""
    valid = ~torch.isnan(times)
    rows, k = times.shape
    first = torch.zeros_like(times)
    first[:, 0] = 1.0
    if reuse == "repeat" or k == 1:
        return first
    if reuse == "extrapolate":
        w = torch.ones_like(times)
        for j in range(k):
            for m in range(k):
                if m != j:
                    w[:, j] *= torch.where(valid[:, m], (now - times[:, m]) / (times[:, j] - times[:, m]), 1.0)
        w = torch.where(valid, w, 0.0)
    elif reuse == "taylor":
        count = valid.sum(1)
        x = torch.where(valid[:, 1], (now - times[:, 0]) / (times[:, 0] - times[:, 1]), 0.0)
        w = torch.zeros_like(times)
        for i in range(min(order, k - 1) + 1):
            term = torch.where(count > i, x ** i / math.factorial(i), 0.0)
            for j in range(i + 1):
                w[:, j] += term * ((-1) ** j * math.comb(i, j))
    else:
        raise ValueError(f"unknown forecaster {reuse!r}; expected one of {FORECASTS}")
    ok = torch.isfinite(w).all(1, keepdim=True)
    return torch.where(ok, w, first)


def combine(last, past, w):
    """sum_j w[:, j] * out_j over last (rows, T, D) and past [(rows, T, D), ...] (newest first)."""
    out = last * w[:, 0].view(-1, 1, 1).to(last.dtype)
    for j, older in enumerate(past, start=1):
        out = out + older * w[:, j].view(-1, 1, 1).to(older.dtype)
    return out
