"""The fused LoRA MLP's ``quack`` design: SwiGLU (and its backward) as the epilogue of the products that feed it.

Why this exists: the ``tiles`` and ``rows`` designs (train/fused_mlp.py) run the three base products with cuBLAS and
SwiGLU in a kernel of its own, which reads back the tokens x 11,008 matrices the products have just written (twice
in the forward, once in the backward: ~0.7 GB each a layer). quack-kernels (BSD-3-Clause, Tri Dao; FlashAttention-4
depends on it, and bench/pack_fa4.sh carries it) has Hopper products written in CUTLASS's CuTe DSL, warp-specialised,
persistent and fed through TMA, whose epilogue runs the gated activation (``gemm_gated``) or its backward
(``gemm_dgated``). On the H200 at one layer of Qwen2.5-3B at 32,768 tokens they measured 4.53 ms against 5.09 for
the forward and 3.03 against 3.39 for the backward (bench/results/quack_gated_check-h200-2026-12-03.log). A Triton
version of the same idea (2026-12-03, docs/train.md) lost in the forward: Triton's main loop stayed under cuBLAS.

What the products need, and how forma gives it to them:

* ``gemm_gated`` reads the gate and up weights as one matrix with their rows interleaved (gate 0, up 0, gate 1,
  ...) and writes the pre-activation interleaved the same way. So each MLP's dense gate and up weights move into one
  buffer ``gu`` [N, 2, D + 2r] (:func:`pack`); the base layers' weights become views of it, so no memory is added
  but the LoRA columns.
* The rank-16 LoRA terms ride in the same product as 2r more columns of K: the input is ``[X, X A_g^T, X A_u^T]``
  and ``gu``'s last 2r columns hold ``s_g B_g`` (gate rows) and ``s_u B_u`` (up rows), zeros elsewhere. They are
  refreshed from the adapter at each forward (N x 2r numbers), since the optimiser moves B between steps.
* The backward's product is ``dY W_d`` plus ``s_d (dY B_d) A_d``, again as r more columns of K: ``dn`` [N, D + r]
  holds ``W_d^T`` and ``s_d A_d^T``; the down layer's weight is a view of it too.
* ``dn`` also serves the forward's down projection: ``h dn`` gives the output's base part and ``s_d h A_d^T`` (what
  the down LoRA term and its B gradient need) from one read of h.
* The epilogue writes d_gate and d_up interleaved, so one product with ``gu`` gives the input gradient's base part
  and the rank-16 products ``[s_g d_gate B_g, s_u d_up B_u]`` the A gradients need, both at once.

Only where the dense base is kept (train/dense_base.py: a card with room) and on a Hopper card (sm_90, where it was
measured); the check at load (train/fused_mlp.py's warm-up) compares it with the torch arithmetic below and times
it against the other designs with their products. The rounding is not Unsloth's: ``e`` and ``g`` are rounded once,
with their LoRA terms (Unsloth rounds the base product first), and ``h`` comes from the float32 values.
"""

from __future__ import annotations

from typing import Any

#: The attribute of an MLP module that holds its packed weights, ``(gu, dn)``.
KEY = "forma_gated_mlp"
_CACHE: dict[str, Any] = {}


def unavailable(device: Any = None) -> str | None:
    """Why quack's products cannot run here, or None when they can: a Hopper (sm_90) card and quack importable.
    Its Hopper classes are the ones measured; its Blackwell and sm_80 classes have not been run by us."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"quack's products were measured on sm_90 only, this card is sm_{major}{minor}"
    try:
        import quack.gemm_interface  # noqa: F401
    except Exception as exc:  # not installed, or a CUTLASS DSL it does not accept
        return (f"quack-kernels does not import ({type(exc).__name__}: {str(exc)[:200]}); bench/pack_fa4.sh packs "
                "it with FlashAttention-4")
    return None


def _quack(t: Any, use_quack: bool | None) -> bool:
    return bool(t.is_cuda) if use_quack is None else use_quack


def gated(A: Any, B: Any, pre: Any, h: Any, use_quack: bool | None = None) -> None:
    """``pre = A B`` ([T, 2N], gate and up columns interleaved) and ``h = silu(gate) * up`` ([T, N]), written into
    ``pre`` and ``h``. ``use_quack`` None: quack's product on CUDA, the torch arithmetic (float32 or better) else."""
    if _quack(A, use_quack):
        from quack.gemm_interface import gemm_gated_out

        gemm_gated_out(A, B, pre, h, activation="swiglu", tuned=False)
        return
    import torch

    acc = torch.promote_types(A.dtype, torch.float32)
    full = A.to(acc) @ B.to(acc)
    e, g = full[:, 0::2], full[:, 1::2]
    pre.copy_(full)
    h.copy_(e * torch.sigmoid(e) * g)


