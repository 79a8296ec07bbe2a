"""A LoRA SwiGLU MLP whose low-rank terms are added inside the SwiGLU kernels instead of as passes of their own.

Why this exists: Unsloth's fused LoRA MLP (2026.10) adds each LoRA term to its projection's output with an ``addmm_``
epilogue. For the gate and up projections (and the gradient of the down projection's input) that output is a
tokens x 11,008 matrix, so each LoRA term costs a read and a write of ~0.7 GB a layer: on the H200 profile in
docs/train.md, ~60 ms of a ~0.89 s step (the "addmm_ [T, 11008] += [T, 16] @ [16, 11008]" rows). Those matrices are
read by the SwiGLU kernel right after anyway, so here the kernel adds the rank-16 products itself (one small
tensor-core product per tile) and the base projections run as plain matrix products:

* forward: ``h = silu(e0 + s_g (X A_g^T) B_g^T) * (g0 + s_u (X A_u^T) B_u^T)`` with ``e0 = X W_g^T``, ``g0 = X W_u^T``;
* backward: the gradient of ``h`` is ``dY W_d + s_d (dY B_d) A_d``; the kernel adds the second term itself, rebuilds
  ``e`` and ``g`` from ``e0``, ``g0`` and the saved rank-16 products, and writes ``h`` and the gradients of the
  gate and up outputs over the buffers it read (as Unsloth's kernel does).

The rounding follows Unsloth's kernels (``e``, ``g``, ``silu(e)`` and the gradients in the compute dtype, the
arithmetic in float32), so the loss curve is Unsloth's within bf16 noise. It also reads X once for both A products
(their A matrices stacked) and keeps ``h A_d^T`` from the forward instead of recomputing it.

Two kernel designs (train/fused_mlp_kernels.py): ``tiles``, timed on the H200 (docs/train.md), and ``rows``, which
also folds ``h A_d^T`` and ``d_gate B_g``, ``d_up B_u`` into the kernels and so reads a tokens x 11,008 matrix three
times fewer a layer (checked on the CPU, not yet timed on a GPU by us). :func:`warm_up` picks one at load time on
the card itself: each is checked against the torch arithmetic and timed, and the faster that agrees runs (the
training report's ``fused_mlp`` says which, with the times). ``FORMA_FUSED_MLP=tiles`` or ``rows`` forces one.

A third design, ``quack`` (train/fused_mlp_gated.py), runs SwiGLU and its backward as the epilogue of CUTLASS
products from quack-kernels, with the LoRA terms as more columns of K. It is a candidate where the frozen base is
kept dense (``OPTIONS["dense_base"]``, from the memory plan) on a Hopper card with quack installed; the warm-up then
times every design with the matrix products it needs, so that the kernel designs and the product design are timed
on the same work. ``FORMA_FUSED_MLP=quack`` forces it (where it cannot run, Unsloth's MLP is kept, and the report
says why).

It runs where Unsloth's own fused MLP runs and the LoRA is plain (one adapter, no dropout, no LoRA bias, a rank
that is a multiple of 16 for the tensor-core product), on CUDA; anything else keeps Unsloth's path. Off with
``FORMA_FUSED_MLP=0``. ``tests/test_fused_mlp.py`` checks the Function against PEFT's path on the CPU in float64
(with a torch version of the kernels) and the Triton kernels against that version in Triton's interpreter;
``bench/probe/fused_mlp_check.py`` checks both on the GPU. The kernels are in train/fused_mlp_kernels.py.
"""

from __future__ import annotations

import os
import types
from typing import Any

from common.errors import FormaError
from train import OFF, lora_guard
from train import fused_mlp_gated as gated
from train.kernel_checks import max_rel_diff, timed_ms

