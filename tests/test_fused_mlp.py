"""The fused LoRA SwiGLU MLP (train/fused_mlp.py): its autograd Function against PEFT's MLP on a real Qwen2 layer,
its Triton kernels against the torch version of the same arithmetic, run in Triton's interpreter on the CPU, the
choice between its two kernel designs, and its tiles compiled for the H200 (sm_90) with Triton's own ptxas."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.lora import outputs_and_grads, tiny_qwen2_lora
from train.unsloth_compat import import_unsloth

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("unsloth")
import_unsloth()  # as train() does: patches first, and keeps torch's alias check a warning under CI

ROOT = Path(__file__).resolve().parents[1]


def _mlp(lora_alpha: int, dropout: float = 0.0) -> tuple[Any, Any]:
    model = tiny_qwen2_lora(["gate_proj", "up_proj", "down_proj"], 16, lora_alpha, dropout)
    return model, model.base_model.model.model.layers[0].mlp


def _peft_mlp(mlp: Any, X: Any) -> Any:
    return mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(X)) * mlp.up_proj(X))


@pytest.mark.parametrize("lora_alpha", [16, 32])  # LoRA scale 1 and 2
def test_fused_mlp_matches_peft_outputs_and_gradients(lora_alpha: int) -> None:
    from train import fused_mlp

    _, mlp = _mlp(lora_alpha)
    X = torch.randn(2, 7, 64, dtype=torch.float64)
    grad = torch.randn(2, 7, 64, dtype=torch.float64)
    ours = outputs_and_grads(fused_mlp.apply_fused_mlp, mlp, X, grad)
    peft = outputs_and_grads(_peft_mlp, mlp, X, grad)
    assert sorted(ours) == sorted(peft) and len([k for k in peft if "lora_" in k]) == 6
    for key in peft:
        assert ours[key].shape == peft[key].shape, key
        torch.testing.assert_close(ours[key], peft[key], rtol=1e-9, atol=1e-9, msg=key)


@pytest.mark.parametrize("lora_alpha", [16, 32])
def test_quack_design_matches_peft_and_follows_the_adapter(lora_alpha: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``quack`` design's Function (train/fused_mlp_gated.py; on the CPU its products are the torch arithmetic)
    against PEFT in float64: the packed layout, the LoRA columns in K, the interleaved gradients. Its LoRA columns
    follow the adapter after an update, and a layer whose weights are no longer the packed views (the 4-bit base put
    back) falls back to the tile Function."""
    from train import fused_mlp, fused_mlp_gated

    monkeypatch.setenv("FORMA_FUSED_MLP", "quack")
    _, mlp = _mlp(lora_alpha)
    before = {name: p.detach().clone() for name, p in mlp.named_parameters()}
    assert fused_mlp_gated.pack(mlp, 16) and fused_mlp_gated.packed(mlp) is not None
    for name, p in mlp.named_parameters():  # the base weights are views of the buffers, with the same values
        assert torch.equal(p, before[name]), name
    used = []
    function = fused_mlp_gated.function()
    monkeypatch.setattr(fused_mlp_gated, "function", lambda: used.append(1) or function)
    X = torch.randn(2, 7, 64, dtype=torch.float64)
    grad = torch.randn(2, 7, 64, dtype=torch.float64)
    for step in range(2):
        ours = outputs_and_grads(fused_mlp.apply_fused_mlp, mlp, X, grad)
        peft = outputs_and_grads(_peft_mlp, mlp, X, grad)
        assert sorted(ours) == sorted(peft) and len([k for k in peft if "lora_" in k]) == 6
        for key in peft:
            torch.testing.assert_close(ours[key], peft[key], rtol=1e-9, atol=1e-9, msg=f"{key} at call {step}")
        with torch.no_grad():  # as an optimiser step would: the packed LoRA columns must follow
            for name, p in mlp.named_parameters():
                if "lora_" in name:
                    p.add_(torch.randn_like(p) * 0.1)
    assert len(used) == 2
    gate = mlp.gate_proj.base_layer
    gate.weight = torch.nn.Parameter(gate.weight.detach().clone(), requires_grad=False)
    assert fused_mlp_gated.packed(mlp) is None
    ours = outputs_and_grads(fused_mlp.apply_fused_mlp, mlp, X, grad)
    peft = outputs_and_grads(_peft_mlp, mlp, X, grad)
    assert len(used) == 2
    for key in peft:
        torch.testing.assert_close(ours[key], peft[key], rtol=1e-9, atol=1e-9, msg=key)
    assert fused_mlp_gated.unpack(mlp) == 1 and fused_mlp_gated.KEY not in mlp.__dict__