def dgated(A: Any, B: Any, pre: Any, dx: Any, h: Any, use_quack: bool | None = None) -> None:
    """With ``dh = A B`` ([T, N]) the gradient of ``h = silu(e) * g`` and ``pre`` the interleaved ``(e, g)``: ``dx``
    ([T, 2N], interleaved) gets ``(dh g silu'(e), dh silu(e))`` and ``h`` gets ``silu(e) g``."""
    if _quack(A, use_quack):
        from quack.gemm_interface import gemm_dgated_out

        gemm_dgated_out(A, B, pre, dx, h, activation="swiglu", tuned=False)
        return
    import torch

    acc = torch.promote_types(A.dtype, torch.float32)
    dh = A.to(acc) @ B.to(acc)
    e, g = pre[:, 0::2].to(acc), pre[:, 1::2].to(acc)
    se = torch.sigmoid(e)
    dx[:, 0::2] = dh * g * se * (1.0 + e * (1.0 - se))
    dx[:, 1::2] = dh * e * se
    h.copy_(e * se * g)


def packed_weights(Wg: Any, Wu: Any, Wd: Any, r: int) -> tuple[Any, Any]:
    """``(gu, dn)`` for gate and up weights [N, D] and a down weight [Dout, N], with zero LoRA columns."""
    import torch

    (N, D), Dout = Wg.shape, Wd.shape[0]
    with torch.no_grad():
        gu = torch.zeros(N, 2, D + 2 * r, dtype=Wg.dtype, device=Wg.device)
        gu[:, 0, :D] = Wg
        gu[:, 1, :D] = Wu
        dn = torch.zeros(N, Dout + r, dtype=Wd.dtype, device=Wd.device)
        dn[:, :Dout] = Wd.t()
    return gu, dn


def _bases(mlp: Any) -> tuple[Any, Any, Any]:
    return mlp.gate_proj.base_layer, mlp.up_proj.base_layer, mlp.down_proj.base_layer


def pack(mlp: Any, r: int) -> bool:
    """Move ``mlp``'s dense gate, up and down weights into the buffers the products read (the module docstring),
    leaving the base layers' weights as views of them; False (nothing changed) where a weight is still quantised or
    the shapes are not an MLP's."""
    import torch

    try:
        bases = _bases(mlp)
    except AttributeError:
        return False
    Wg, Wu, Wd = (b.weight for b in bases)
    if any(getattr(w, "quant_state", None) is not None for w in (Wg, Wu, Wd)):
        return False
    (N, D), Dout = Wg.shape, Wd.shape[0]
    if Wu.shape != (N, D) or Wd.shape != (Dout, N):
        return False
    gu, dn = packed_weights(Wg, Wu, Wd, r)
    for base, view in zip(bases, (gu[:, 0, :D], gu[:, 1, :D], dn[:, :Dout].t()), strict=True):
        base.weight = torch.nn.Parameter(view, requires_grad=False)  # the dense copy is freed
    mlp.__dict__[KEY] = (gu, dn)
    return True


def packed(mlp: Any) -> tuple[Any, Any] | None:
    """``mlp``'s packed ``(gu, dn)`` while its base weights are still views of them (train/dense_base.py's
    ``restore`` puts the 4-bit weights back before saving), else None."""
    found = mlp.__dict__.get(KEY)
    if found is None:
        return None
    gate = mlp.gate_proj.base_layer.weight
    return found if gate.data_ptr() == found[0].data_ptr() else None  # type: ignore[no-any-return]


def unpack(model: Any) -> int:
    """Drop every packed buffer reference (after the 4-bit weights are back); the count dropped."""
    return sum(module.__dict__.pop(KEY, None) is not None for module in model.modules())


def refresh(gu: Any, dn: Any, Bg: Any, Bu: Any, Ad: Any, scales: tuple[float, float, float]) -> None:
    """The adapter's current ``s_g B_g``, ``s_u B_u`` and ``s_d A_d^T`` into the packed buffers' LoRA columns."""
    import torch

    sg, su, sd = scales
    r = Bg.shape[1]
    D = gu.shape[2] - 2 * r
    with torch.no_grad():
        gu[:, 0, D:D + r] = Bg * sg
        gu[:, 1, D + r:] = Bu * su
        dn[:, dn.shape[1] - r:] = (Ad * sd).t()