#: FORMA_FUSED_MLP values: off, on (the design chosen at load), or a design forced.
ON = ("", "1", "true", "yes", "on", "auto")
DESIGNS = ("tiles", "rows", "quack")
#: The designs whose SwiGLU kernel is Forma's own (Triton), after cuBLAS products.
KERNEL_DESIGNS = ("tiles", "rows")
#: What :func:`warm_up` found on this card: the design chosen, each design's forward + backward milliseconds a layer
#: at the warm-up's token count, and why a design was left out (it did not compile or disagreed with torch).
CHOICE: dict[str, Any] = {}
#: Set by ``forma train`` from the memory plan: ``keep_h`` keeps each layer's SwiGLU output h from the forward for
#: the backward (tokens x 11,008 bf16 a layer: ~24 GiB for Qwen2.5-3B at 32,768 tokens), so the backward kernel
#: writes one matrix less; only where the plan has room for it (train/memory_plan.py). ``dense_base``: the plan keeps
#: the frozen base dense (train/dense_base.py), which the ``quack`` design needs.
OPTIONS: dict[str, Any] = {"keep_h": False, "dense_base": False}
_CACHE: dict[str, Any] = {}


def setting() -> str:
    """``FORMA_FUSED_MLP`` read: ``off``, ``auto`` (the default: the design is timed at load), or a design named.
    Anything else is an error naming the variable (a typo such as ``row`` would otherwise quietly mean ``auto``)."""
    value = os.environ.get("FORMA_FUSED_MLP", "auto").strip().lower()
    if value in OFF:
        return "off"
    if value in ON:
        return "auto"
    if value in DESIGNS:
        return value
    raise FormaError(f"FORMA_FUSED_MLP={value!r} is not a setting of the fused LoRA MLP", where="FORMA_FUSED_MLP",
                     hint="use 0 (off), auto (the default), tiles, rows or quack")


def forced_design() -> str | None:
    """The design ``FORMA_FUSED_MLP`` forces (``tiles``, ``rows`` or ``quack``), else None (``auto``: timed at
    load)."""
    value = setting()
    return value if value in DESIGNS else None


def design() -> str:
    """The design in use: the forced one, else what :func:`warm_up` chose, else ``tiles``."""
    return forced_design() or CHOICE.get("design") or "tiles"


def kernel_design() -> str:
    """The SwiGLU kernel design the cuBLAS-product Function runs: :func:`design`, or ``tiles`` where that is
    ``quack`` (a layer whose weights could not be packed for quack's products runs the tile kernels)."""
    kind = design()
    return kind if kind in KERNEL_DESIGNS else "tiles"


def _triton_kernels(kind: str) -> tuple[Any, Any, dict[str, int]]:
    """The forward and backward Triton kernels of design ``kind`` (compiled on first use), and the tile sizes to
    pass them under Triton's interpreter (elsewhere the autotuner picks them)."""
    key = f"kernels-{kind}"
    if key in _CACHE:
        return _CACHE[key]  # type: ignore[no-any-return]
    from train import fused_mlp_kernels as k

    fwd, bwd = (k.lora_swiglu_fwd_rows, k.lora_swiglu_bwd_rows) if kind == "rows" else \
        (k.lora_swiglu_fwd, k.lora_swiglu_bwd)
    if os.environ.get("TRITON_INTERPRET") == "1":  # the tests: no GPU to time configs on, one small tile
        _CACHE[key] = (fwd, bwd, {"BM": 32, "BN": 64})
    else:  # tuned once per (N, R); the backward writes over its inputs, so tuning restores them between tries
        import triton

        configs = k.CONFIGS_ROWS if kind == "rows" else k.CONFIGS
        _CACHE[key] = (triton.autotune(configs=configs, key=["N", "R"])(fwd),
                       triton.autotune(configs=configs, key=["N", "R", "STORE_H"],
                                       restore_value=["DW", "E0", "G0"])(bwd), {})
    return _CACHE[key]  # type: ignore[no-any-return]


def _use_triton(t: Any, use_triton: bool | None) -> bool:
    """The Triton kernels on CUDA (or under Triton's interpreter, in the tests), else the torch arithmetic."""
    if use_triton is not None:
        return use_triton
    return bool(t.is_cuda) or os.environ.get("TRITON_INTERPRET") == "1"


def _grid(T: int, N: int, kind: str) -> Any:
    import triton

    if kind == "rows":
        return lambda meta: (triton.cdiv(T, meta["BM"]),)
    return lambda meta: (triton.cdiv(T, meta["BM"]), triton.cdiv(N, meta["BN"]))


