"""train/fused_residual.py: a tiny Qwen2 whose blocks fold their residual adds into the RMSNorm backward and the MLP's
last product gives transformers' own loss and every gradient; the kernels match the torch arithmetic in Triton's
interpreter; blocks it cannot take keep their forward."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tests.helpers.lora import tiny_qwen2_lora  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROJS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _loss_and_grads(model: Any, ids: Any) -> dict[str, Any]:
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return {"loss": out.loss.detach(), **grads}


def _fused(model: Any) -> int:
    from train import fused_mlp, fused_residual

    for layer in model.base_model.model.model.layers:
        layer.mlp.forward = types.MethodType(fused_mlp.apply_fused_mlp, layer.mlp)
    return fused_residual.install(model, force=True)


def test_blocks_with_folded_residuals_give_transformers_loss_and_every_gradient() -> None:
    from train import fused_residual

    model = tiny_qwen2_lora(PROJS, r=16, lora_alpha=32)
    ids = torch.randint(0, 128, (2, 11))
    theirs = _loss_and_grads(model, ids)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    assert _fused(model) == 2
    ours = _loss_and_grads(model, ids)
    assert fused_residual.STATE["calls"] == 2  # both blocks ran the folded forward
    assert sorted(ours) == sorted(theirs) and len(theirs) == 1 + 2 * 7 * 2
    for key in theirs:  # float64 both sides, but transformers' RMSNorm computes in float32: ~2e-7 apart
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7, msg=key)
    with torch.no_grad():  # no gradient: the block's own forward, the same logits
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, logits, rtol=1e-9, atol=1e-9)
    assert fused_residual.STATE["calls"] == 2
    assert fused_residual.uninstall(model) == 2
    assert not any(fused_residual.ORIGINAL in m.__dict__ for m in model.modules())


def test_norm_gradient_without_the_residual_term_is_caught() -> None:
    """The check above can fail: a backward that drops the residual stream's gradient moves dX of every block."""
    from train import fused_residual

    model = tiny_qwen2_lora(PROJS, r=16, lora_alpha=32)
    ids = torch.randint(0, 128, (2, 11))
    theirs = _loss_and_grads(model, ids)
    _fused(model)
    real = fused_residual.rms_norm_backward
    try:
        fused_residual.rms_norm_backward = lambda dY, X, W, rstd, dP=None, **k: real(dY, X, W, rstd, None, **k)
        ours = _loss_and_grads(model, ids)
    finally:
        fused_residual.rms_norm_backward = real
    torch.testing.assert_close(ours["loss"], theirs["loss"])
    assert any(not torch.allclose(ours[k], theirs[k], rtol=1e-3, atol=1e-6) for k in theirs if k != "loss")


def test_install_leaves_blocks_it_cannot_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    from train import fused_residual

    model = tiny_qwen2_lora(PROJS, r=16, lora_alpha=32)
    layers = model.base_model.model.model.layers
    assert fused_residual.install(model, force=True) == 0  # no fused MLP in either block
    _fused(model)
    fused_residual.uninstall(model)
    layers[0].input_layernorm.weight.requires_grad_(True)  # a trained norm: the Function gives W no gradient
    assert fused_residual.install(model, force=True) == 1
    assert "forward" not in layers[0].__dict__ and "forward" in layers[1].__dict__
    assert fused_residual.STATE["skipped"] == {"norms": 1}
    monkeypatch.setenv("FORMA_FUSED_RESIDUAL", "0")
    assert fused_residual.install(model, force=True) == 0 and "forward" not in layers[1].__dict__
    assert "FORMA_FUSED_RESIDUAL=0" in fused_residual.STATE["why"]


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from train import fused_residual

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        T, N = 7, 200  # N not a power of two: the row mask is exercised
        X = torch.randn(T, N).to(dtype)
        W = (torch.rand(N) + 0.5).to(dtype)
        got = fused_residual.rms_norm_forward(X, W, 1e-6, use_triton=True)
        ref = fused_residual.rms_norm_forward(X, W, 1e-6, use_triton=False)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
        rstd = ref[1]
        dY, dP = torch.randn(T, N).to(dtype), torch.randn(T, N).to(dtype)
        for extra in (None, dP):
            got = fused_residual.rms_norm_backward(dY, X, W, rstd, extra, use_triton=True)
            ref = fused_residual.rms_norm_backward(dY, X, W, rstd, extra, use_triton=False)
            torch.testing.assert_close(got.float(), ref.float(), rtol=tol, atol=tol)
        assert not torch.allclose(fused_residual.rms_norm_backward(dY, X, W, rstd, dP, use_triton=True).float(),
                                  fused_residual.rms_norm_backward(dY, X, W, rstd, None, use_triton=True).float())
    print("KERNELS OK")
""")


def test_norm_kernels_match_the_torch_arithmetic_in_the_interpreter(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "KERNELS OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_norm_kernels_compile_for_the_h200() -> None:
    """Both kernels compile for sm_90 with Triton's own ptxas at the Qwen2.5 width, with no stack a thread."""
    from tests.helpers.triton_aot import resources, tool
    from train import fused_residual_kernels as k

    if not tool("ptxas").is_file() or not tool("cuobjdump").is_file():
        pytest.skip("this Triton wheel has no NVIDIA tools")
    for fn, extra in ((k.rms_norm_fwd, {}), (k.rms_norm_bwd, {"HAS_PASS": True})):
        used = resources(fn, {"BLOCK": 2048, **extra}, 8, 1, ints={"N"}, floats={"eps"})
        assert used["stack"] == 0, (fn.__name__, used)
