"""train/flash_attention4.py: which packed attention calls go to FlashAttention-4, and the agreement check that
keeps a kernel computing something else out of training.

FlashAttention-4 runs on Hopper and Blackwell only, so here both sides are plain-torch packed attention (one SDPA
call per chat, grouped-query heads repeated): the reference with Unsloth's ``_varlen_attn_call`` signature, the
candidate with ``flash_attn_varlen_func``'s. What is tested is the routing and the check, on real arithmetic;
the kernel itself is checked on the H200 by ``bench/probe/fa4_attention_check.py`` and by this same agreement
check when training starts.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from train import flash_attention4 as fa4

ROOT = Path(__file__).resolve().parents[1]


def reference(q: Any, k: Any, v: Any, cu: Any, max_len: int, *, scale: Any, window_size: Any,
              enable_gqa: bool) -> Any:
    """Packed attention, chat by chat: Unsloth's ``_varlen_attn_call`` signature."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        qs, ks, vs = (x[a:b].transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, 0), vs.repeat_interleave(groups, 0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=tuple(window_size) == (-1, 0),
                                                   scale=scale).transpose(0, 1))
    return torch.cat(outs)


class Candidate:
    """``flash_attn_varlen_func``'s signature over :func:`reference`, with optional faults, counting calls."""

    def __init__(self, out_scale: float = 1.0, dk_scale: float = 1.0, fail: bool = False) -> None:
        self.out_scale, self.dk_scale, self.fail, self.calls = out_scale, dk_scale, fail, 0

    def __call__(self, q: Any, k: Any, v: Any, *, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: int,
                 max_seqlen_k: int, softmax_scale: Any, causal: bool) -> tuple[Any, None]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("kernel did not compile")
        assert causal and cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
        if self.dk_scale != 1.0:
            k = ScaleGrad.apply(k, self.dk_scale)
        out = reference(q, k, v, cu_seqlens_q, max_seqlen_q, scale=softmax_scale, window_size=(-1, 0),
                        enable_gqa=True)
        return out * self.out_scale, None


class ScaleGrad(torch.autograd.Function):
    """Identity forward, gradient times ``factor``: a fault in dK alone."""

    @staticmethod
    def forward(ctx: Any, x: Any, factor: float) -> Any:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        return grad * ctx.factor, None


def packed(dtype: Any = torch.bfloat16, seed: int = 0) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(50, 4, 16, generator=g).to(dtype)
    k = torch.randn(50, 2, 16, generator=g).to(dtype)
    v = torch.randn(50, 2, 16, generator=g).to(dtype)
    return q, k, v, torch.tensor([0, 20, 21, 50], dtype=torch.int32)


@pytest.fixture(autouse=True)
def fresh_state() -> Any:
    saved = {**fa4.STATE, "layouts": dict(fa4.STATE["layouts"])}
    fa4.STATE["layouts"] = {}
    yield
    fa4.STATE.clear()
    fa4.STATE.update(saved)


def test_causal_half_precision_calls_go_to_fa4_once_the_check_passes() -> None:
    cand = Candidate()
    call = fa4.routed(reference, cand)
    q, k, v, cu = packed()
    out = call(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True)
    # the check ran FA4 once on its own row; the call itself is the second
    assert cand.calls == 2
    assert fa4.STATE["layouts"] == {"4q/2kv/16/bfloat16": "FlashAttention-4"}
    torch.testing.assert_close(out, reference(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True))
    call(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True)
    assert cand.calls == 3  # checked once per head layout, not per call


@pytest.mark.parametrize(("dtype", "window"), [(torch.float32, (-1, 0)), (torch.bfloat16, (-1, -1)),
                                               (torch.bfloat16, (63, 0))])
def test_other_calls_keep_unsloths_path(dtype: Any, window: Any) -> None:
    cand = Candidate()
    call = fa4.routed(reference, cand)
    q, k, v, cu = packed(dtype)
    out = call(q, k, v, cu, 29, scale=None, window_size=window, enable_gqa=True)
    assert cand.calls == 0 and fa4.STATE["layouts"] == {}
    torch.testing.assert_close(out, reference(q, k, v, cu, 29, scale=None, window_size=window, enable_gqa=True))


@pytest.mark.parametrize(("candidate", "says"), [
    (Candidate(out_scale=1.05), "output differs"),
    (Candidate(dk_scale=1.5), "dK differs"),
    (Candidate(fail=True), "RuntimeError: kernel did not compile"),
])
def test_a_kernel_that_disagrees_or_fails_is_refused_with_the_reason(candidate: Candidate, says: str) -> None:
    call = fa4.routed(reference, candidate)
    q, k, v, cu = packed()
    out = call(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True)
    assert says in fa4.STATE["layouts"]["4q/2kv/16/bfloat16"]
    calls = candidate.calls
    torch.testing.assert_close(out, reference(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True))
    call(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True)
    assert candidate.calls == calls  # refused for good: no second check, no FA4 call


def test_the_check_runs_under_no_grad_as_in_a_checkpointed_forward() -> None:
    call = fa4.routed(reference, Candidate())
    q, k, v, cu = packed()
    with torch.no_grad():
        call(q, k, v, cu, 29, scale=None, window_size=(-1, 0), enable_gqa=True)
    assert fa4.STATE["layouts"] == {"4q/2kv/16/bfloat16": "FlashAttention-4"}


def test_install_says_why_it_does_not_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORMA_FA4", "0")
    assert fa4.install() is False and fa4.STATE == {"installed": False, "reason": "off (FORMA_FA4=0)",
                                                    "layouts": {}}
    monkeypatch.delenv("FORMA_FA4")
    assert fa4.install() is False
    assert fa4.STATE["reason"] == "no CUDA device"  # the CI machine and this one have no GPU


@pytest.mark.parametrize(("capability", "says"), [
    ((9, 0), "flash_attn.cute does not import"),  # a Hopper card without the package: the hint names the pins
    ((8, 0), "compute capability 8.x"),
])
def test_on_a_gpu_without_the_package_or_hopper_it_says_why(monkeypatch: pytest.MonkeyPatch,
                                                              capability: tuple[int, int], says: str) -> None:
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    reason = fa4.unavailable_reason()
    assert reason is not None and says in reason
    if capability[0] == 9:
        assert "docs/train.md" in reason


RESTORE = textwrap.dedent("""
    import os
    from train import unsloth_compat

    unsloth_compat.import_unsloth()
    import unsloth.models  # noqa: F401  (on the CPU Unsloth stops short of its models; attention_dispatch needs them)
    from unsloth.utils import attention_dispatch as dispatch
    from train import flash_attention4 as fa4

    original = dispatch._varlen_attn_call
    dispatch._varlen_attn_call = fa4.routed(original, lambda *a, **k: None)  # what an earlier CUDA run left
    os.environ["FORMA_FA4"] = "0"
    assert fa4.install() is False and fa4.STATE["reason"] == "off (FORMA_FA4=0)"
    assert dispatch._varlen_attn_call is original, dispatch._varlen_attn_call
    print("RESTORED")
""")


def test_a_later_run_with_fa4_off_gets_unsloths_call_back() -> None:
    # a subprocess: importing Unsloth's models on the CPU patches TRL, which other tests in this process use as is
    proc = subprocess.run([sys.executable, "-c", RESTORE], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "RESTORED" in proc.stdout, proc.stderr[-2000:]