def swiglu_forward(e0: Any, g0: Any, XA: Any, Bg: Any, Bu: Any, Ad: Any, sg: float, su: float,
                   use_triton: bool | None = None, kind: str | None = None) -> tuple[Any, Any]:
    """``(h, h Ad^T)`` with ``h = silu(e) * g``, ``e = e0 + sg XA[:, :r] Bg^T``, ``g = g0 + su XA[:, r:] Bu^T``
    (e0, g0: [T, N]; Ad: [r, N]). ``use_triton`` None: a kernel on CUDA, the torch arithmetic elsewhere; ``kind``
    None: the design ``FORMA_FUSED_MLP`` names."""
    import torch

    r = Bg.shape[1]
    if _use_triton(e0, use_triton):
        kind = kind or kernel_design()
        fwd, _, tiles = _triton_kernels(kind)
        T, N = e0.shape
        h = torch.empty_like(e0)
        if kind == "rows":
            hA = torch.empty(T, r, device=e0.device, dtype=e0.dtype)
            fwd[_grid(T, N, kind)](e0, g0, h, hA, XA, Bg, Bu, Ad, T, N, XA.stride(0), float(sg), float(su), R=r,
                                   **tiles)
            return h, hA
        fwd[_grid(T, N, kind)](e0, g0, h, XA, Bg, Bu, T, N, XA.stride(0), float(sg), float(su), R=r, **tiles)
        return h, h @ Ad.t()
    dtype = e0.dtype
    acc = torch.promote_types(dtype, torch.float32)  # the kernel's float32 arithmetic (float64 stays float64)
    e = (e0.to(acc) + sg * (XA[:, :r].to(acc) @ Bg.to(acc).t())).to(dtype).to(acc)
    g = (g0.to(acc) + su * (XA[:, r:].to(acc) @ Bu.to(acc).t())).to(dtype)
    h = (e * torch.sigmoid(e)).to(dtype) * g
    return h, (h.to(acc) @ Ad.to(acc).t()).to(dtype)


def swiglu_backward(DW: Any, e0: Any, g0: Any, dYB: Any, Ad: Any, XA: Any, Bg: Any, Bu: Any,
                    sd: float, sg: float, su: float, use_triton: bool | None = None,
                    kind: str | None = None, store_h: bool = True) -> tuple[Any, Any, Any, Any]:
    """``(h, d_up, d_gate, G)``, the first three written over ``(DW, e0, g0)``: the gradient of h is
    ``DW + sd dYB Ad``, and ``G = [sg d_gate Bg, su d_up Bu]`` ([T, 2r], what the A gradients and dX need).

    ``store_h`` False: h is not written (None is returned for it; the forward kept h) and DW is left as it was."""
    import torch

    r = Bg.shape[1]
    if _use_triton(DW, use_triton):
        kind = kind or kernel_design()
        _, bwd, tiles = _triton_kernels(kind)
        T, N = DW.shape
        scales = (float(sd), float(sg), float(su))
        h = DW if store_h else None
        if kind == "rows":
            G = torch.empty(T, 2 * r, device=DW.device, dtype=DW.dtype)
            bwd[_grid(T, N, kind)](DW, e0, g0, G, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), *scales, R=r,
                                   STORE_H=store_h, **tiles)
            return h, e0, g0, G
        bwd[_grid(T, N, kind)](DW, e0, g0, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), *scales, R=r,
                               STORE_H=store_h, **tiles)
        G = torch.cat([g0 @ Bg, e0 @ Bu], dim=1)  # e0, g0 now hold d_up, d_gate
        G[:, :r].mul_(sg)
        G[:, r:].mul_(su)
        return h, e0, g0, G
    dtype = DW.dtype
    acc = torch.promote_types(dtype, torch.float32)
    dw = (DW.to(acc) + sd * (dYB.to(acc) @ Ad.to(acc))).to(dtype)
    e = (e0.to(acc) + sg * (XA[:, :r].to(acc) @ Bg.to(acc).t())).to(dtype).to(acc)
    g = (g0.to(acc) + su * (XA[:, r:].to(acc) @ Bu.to(acc).t())).to(dtype)
    se = torch.sigmoid(e)
    f = (se * e).to(dtype)
    d_up = dw * f
    d_gate = ((dw * g).to(acc) * se * (1.0 + e * (1.0 - se))).to(dtype)
    G = torch.cat([sg * (d_gate.to(acc) @ Bg.to(acc)), su * (d_up.to(acc) @ Bu.to(acc))], dim=1).to(dtype)
    if store_h:
        DW.copy_(f * g)
    e0.copy_(d_up)
    g0.copy_(d_gate)
    return (DW if store_h else None), e0, g0, G