def function() -> Any:
    """The autograd Function, built on first use so importing this module imports neither torch nor Unsloth."""
    if "function" in _CACHE:
        return _CACHE["function"]
    import torch
    from unsloth.kernels.utils import torch_amp_custom_bwd, torch_amp_custom_fwd

    def scaled(t: Any, s: float) -> Any:
        return t if s == 1 else t.mul_(s)

    class LoRASwiGLUGated(torch.autograd.Function):
        """out = swiglu(X Wg^T + sg X Ag^T Bg^T, X Wu^T + su X Au^T Bu^T) Wd^T + sd (h Ad^T) Bd^T, with the packed
        ``gu`` and ``dn`` holding the base weights and (refreshed here) the LoRA columns."""

        @staticmethod
        @torch_amp_custom_fwd
        def forward(ctx: Any, X: Any, gu: Any, dn: Any, Ag: Any, Bg: Any, Au: Any, Bu: Any, Ad: Any, Bd: Any,
                    scales: tuple[float, float, float]) -> Any:
            dtype = X.dtype
            N, _, K = gu.shape
            D = X.shape[-1]
            Dout = dn.shape[1] - Bg.shape[1]
            refresh(gu, dn, Bg, Bu, Ad, scales)
            X2 = X.reshape(-1, D)
            A_gu = torch.cat([Ag, Au]).to(dtype)
            XA = X2 @ A_gu.t()  # [T, 2r]: also what the B gradients need
            pre = X2.new_empty(X2.shape[0], 2 * N)
            h = X2.new_empty(X2.shape[0], N)
            gated(torch.cat([X2, XA], 1), gu.view(2 * N, K).t(), pre, h)
            Bd_ = Bd.to(dtype)
            full = h @ dn  # [T, Dout + r]: the base output and sd h Ad^T from one read of h
            del h
            out, hA = full[:, :Dout], full[:, Dout:].contiguous()  # hA holds sd h Ad^T
            out.addmm_(hA, Bd_.t())
            ctx.scales = scales
            ctx.packed = (gu, dn)
            ctx.save_for_backward(X, pre, XA, hA, A_gu, Bd_)  # h is rebuilt by the backward's epilogue
            return out.view(*X.shape[:-1], Dout)  # a view with rows Dout + r apart: the residual add reads it

        @staticmethod
        @torch_amp_custom_bwd
        def backward(ctx: Any, dY: Any) -> Any:
            X, pre, XA, hA, A_gu, Bd = ctx.saved_tensors
            gu, dn = ctx.packed
            sg, su, sd = ctx.scales
            dtype = X.dtype
            N, _, K = gu.shape
            r = Bd.shape[1]
            D = X.shape[-1]
            X2 = X.reshape(-1, D)
            dY2 = dY.reshape(-1, dY.shape[-1]).to(dtype)
            dYB = dY2 @ Bd  # [T, r]
            dx = X2.new_empty(X2.shape[0], 2 * N)  # d_gate, d_up interleaved
            h = X2.new_empty(X2.shape[0], N)
            dgated(torch.cat([dY2, dYB], 1), dn.t(), pre, dx, h)
            dAd = scaled(dYB.t() @ h, sd)  # [r, N]
            dBd = dY2.t() @ hA  # [out, r]; hA already carries sd
            del h
            dB = dx.t() @ XA  # [2N, 2r]: gate rows against X Ag^T, up rows against X Au^T
            dBg = scaled(dB[0::2, :r].contiguous(), sg)
            dBu = scaled(dB[1::2, r:].contiguous(), su)
            full = dx @ gu.view(2 * N, K)  # [T, D + 2r]: the base part of dX, then [sg d_gate Bg, su d_up Bu]
            del dx
            G = full[:, D:].contiguous()
            dA = G.t() @ X2  # [2r, in]
            dX = full[:, :D]
            dX.addmm_(G, A_gu)
            return (dX.contiguous().view(X.shape), None, None, dA[:r], dBg, dA[r:], dBu, dAd, dBd, None)

    _CACHE["function"] = LoRASwiGLUGated
    return LoRASwiGLUGated