def test_install_swaps_only_unsloths_fused_mlp() -> None:
    """install() takes the layers Unsloth fused (its forward bound to apply_lora_mlp_swiglu), and only those."""
    import types

    from unsloth.kernels import fast_lora

    from train import fused_mlp

    model, mlp = _mlp(16)
    assert fused_mlp.install(model, force=True) == 0  # PEFT's own forward: nothing of Unsloth's to swap
    mlp.forward = types.MethodType(fast_lora.apply_lora_mlp_swiglu, mlp)
    assert fused_mlp.install(model, force=True) == 1
    assert mlp.forward.__func__ is fused_mlp.apply_fused_mlp


def test_fused_mlp_leaves_dropout_to_unsloth(monkeypatch: pytest.MonkeyPatch) -> None:
    from unsloth.kernels import fast_lora

    from train import fused_mlp

    _, mlp = _mlp(16, dropout=0.1)
    seen = []
    monkeypatch.setattr(fast_lora, "apply_lora_mlp_swiglu", lambda self, X: seen.append(X) or X)
    X = torch.randn(1, 3, 64, dtype=torch.float64)
    assert fused_mlp.apply_fused_mlp(mlp, X) is X and seen == [X]


KERNEL_CHECK = textwrap.dedent("""
    import sys
    import torch
    from train import fused_mlp

    kind = sys.argv[1]

    torch.manual_seed(0)
    T, I, R = 70, 200, 16  # T and I not multiples of any block: the masks and the last partial tiles are exercised
    e0, g0, DW = (torch.randn(T, I) for _ in range(3))
    XA, Bg, Bu, Ad, dYB = torch.randn(T, 2 * R), torch.randn(I, R), torch.randn(I, R), torch.randn(R, I), \\
        torch.randn(T, R)
    args = (XA, Bg, Bu, Ad, 1.5, 0.5)
    got = fused_mlp.swiglu_forward(e0, g0, *args, use_triton=True, kind=kind)
    ref = fused_mlp.swiglu_forward(e0, g0, *args, use_triton=False)
    for name, a, b in zip(("h", "hA"), got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    args = (dYB, Ad, XA, Bg, Bu, 2.0, 1.5, 0.5)
    ref = fused_mlp.swiglu_backward(DW.clone(), e0.clone(), g0.clone(), *args, use_triton=False)
    got = fused_mlp.swiglu_backward(DW.clone(), e0.clone(), g0.clone(), *args, use_triton=True, kind=kind)
    for name, a, b in zip(("h", "d_up", "d_gate", "G"), got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    kept = DW.clone()  # h kept by the forward: the kernel leaves DW alone and gives the same gradients
    got = fused_mlp.swiglu_backward(kept, e0.clone(), g0.clone(), *args, use_triton=True, kind=kind, store_h=False)
    assert got[0] is None and torch.equal(kept, DW)
    for name, a, b in zip(("d_up", "d_gate", "G"), got[1:], ref[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    print("KERNELS OK")
""")