def _mlp_function() -> Any:
    """The autograd Function, built on first use so importing this module imports neither torch nor Unsloth."""
    import torch
    from unsloth.kernels.utils import fast_dequantize, torch_amp_custom_bwd, torch_amp_custom_fwd

    def scaled(t: Any, s: float) -> Any:
        return t if s == 1 else t.mul_(s)

    class LoRASwiGLU(torch.autograd.Function):
        """out = swiglu(X Wg^T + sg X Ag^T Bg^T, X Wu^T + su X Au^T Bu^T) Wd^T + sd (h Ad^T) Bd^T."""

        @staticmethod
        @torch_amp_custom_fwd
        def forward(ctx: Any, X: Any, Wg: Any, Qg: Any, Ag: Any, Bg: Any, Wu: Any, Qu: Any, Au: Any, Bu: Any,
                    Wd: Any, Qd: Any, Ad: Any, Bd: Any, scales: tuple[float, float, float]) -> Any:
            dtype = X.dtype
            sg, su, sd = scales
            X2 = X.reshape(-1, X.shape[-1])
            A_gu = torch.cat([Ag, Au]).to(dtype)
            XA = X2 @ A_gu.t()  # [T, 2r]: one read of X for both A products
            W = fast_dequantize(Wg, Qg, dtype=dtype)
            e0 = X2 @ W.t()
            W = fast_dequantize(Wu, Qu, dtype=dtype)
            g0 = X2 @ W.t()
            del W
            Bg_, Bu_, Ad_, Bd_ = (t.to(dtype).contiguous() for t in (Bg, Bu, Ad, Bd))
            h, hA = swiglu_forward(e0, g0, XA, Bg_, Bu_, Ad_, sg, su)  # hA [T, r] kept for Bd's gradient
            W = fast_dequantize(Wd, Qd, dtype=dtype)
            out = h @ W.t()
            del W
            out.addmm_(hA, Bd_.t(), alpha=sd)
            ctx.weights = (Wg, Qg, Wu, Qu, Wd, Qd)
            ctx.scales = scales
            kept = (h,) if OPTIONS["keep_h"] else ()  # else the backward kernel rebuilds h
            ctx.save_for_backward(X, e0, g0, XA, hA, A_gu, Bg_, Bu_, Ad_, Bd_, *kept)
            return out.view(*X.shape[:-1], out.shape[-1])

        @staticmethod
        @torch_amp_custom_bwd
        def backward(ctx: Any, dY: Any) -> Any:
            X, e0, g0, XA, hA, A_gu, Bg, Bu, Ad, Bd, *kept = ctx.saved_tensors
            Wg, Qg, Wu, Qu, Wd, Qd = ctx.weights
            sg, su, sd = ctx.scales
            dtype = X.dtype
            r = Bg.shape[1]
            X2 = X.reshape(-1, X.shape[-1])
            dY2 = dY.reshape(-1, dY.shape[-1]).to(dtype)
            dYB = dY2 @ Bd  # [T, r]
            W = fast_dequantize(Wd, Qd, dtype=dtype)
            DW = dY2 @ W  # the base part of h's gradient; the kernel adds sd dYB Ad
            del W
            h, d_up, d_gate, G = swiglu_backward(DW, e0, g0, dYB, Ad, XA, Bg, Bu, sd, sg, su,  # G [T, 2r]
                                                 store_h=not kept)
            h = kept[0] if kept else h
            dAd = scaled(dYB.t() @ h, sd)  # [r, N]
            dBd = scaled(dY2.t() @ hA, sd)  # [out, r]
            del h, kept
            dBg = scaled(d_gate.t() @ XA[:, :r], sg)
            dBu = scaled(d_up.t() @ XA[:, r:], su)
            dA = G.t() @ X2  # [2r, in]: one read of X for both A gradients
            dX = G @ A_gu
            W = fast_dequantize(Wg, Qg, dtype=dtype)
            dX.addmm_(d_gate, W)
            W = fast_dequantize(Wu, Qu, dtype=dtype)
            dX.addmm_(d_up, W)
            del W
            return (dX.view(X.shape), None, None, dA[:r], dBg, None, None, dA[r:], dBu, None, None, dAd, dBd, None)

    return LoRASwiGLU


