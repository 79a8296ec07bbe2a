"""train/rope_layout.py: Unsloth's packed RoPE, with dQ and dK written in the layout Q and K came in.

The kernel is Unsloth's own Triton kernel, run in Triton's interpreter on the CPU (a subprocess, since the
interpreter is chosen when Triton is imported). The check: gradients bitwise those of Unsloth's Function and close
to a plain-torch rotation, and the backward reaches the projections' outputs without a copy, where Unsloth's own
Function makes one per tensor (so the count is not vacuous).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from train import rope_layout, unsloth_compat

    unsloth_compat.import_unsloth()
    from unsloth.kernels import rope_embedding as rope

    # asks the CUDA device whether cache-eviction hints compile; a CPU tensor has no device index (hints only)
    rope._eviction_hints_ok = lambda device: False

    class CopyCount(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.copies = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # Triton's interpreter copies each kernel argument's flat storage in and out: 1-D, not counted
            if func in (torch.ops.aten.copy_.default, torch.ops.aten.clone.default) and args[0].dim() > 1:
                self.copies.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    T, H, HK, D = 40, 4, 2, 16
    positions = torch.cat([torch.arange(17), torch.arange(23)])[None]  # two packed chats
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    angles = torch.outer(torch.arange(64).float(), inv)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    XQ, XK = torch.randn(1, T, H * D), torch.randn(1, T, HK * D)
    WQ, WK = torch.randn(1, H, T, D), torch.randn(1, HK, T, D)

    def run(function, reference=False):
        rope.Fast_RoPE_Embedding_QK = function
        xq, xk = XQ.clone().requires_grad_(), XK.clone().requires_grad_()
        Q = xq.view(1, T, H, D).transpose(1, 2)
        K = xk.view(1, T, HK, D).transpose(1, 2)
        if reference:
            c, s = cos[positions][:, None], sin[positions][:, None]
            rot = lambda x: torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1)
            Qr, Kr = Q * c + rot(Q) * s, K * c + rot(K) * s
        else:
            Qr, Kr = rope._fast_rope_embedding_eager(Q, K, cos, sin, positions)
        loss = (Qr * WQ).sum() + (Kr * WK).sum()
        counter = CopyCount()
        with counter:
            loss.backward()
        return Qr.detach(), Kr.detach(), xq.grad, xk.grad, counter.copies

    unsloth_function = rope.Fast_RoPE_Embedding_QK
    assert rope_layout.install() and rope_layout.install()  # idempotent
    ours = rope.Fast_RoPE_Embedding_QK
    assert ours is not unsloth_function

    base = run(unsloth_function)
    mine = run(ours)
    ref = run(unsloth_function, reference=True)
    for a, b in zip(base[:4], mine[:4]):
        assert torch.equal(a, b), (a - b).abs().max()
    for a, b in zip(ref[:4], mine[:4]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    assert (1, T, H, D) in base[4] and (1, T, HK, D) in base[4], base[4]  # Unsloth's backward copies dQ and dK
    assert mine[4] == [], mine[4]  # ours copies nothing
    print("ROPE OK", base[4])
""")


def test_packed_rope_gradients_are_unsloths_and_need_no_copy(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    pytest.importorskip("unsloth")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("FORMA_ROPE_LAYOUT", None)
    proc = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0 and "ROPE OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_switched_off_leaves_unsloths_function(monkeypatch: pytest.MonkeyPatch) -> None:
    from train import rope_layout

    monkeypatch.setenv("FORMA_ROPE_LAYOUT", "0")
    assert rope_layout.install() is False
