"""Synthetic runs with planted updates: tiny Llama bases and checkpoints whose deltas have a known rank and schedule.

Used by tests, `rlcast analyze --example` and benchmarks, so that every claim about recovery can be checked
against a known answer without downloading anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(folder: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 96,
               intermediate: int | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write a randomly initialised LlamaForCausalLM (config + model.safetensors) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def schedule(kind: str, step: int, total: int) -> float:
    """Coefficient of the planted direction at `step`: linear in the step, or saturating (non-linear)."""
    t = step / total
    if kind == "linear":
        return t
    if kind == "saturating":
        return (1 - math.exp(-3 * t)) / (1 - math.exp(-3))
    raise ValueError(f"unknown schedule {kind!r}")


def planted_deltas(shapes: dict[str, tuple[int, ...]], rank: int = 1, seed: int = 0,
                   scale: float = 0.05) -> dict[str, list[tuple[float, torch.Tensor, torch.Tensor]]]:
    """Per tensor, `rank` orthonormal (sigma, u, v) factors with well separated sigmas (1, 0.5, 0.25, ...)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            out[name] = [(scale, torch.randn(shape[0], generator=gen) / math.sqrt(shape[0]), torch.ones(1))]
            continue
        m, n = shape
        k = min(rank, m, n)
        u, _ = torch.linalg.qr(torch.randn(m, k, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
        out[name] = [(scale * 0.5 ** i, u[:, i], v[:, i]) for i in range(k)]
    return out


def planted_run(root: str | Path, steps: list[int] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100), rank: int = 1,
                kind: str = "linear", seed: int = 0, noise: float = 0.0, layout: str = "trl",
                base: str | Path | None = None, hidden: int = 64, layers: int = 2,
                dtype: torch.dtype = torch.float32) -> Path:
    """Write a run whose checkpoint at step t is `W0 + c(t) * sum_i s_i u_i v_i^T (+ noise)` for every tensor.

    layout: "trl" (ROOT/checkpoint-N), "verl" (ROOT/global_step_N/actor/huggingface), "openrlhf"
    (ROOT/global_stepN_hf). The base goes to ROOT/base unless `base` is given. Returns ROOT.
    """
    root = Path(root)
    base = Path(base) if base else tiny_llama(root / "base", seed=seed, hidden=hidden, layers=layers, dtype=dtype)
    with safe_open(base / "model.safetensors", "pt") as f:
        w0 = {name: f.get_tensor(name) for name in f.keys()}
    factors = planted_deltas({k: tuple(v.shape) for k, v in w0.items()}, rank=rank, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    total = max(steps)
    for step in steps:
        c = schedule(kind, step, total)
        state = {}
        for name, w in w0.items():
            delta = sum(s * (torch.outer(u, v) if w.dim() == 2 else u) for s, u, v in factors[name])
            if noise:
                delta = delta + noise * torch.randn(w.shape, generator=gen) / math.sqrt(w.numel())
            state[name] = (w.float() + c * delta).to(w.dtype).contiguous()
        folder = {"trl": root / f"checkpoint-{step}",
                  "verl": root / f"global_step_{step}" / "actor" / "huggingface",
                  "openrlhf": root / f"global_step{step}_hf"}[layout]
        folder.mkdir(parents=True, exist_ok=True)
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text((base / "config.json").read_text())
    (root / "planted.json").write_text(json.dumps({"steps": list(steps), "rank": rank, "kind": kind,
                                                   "seed": seed, "noise": noise, "layout": layout}))
    return root