def apply_fused_mlp(self: Any, X: Any) -> Any:
    """The MLP forward hook: the fused Function where the LoRA is plain, else Unsloth's own fused MLP."""
    lora = lora_guard.fast_lora("apply_lora_mlp_swiglu")
    params = lora_guard.plain_lora((self.gate_proj, self.up_proj, self.down_proj), X, rank_multiple=16)
    if params is None:  # rank 16, 32, ...: the kernels' tensor-core product takes 16 at a time
        return lora.apply_lora_mlp_swiglu(self, X)
    if "function" not in _CACHE:
        _CACHE["function"] = _mlp_function()
    (Wg, Qg, Ag, Bg, Sg), (Wu, Qu, Au, Bu, Su), (Wd, Qd, Ad, Bd, Sd) = params
    scales = (float(Sg), float(Su), float(Sd))
    buffers = gated.packed(self) if design() == "quack" else None
    if buffers is not None:  # the base weights are views of the buffers quack's products read
        return lora._apply(gated.function(), X, *buffers, Ag, Bg, Au, Bu, Ad, Bd, scales)
    return lora._apply(_CACHE["function"], X, Wg, Qg, Ag, Bg, Wu, Qu, Au, Bu, Wd, Qd, Ad, Bd, scales)


def _time_design(kind: str, tensors: dict[str, Any], reps: int) -> float:
    """Forward + backward milliseconds of design ``kind`` on ``tensors`` (after one call that compiles and tunes).
    With the model's weights in ``tensors`` (``X``...), each design is timed with the matrix products it needs."""
    import torch

    t = tensors
    cuda = t["e0"].is_cuda
    store_h = not OPTIONS["keep_h"]  # the variant training will run, tuned here

    def once() -> None:
        if kind == "quack":  # its products carry the SwiGLU (and the LoRA terms, as more columns of K)
            _quack_pass(t)
            return
        if "X" in t:  # the cuBLAS products the kernel designs need, so that all designs time the same work
            torch.mm(t["X"], t["Wg"].t(), out=t["e0"])
            torch.mm(t["X"], t["Wu"].t(), out=t["g0"])
            torch.mm(t["dY"], t["Wd"], out=t["dw"])
        swiglu_forward(t["e0"], t["g0"], t["XA"], t["Bg"], t["Bu"], t["Ad"], 1.0, 1.0, kind=kind)
        swiglu_backward(t["dw"], t["e0"], t["g0"], t["dYB"], t["Ad"], t["XA"], t["Bg"], t["Bu"], 1.0, 1.0, 1.0,
                        kind=kind, store_h=store_h)

    once()
    return timed_ms(once, reps, cuda)


def _quack_pass(t: dict[str, Any], use_quack: bool | None = None) -> tuple[Any, ...]:
    """The ``quack`` design's forward and backward products on ``t`` (as the Function runs them, LoRA columns
    refreshed): ``(pre, h, dx, h from the backward)``."""
    runs = gated.product_runs(t, use_quack)
    return (*runs["gated"](), *runs["dgated"]())


