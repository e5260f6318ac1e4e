"""Model answers to the notebook exercises (kept out of the notebooks' stored outputs)."""

import numpy as np


def score_matrix_bytes(B, H, L, itemsize):
    return B * H * L * L * itemsize


def attention_2d(q, k, v):
    s = q @ k.T / np.sqrt(q.shape[-1])
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=1, keepdims=True)) @ v


def merge_states(m1, l1, m2, l2):
    m = max(m1, m2)
    return m, l1 * np.exp(m1 - m) + l2 * np.exp(m2 - m)


def tile_update(m, l, acc, S, V):
    m_new = np.maximum(m, S.max(axis=1))
    p = np.exp(S - m_new[:, None])
    alpha = np.exp(m - m_new)
    return m_new, alpha * l + p.sum(axis=1), alpha[:, None] * acc + p @ V


SOLUTIONS = {f.__name__: f for f in (score_matrix_bytes, attention_2d, merge_states, tile_update)}