@pytest.mark.parametrize("kind", ["tiles", "rows"])
def test_triton_kernels_match_the_torch_arithmetic_in_the_interpreter(kind: str, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", KERNEL_CHECK, kind], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "KERNELS OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


CHOICE_CHECK = textwrap.dedent("""
    import os
    import torch
    from train import fused_mlp

    torch.manual_seed(0)
    kw = dict(n=200, r=16, dtype=torch.float32, tokens=70, device="cpu", reps=1, check_rows=40)
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] in ("tiles", "rows") and set(choice["ms_per_layer"]) == {"tiles", "rows"}, choice
    assert fused_mlp.design() == choice["design"], choice
    assert choice["left_out"] == {"quack": "timed only with the model's hidden size"}, choice

    class Wrong:  # the row kernels launch, then one output is off by one
        def __init__(self, kernel):
            self.kernel = kernel
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                self.kernel[grid](*args, **kwargs)
                args[2].add_(1.0)
            return launch

    class Broken:  # as a kernel this card's Triton cannot compile
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("PassManager::run failed")
            return launch

    fwd, bwd, tiles = fused_mlp._triton_kernels("rows")
    tile_kernels = fused_mlp._triton_kernels("tiles")
    fused_mlp._CACHE["kernels-rows"] = (Wrong(fwd), bwd, tiles)
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] == "tiles" and "differs from the torch arithmetic" in choice["left_out"]["rows"], choice
    fused_mlp._CACHE["kernels-rows"] = (Broken(), bwd, tiles)
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] == "tiles" and "PassManager" in choice["left_out"]["rows"], choice
    fused_mlp._CACHE["kernels-tiles"] = (Broken(), Broken(), tiles)
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] is None and set(choice["left_out"]) == {"tiles", "rows", "quack"}, choice
    os.environ["FORMA_FUSED_MLP"] = "rows"
    fused_mlp._CACHE["kernels-rows"] = (fwd, bwd, tiles)
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] == "rows" and choice["forced"] == "rows" and list(choice["ms_per_layer"]) == ["rows"]
    fused_mlp.OPTIONS["keep_h"] = True  # the variant that writes no h is the one timed and checked
    choice = fused_mlp.warm_up(**kw)
    assert choice["design"] == "rows" and not choice["left_out"], choice

    # quack: a candidate only with the model's hidden size, a dense base and a card it runs on
    fused_mlp._CACHE["kernels-tiles"] = tile_kernels
    fused_mlp.OPTIONS["keep_h"] = False
    os.environ["FORMA_FUSED_MLP"] = "auto"
    choice = fused_mlp.warm_up(**kw, d=24)
    assert "dense_base" in choice["left_out"]["quack"] and "quack" not in choice["ms_per_layer"], choice
    fused_mlp.OPTIONS["dense_base"] = True
    choice = fused_mlp.warm_up(**kw, d=24)
    assert choice["left_out"]["quack"] == "no CUDA device", choice
    # where it can run, it is timed with its products and checked against the torch arithmetic (on the CPU the
    # products are that arithmetic, so this checks the plumbing: both sides, each design timed with its products)
    fused_mlp.gated.unavailable = lambda device=None: None
    choice = fused_mlp.warm_up(**kw, d=24)
    assert set(choice["ms_per_layer"]) == {"tiles", "rows", "quack"} and not choice["left_out"], choice
    right = fused_mlp.gated.gated

    def off_by_one(A, B, pre, h, use_quack=None):
        right(A, B, pre, h, use_quack)
        if use_quack is None:  # the design's side, not the reference's
            h.add_(1.0)

    fused_mlp.gated.gated = off_by_one
    choice = fused_mlp.warm_up(**kw, d=24)
    assert "differs from the torch arithmetic" in choice["left_out"]["quack"], choice
    fused_mlp.gated.gated = right
    os.environ["FORMA_FUSED_MLP"] = "quack"
    choice = fused_mlp.warm_up(**kw, d=24)
    assert choice["design"] == "quack" and list(choice["ms_per_layer"]) == ["quack"], choice
    fused_mlp.OPTIONS["dense_base"] = False
    choice = fused_mlp.warm_up(**kw, d=24)
    assert choice["design"] is None and "dense_base" in choice["left_out"]["quack"], choice
    print("CHOICE OK")
""")


def test_quack_tiles_are_timed_checked_and_the_fastest_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of the quack design's products gets the fastest tile that runs and agrees with the default: a tile that
    raises or is off is left out with the reason. On the CPU the products are the torch arithmetic, so this checks
    the choosing; the tiles' own arithmetic is checked on the card by the same code."""
    from common.errors import FormaError
    from train import fused_mlp_gated as gq

    n, d, r, T = 64, 24, 16, 40
    g = torch.Generator().manual_seed(0)
    W = [torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(d, n, generator=g)]
    t = {"X": torch.randn(T, d, generator=g), "dY": torch.randn(T, d, generator=g),
         "XA": torch.randn(T, 2 * r, generator=g), "dYB": torch.randn(T, r, generator=g),
         "Bg": torch.randn(n, r, generator=g), "Bu": torch.randn(n, r, generator=g),
         "Ad": torch.randn(r, n, generator=g), "packed": gq.packed_weights(*W, r)}
    tile = {"tile_m": 128, "tile_n": 128, "pingpong": True, "cluster_m": 1, "cluster_n": 1}
    name = "128x128 pingpong cluster 1x1"
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps({"gated": [tile], "down": [tile], "dgrad": [tile]}))
    # without the variable: the default first, then the tiles measured on the H200
    monkeypatch.delenv("FORMA_QUACK_TILES", raising=False)
    assert gq.tile_candidates() == {p: [None, *gq.MEASURED[p]] for p in gq.PRODUCTS}
    assert gq.tile_name(gq.MEASURED["dgated"][0], "dgated") == "128x160 pingpong cluster 2x1 swap"
    monkeypatch.setenv("FORMA_QUACK_TILES", str(path))
    monkeypatch.setattr(gq, "MEASURED", {p: [] for p in gq.PRODUCTS})  # only the file's tiles, below
    monkeypatch.setattr(gq, "TILES", dict.fromkeys(gq.PRODUCTS))
    right_gated, right_product = gq.gated, gq.product

    def gated(A: Any, B: Any, pre: Any, h: Any, use_quack: bool | None = None) -> None:
        if gq.TILES["gated"] is not None:
            raise RuntimeError("smem overflow")
        right_gated(A, B, pre, h, use_quack)

    def product(which: str, A: Any, B: Any, use_quack: bool | None = None) -> Any:
        out = right_product(which, A, B, use_quack)
        return out * 2 if which == "down" and gq.TILES["down"] is not None else out

    monkeypatch.setattr(gq, "gated", gated)
    monkeypatch.setattr(gq, "product", product)
    found = gq.tune(t, reps=2)
    assert list(found) == list(gq.PRODUCTS), found
    assert found["gated"]["tile"] == "quack default" and gq.TILES["gated"] is None
    assert found["gated"]["left_out"] == {name: "RuntimeError: smem overflow"}, found
    assert found["down"]["tile"] == "cuBLAS" and "differs from the default" in found["down"]["left_out"][name]
    assert set(found["dgrad"]["ms"]) == {"cuBLAS", name} and not found["dgrad"]["left_out"], found
    kept = found["dgrad"]["tile"]
    assert gq.TILES["dgrad"] == (tile if kept == name else None) and \
        found["dgrad"]["ms"][kept] == min(found["dgrad"]["ms"].values()), found
    assert list(found["dgated"]["ms"]) == ["quack default"], found
    # where the default itself does not run, no other tile is tried (nothing to check it against)
    path.write_text(json.dumps({"dgated": [tile]}))

    def dgated(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(gq, "dgated", dgated)
    found = gq.tune(t, reps=1)["dgated"]
    assert found["tile"] == "quack default" and not found["ms"] and gq.TILES["dgated"] is None, found
    assert found["left_out"] == {"quack default": "RuntimeError: no kernel image",
                                 name: "not tried: the default did not run, so there is nothing to check it against"}
    # 'default' tries the default only; a file that cannot be read is an error naming it
    monkeypatch.setenv("FORMA_QUACK_TILES", "default")
    assert gq.tile_candidates() == {p: [None] for p in gq.PRODUCTS}
    for text in ("{not json", '{"gated": [1]}', '{"gated": 5}', "[]"):
        path.write_text(text)
        monkeypatch.setenv("FORMA_QUACK_TILES", str(path))
        with pytest.raises(FormaError, match=r"tiles\.json"):
            gq.tile_candidates()
    monkeypatch.setenv("FORMA_QUACK_TILES", str(tmp_path / "missing.json"))
    with pytest.raises(FormaError, match=r"missing\.json"):
        gq.tile_candidates()


def test_warm_up_times_both_designs_and_leaves_out_one_that_is_wrong_or_fails(tmp_path: Path) -> None:
    """The design is chosen on the card: each is checked against the torch arithmetic and timed; a design whose
    output is off, or whose kernel does not compile, is left out with the reason; with none left, none is used."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("FORMA_FUSED_MLP", None)
    proc = subprocess.run([sys.executable, "-c", CHOICE_CHECK], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0 and "CHOICE OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def _candidates() -> list[tuple[str, tuple[int, int, int, int]]]:
    kernels = importlib.import_module("train.fused_mlp_kernels")
    measured = {(bm, bn, w) for bm, bn, w in kernels.TILES_MEASURED}
    return [(kind, (c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages))
            for kind, configs in (("tiles", kernels.CONFIGS), ("rows", kernels.CONFIGS_ROWS)) for c in configs
            if (c.kwargs["BM"], c.kwargs["BN"], c.num_warps) not in measured]


@pytest.mark.parametrize("kind,tile", _candidates() if importlib.util.find_spec("triton") else [])
def test_candidate_tiles_compile_for_the_h200_without_spilling_registers(kind: str, tile: tuple[int, ...]) -> None:
    """Every tile the autotuner may pick (but the measured ones kept for comparison) compiles for sm_90 with no
    stack a thread: spilled registers would turn a memory-speed kernel into a slower one (the first tiles did)."""
    from tests.helpers.triton_aot import resources, tool
    from train import fused_mlp_kernels as k

    if not tool("ptxas").is_file() or not tool("cuobjdump").is_file():
        pytest.skip("this Triton wheel has no NVIDIA tools")
    bm, bn, warps, stages = tile
    fwd, bwd = (k.lora_swiglu_fwd_rows, k.lora_swiglu_bwd_rows) if kind == "rows" else \
        (k.lora_swiglu_fwd, k.lora_swiglu_bwd)
    for fn in (fwd, bwd):
        used = resources(fn, {"R": 16, "BM": bm, "BN": bn, **({"STORE_H": True} if fn is bwd else {})}, warps,
                         stages, ints={"T", "N", "stride_xa"},
                         floats={"SG", "SU", "SD"})
        assert used["stack"] == 0, (fn.__name__, tile, used)