def _check_design(kind: str, t: dict[str, Any]) -> float:
    """Largest relative difference between design ``kind`` and the torch arithmetic on ``t`` (left as it was), in
    the backward variant training will run (with or without h written)."""
    if kind == "quack":
        return max_rel_diff(_quack_pass(t), _quack_pass(t, use_quack=False))
    fwd = (t["e0"], t["g0"], t["XA"], t["Bg"], t["Bu"], t["Ad"], 1.0, 1.0)
    diff = max_rel_diff(swiglu_forward(*fwd, kind=kind), swiglu_forward(*fwd, use_triton=False))
    bwd = (t["dYB"], t["Ad"], t["XA"], t["Bg"], t["Bu"], 1.0, 1.0, 1.0)
    store_h = not OPTIONS["keep_h"]
    got = swiglu_backward(t["dw"].clone(), t["e0"].clone(), t["g0"].clone(), *bwd, kind=kind, store_h=store_h)
    ref = swiglu_backward(t["dw"].clone(), t["e0"].clone(), t["g0"].clone(), *bwd, use_triton=False,
                          store_h=store_h)
    start = 0 if store_h else 1  # without h written, the first output is None on both sides
    return max(diff, max_rel_diff(got[start:], ref[start:]))


def candidates(d: int, device: str) -> tuple[list[str], dict[str, str]]:
    """The designs the warm-up tries, and why any is left out before trying: ``quack`` needs the model's hidden
    size ``d`` (its products are timed with the weights), a dense base (``OPTIONS``) and a Hopper card with quack
    (:func:`train.fused_mlp_gated.unavailable`)."""
    forced = forced_design()
    kinds = [forced] if forced else list(DESIGNS)
    left_out: dict[str, str] = {}
    if "quack" in kinds:
        why = ("timed only with the model's hidden size" if not d else
               "needs the frozen base kept dense (the memory plan's dense_base)" if not OPTIONS["dense_base"] else
               gated.unavailable(None if device == "cpu" else device))
        if why:
            kinds.remove("quack")
            left_out["quack"] = why
    return kinds, left_out


def warm_up(n: int, r: int, dtype: Any, tokens: int = 8192, device: str = "cuda", reps: int = 3,
            check_rows: int = 1024, tolerance: float = 2e-2, d: int = 0) -> dict[str, Any]:
    """Compile and tune the kernels for an MLP of width ``n`` and LoRA rank ``r`` on ``tokens`` random tokens, and
    choose the design: each one is checked against the torch arithmetic (on ``check_rows`` tokens; a difference
    past ``tolerance`` of the largest value, a few bf16 steps, leaves it out) and timed (forward + backward); the
    fastest that passes is used. Returns (and keeps in :data:`CHOICE`) what it found; ``design`` is None when no
    design compiled and agreed, and the caller then keeps Unsloth's own MLP.

    Why here: tuning the backward kernel copies its three in-place operands to restore them between tries; done at
    the first training step that is three tokens x width matrices (~2 GB for 16 packed rows of Qwen2.5-3B) on top of
    the step's own peak. Done before training, the copies are ``tokens`` rows and gone before the step begins. The
    chosen tile depends on the width and rank only (the autotuner's key), so it carries over. Why time the designs
    on the card: the row design reads less memory but does more per program, and which wins depends on the card.

    Where ``quack`` is a candidate (:func:`candidates`: it needs ``d``, the model's hidden size, among others)
    every design is timed with the matrix products it needs (``quack`` runs them with SwiGLU in their epilogue;
    the others leave them to cuBLAS); elsewhere only the kernel designs are timed.
    """
    import torch

    dev = {"device": device, "dtype": dtype}
    tensors: dict[str, Any] = {
        "e0": torch.randn(tokens, n, **dev), "g0": torch.randn(tokens, n, **dev), "dw": torch.randn(tokens, n, **dev),
        "XA": torch.randn(tokens, 2 * r, **dev), "dYB": torch.randn(tokens, r, **dev),
        "Bg": torch.randn(n, r, **dev) * 0.05, "Bu": torch.randn(n, r, **dev) * 0.05,
        "Ad": torch.randn(r, n, **dev) * 0.05}
    kinds, left_out = candidates(d, device)
    if "quack" in kinds:  # only then are the products timed: elsewhere (a small card) they cost load time and memory
        tensors.update({"X": torch.randn(tokens, d, **dev), "dY": torch.randn(tokens, d, **dev),
                        "Wg": torch.randn(n, d, **dev) * d ** -0.5, "Wu": torch.randn(n, d, **dev) * d ** -0.5,
                        "Wd": torch.randn(d, n, **dev) * n ** -0.5})
        tensors["packed"] = gated.packed_weights(tensors["Wg"], tensors["Wu"], tensors["Wd"], r)
    # the check's tokens, copied before the timing's backward passes write over the tensors
    rows = ("e0", "g0", "dw", "XA", "dYB", "X", "dY")
    sample = {k: (v[:check_rows].clone() if k in rows else v) for k, v in tensors.items()}
    tiles: dict[str, Any] = {}
    if "quack" in kinds and device == "cuda":  # each product's tile, before the design is timed with them
        tiles = gated.tune(tensors)
    ms: dict[str, float] = {}
    for kind in kinds:
        try:  # timed first: the first call tunes the tiles, and they should suit `tokens`, not the check's rows
            took = _time_design(kind, tensors, reps)
            diff = _check_design(kind, sample)
            if not diff < tolerance:  # NaN counts as a disagreement too
                left_out[kind] = f"differs from the torch arithmetic by {diff:.2e} of the largest value"
                continue
            ms[kind] = round(took, 4)
        except Exception as exc:  # a kernel this card cannot compile or run: another design may
            left_out[kind] = f"{type(exc).__name__}: {str(exc)[:300]}"
    del tensors, sample
    if device == "cuda":
        torch.cuda.empty_cache()
    CHOICE.clear()
    CHOICE.update({"design": min(ms, key=ms.__getitem__) if ms else None, "forced": forced_design(),
                   "ms_per_layer": ms, "tokens": tokens, "left_out": left_out})
    if tiles:
        CHOICE["quack_tiles"] = tiles
    return dict(CHOICE)


