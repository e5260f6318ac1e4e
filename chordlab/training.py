"""Chapter 9's payoff: train a small attention model end to end with chordlab's backward pass.

The task, reversing a sequence, needs attention: the token that belongs at position ``i`` sits at position
``L - 1 - i``, so each position must find one other position by where it is. The model is one attention
layer with a residual connection, between learned token and position embeddings and a linear read-out:

    x = E[tokens] + P                       [B, L, d]
    h = x + MultiHeadAttention(x)           (chordlab.attention forward, chordlab.attention_backward)
    logits = h W,  loss = cross-entropy(logits, targets)

Every gradient is written out here (the read-out, the embeddings), except the attention layer's, which comes
from `MultiHeadAttention.backward`. Adam updates everything. `gradient_check` compares the backward with
central finite differences.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layers import MultiHeadAttention


def reversal_batch(rng: np.random.Generator, batch: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [B, L], targets [B, L])`` with ``targets = tokens[:, ::-1]``."""
    tokens = rng.integers(0, vocab, size=(batch, length))
    return tokens, tokens[:, ::-1].copy()


class TinyTransformer:
    """Embeddings, one attention layer with a residual, a linear read-out; every parameter in `params`."""

    def __init__(self, vocab: int, length: int, d_model: int = 32, heads: int = 4, *, seed: int = 0,
                 dtype=np.float32, backend: str = "auto", use_attention: bool = True):
        rng = np.random.default_rng(seed)
        self.vocab, self.length, self.dtype, self.backend = vocab, length, np.dtype(dtype), backend
        self.use_attention = use_attention  # False: h = x, the ablation that shows what attention is for
        self.attn = MultiHeadAttention(d_model, heads, seed=seed + 1, dtype=dtype)
        self.params = {
            "embed": (rng.standard_normal((vocab, d_model)) * 0.5).astype(dtype),
            "pos": (rng.standard_normal((length, d_model)) * 0.5).astype(dtype),
            "w_q": self.attn.w_q, "w_k": self.attn.w_k, "w_v": self.attn.w_v, "w_o": self.attn.w_o,
            "readout": (rng.standard_normal((d_model, vocab)) / np.sqrt(d_model)).astype(dtype),
        }

    def loss_and_grads(self, tokens: np.ndarray, targets: np.ndarray) -> tuple[float, float, dict]:
        """Mean cross-entropy, accuracy, and the gradient of every parameter."""
        p = self.params
        B, L = tokens.shape
        x = p["embed"][tokens] + p["pos"][None, :L]
        h = x + self.attn(x, backend=self.backend) if self.use_attention else x
        logits = h @ p["readout"]
        logits = logits - logits.max(axis=-1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=-1, keepdims=True)
        picked = np.take_along_axis(probs, targets[..., None], axis=-1)[..., 0]
        loss = float(-np.log(np.maximum(picked, 1e-30)).mean())
        accuracy = float((probs.argmax(axis=-1) == targets).mean())
        # backward: softmax + cross-entropy, the read-out, the residual, the attention layer, the embeddings
        dlogits = probs
        np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
        dlogits /= B * L
        grads = {"readout": np.einsum("bld,blv->dv", h, dlogits)}
        dh = dlogits @ p["readout"].T
        dx = dh
        if self.use_attention:
            g = self.attn.backward(dh)
            dx = dh + g.dx
            grads.update(w_q=g.w_q, w_k=g.w_k, w_v=g.w_v, w_o=g.w_o)
        grads["pos"] = dx.sum(axis=0)
        grads["embed"] = np.zeros_like(p["embed"])
        np.add.at(grads["embed"], tokens, dx)
        return loss, accuracy, grads


@dataclass
class Adam:
    """Adam (Kingma & Ba) over a dict of arrays, updated in place."""

    lr: float = 3e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    t: int = 0
    m: dict = field(default_factory=dict)
    v: dict = field(default_factory=dict)

    def step(self, params: dict, grads: dict) -> None:
        self.t += 1
        for name, g in grads.items():
            m = self.m.setdefault(name, np.zeros_like(g))
            v = self.v.setdefault(name, np.zeros_like(g))
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1 ** self.t)
            v_hat = v / (1 - self.beta2 ** self.t)
            params[name] -= (self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(params[name].dtype)


def train(steps: int = 400, *, batch: int = 64, length: int = 8, vocab: int = 10, d_model: int = 32, heads: int = 4,
          lr: float = 3e-3, seed: int = 0, backend: str = "auto", use_attention: bool = True
          ) -> tuple[TinyTransformer, list[dict]]:
    """Train on fresh random batches; returns the model and ``[{"step", "loss", "accuracy"}, ...]``."""
    rng = np.random.default_rng(seed)
    model = TinyTransformer(vocab, length, d_model, heads, seed=seed, backend=backend, use_attention=use_attention)
    opt, history = Adam(lr=lr), []
    for step in range(steps):
        tokens, targets = reversal_batch(rng, batch, length, vocab)
        loss, accuracy, grads = model.loss_and_grads(tokens, targets)
        opt.step(model.params, grads)
        history.append(dict(step=step, loss=loss, accuracy=accuracy))
    return model, history


def gradient_check(seed: int = 0, entries: int = 6, eps: float = 1e-5) -> float:
    """The largest relative difference between `loss_and_grads` and central finite differences, over a few
    entries of every parameter of a small float64 model."""
    rng = np.random.default_rng(seed)
    model = TinyTransformer(vocab=5, length=4, d_model=8, heads=2, seed=seed, dtype=np.float64, backend="tiled")
    tokens, targets = reversal_batch(rng, 3, 4, 5)
    _, _, grads = model.loss_and_grads(tokens, targets)
    worst = 0.0
    for name, param in model.params.items():
        for flat in rng.choice(param.size, size=min(entries, param.size), replace=False):
            idx = np.unravel_index(flat, param.shape)
            keep = param[idx]
            param[idx] = keep + eps
            up = model.loss_and_grads(tokens, targets)[0]
            param[idx] = keep - eps
            down = model.loss_and_grads(tokens, targets)[0]
            param[idx] = keep
            numeric = (up - down) / (2 * eps)
            worst = max(worst, abs(numeric - grads[name][idx]) / max(abs(numeric), 1e-6))
    return worst