def _adapter(proj: Any) -> str:
    """The active adapter's name on a PEFT LoRA layer (``default`` where it names none)."""
    return str(next(iter(getattr(proj, "active_adapters", None) or ["default"])))


def install(model: Any, *, force: bool = False, dtype: Any = None, tokens: int = 8192) -> int:
    """Swap Unsloth's fused LoRA SwiGLU MLP for this one in every layer that has it; the count swapped.

    Only on CUDA (the kernels are Triton's) unless ``force`` (the tests, under Triton's interpreter). With ``dtype``
    (the compute dtype) the kernels are compiled, tuned and the design chosen first (:func:`warm_up`, on ``tokens``
    tokens: best the step's own micro-batch, as the tiles that suit it depend on it); when no design works on this
    card, nothing is swapped.
    """
    if setting() == "off":
        return 0
    fast_lora = lora_guard.fast_lora("apply_lora_mlp_swiglu")
    if fast_lora is None:  # no Unsloth, or another one: keep its own path
        return 0
    import torch

    if not force and not torch.cuda.is_available():
        return 0
    targets = [module for module in model.modules()
               if getattr(module.__dict__.get("forward"), "__func__", None) is fast_lora.apply_lora_mlp_swiglu]
    if targets and dtype is not None and torch.cuda.is_available():
        gate = targets[0].gate_proj
        name = _adapter(gate)
        shape = gate.lora_B[name].weight.shape if name in gate.lora_B else None
        d = int(getattr(gate, "in_features", 0) or 0)
        if shape is not None and shape[1] % 16 == 0 and \
                warm_up(shape[0], shape[1], dtype, tokens, d=d)["design"] is None:
            return 0
    for module in targets:
        module.forward = types.MethodType(apply_fused_mlp, module)
    return len(targets)


def pack(model: Any) -> int:
    """Where the warm-up chose ``quack``: pack the dense base weights of every fused MLP for quack's products
    (train/fused_mlp_gated.py); the count packed. Run after train/dense_base.py made the base dense; a layer whose
    weights are still quantised keeps the tile kernels."""
    if design() != "quack":
        return 0
    count = 0
    for module in model.modules():
        if getattr(module.__dict__.get("forward"), "__func__", None) is not apply_fused_mlp:
            continue
        gate, name = module.gate_proj, _adapter(module.gate_proj)
        if name in gate.lora_A and gated.pack(module, gate.lora_A[name].weight.shape[0]):
            count += 1
    CHOICE["packed_layers"] = count
    return count
