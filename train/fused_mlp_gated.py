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
it against the other designs with their products; before that, :func:`tune` picks each product's tile on the card
(on the H200 the backward's product ran 20% faster with a tile other than quack's default). The rounding is not
Unsloth's: ``e`` and ``g`` are rounded once, with their LoRA terms (Unsloth rounds the base product first), and
``h`` comes from the float32 values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from common.errors import FormaError
from train.kernel_checks import max_rel_diff, timed_ms

#: The attribute of an MLP module that holds its packed weights, ``(gu, dn)``.
KEY = "forma_gated_mlp"
_CACHE: dict[str, Any] = {}

#: The design's four large products, whose tile the warm-up picks on the card (:func:`tune`): ``gated`` (the
#: forward's product with SwiGLU), ``dgated`` (the backward's, with SwiGLU's backward), ``down`` (``h dn``) and
#: ``dgrad`` (``dx gu``).
PRODUCTS = ("gated", "dgated", "down", "dgrad")
#: The tile each product runs with, as quack ``GemmConfig`` fields; None: quack's default tile for the gated
#: products, cuBLAS for ``down`` and ``dgrad``.
TILES: dict[str, dict[str, Any] | None] = dict.fromkeys(PRODUCTS)


def _hopper(tile_m: int, tile_n: int, cluster_m: int, cluster_n: int, swap_ab: bool = False) -> dict[str, Any]:
    """A Hopper pingpong tile as quack's own Hopper candidates are (static persistent scheduler)."""
    return {"tile_m": tile_m, "tile_n": tile_n, "pingpong": True, "is_dynamic_persistent": False,
            "cluster_m": cluster_m, "cluster_n": cluster_n, "swap_ab": swap_ab, "device_capacity": 9}


#: Tiles that beat the default on the H200 at Qwen2.5-3B's shapes and 32,768 tokens in quack's autotuner and then in
#: bench/probe/quack_tiles_check.py's own timing (bench/results/quack_tiles-h200-2026-12-03.log: of 44 Hopper tiles
#: for ``dgated``, 128 x 160 with A and B swapped ran 2.75 ms against the default's 3.28; of 18 for ``gated`` only
#: 192 x 128 beat the default, by 1.2%). The warm-up times them against the default on the card it runs on, so a
#: card or a model they do not suit keeps the default. ``down`` and ``dgrad`` (cuBLAS, ~770 TFLOP/s there) were not
#: reached in that run.
MEASURED: dict[str, list[dict[str, Any]]] = {
    "gated": [_hopper(192, 128, 1, 2)],
    "dgated": [_hopper(128, 160, 2, 1, swap_ab=True), _hopper(128, 128, 1, 2, swap_ab=True), _hopper(128, 128, 2, 1)],
    "down": [], "dgrad": []}
#: ``FORMA_QUACK_TILES``: ``default`` (no tile but the default is tried), or a JSON file of more candidates
#: (``{"gated": [GemmConfig fields, ...], ...}``, as the probe writes).
TILES_ENV = "FORMA_QUACK_TILES"


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


def _config(product: str) -> Any:
    """Product ``product``'s chosen tile as quack's ``GemmConfig``, or None (its default). Made once per tile: this
    runs at every layer's forward and backward."""
    fields = TILES[product]
    if fields is None:
        return None
    key = "config " + json.dumps(fields, sort_keys=True)
    if key not in _CACHE:
        from quack.gemm_config import GemmConfig

        _CACHE[key] = GemmConfig(**fields)
    return _CACHE[key]


def tile_name(fields: dict[str, Any] | None, product: str = "gated") -> str:
    """A tile's short name for the report: ``128x192 pingpong cluster 2x1`` (``swap`` where A and B trade places),
    or what runs where none is chosen."""
    if fields is None:
        return "cuBLAS" if product in ("down", "dgrad") else "quack default"
    kind = "pingpong" if fields.get("pingpong", True) else "cooperative"
    swap = " swap" if fields.get("swap_ab") else ""
    return (f"{fields.get('tile_m')}x{fields.get('tile_n')} {kind} cluster "
            f"{fields.get('cluster_m')}x{fields.get('cluster_n')}{swap}")


def tile_candidates() -> dict[str, list[dict[str, Any] | None]]:
    """The tiles the warm-up times for each product: the default first, then :data:`MEASURED` and the file that
    ``FORMA_QUACK_TILES`` names (``default``: the default only). A file that cannot be read is an error naming it."""
    setting = os.environ.get(TILES_ENV, "").strip()
    if setting.lower() == "default":
        return {p: [None] for p in PRODUCTS}
    found: dict[str, list[dict[str, Any] | None]] = {p: [None, *MEASURED[p]] for p in PRODUCTS}
    if not setting:
        return found
    path = Path(setting)
    try:
        extra = json.loads(path.read_text())
        if not isinstance(extra, dict) or set(extra) - set(PRODUCTS) or \
                not all(isinstance(tiles, list) and all(isinstance(f, dict) for f in tiles)
                        for tiles in extra.values()):
            raise ValueError(f"expected an object of {', '.join(PRODUCTS)}, each a list of GemmConfig fields")
    except (OSError, ValueError) as exc:
        raise FormaError(f"{TILES_ENV}: cannot read {path}: {exc}", where=str(path),
                         hint="name a JSON file as bench/probe/quack_tiles_check.py writes it, or 'default'") from exc
    for product, tiles in extra.items():  # a tile already there (by its name) is timed once
        names = {tile_name(fields, product) for fields in found[product]}
        found[product] += [fields for fields in tiles if tile_name(fields, product) not in names]
    return found


def gated(A: Any, B: Any, pre: Any, h: Any, use_quack: bool | None = None) -> None:
    """``pre = A B`` ([T, 2N], gate and up columns interleaved) and ``h = silu(gate) * up`` ([T, N]), written into
    ``pre`` and ``h``. ``use_quack`` None: quack's product on CUDA, the torch arithmetic (float32 or better) else."""
    if _quack(A, use_quack):
        from quack.gemm_interface import gemm_gated_tuned

        # the autotuner's own function with the tile chosen at load (None: quack's default tile, as tuned=False)
        gemm_gated_tuned.fn(A, B, pre, h, activation="swiglu", config=_config("gated"))
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
        from quack.gemm_interface import gemm_dgated_tuned

        gemm_dgated_tuned.fn(A, B, pre, dx, h, activation="swiglu", config=_config("dgated"))
        return
    import torch

    acc = torch.promote_types(A.dtype, torch.float32)
    dh = A.to(acc) @ B.to(acc)
    e, g = pre[:, 0::2].to(acc), pre[:, 1::2].to(acc)
    se = torch.sigmoid(e)
    dx[:, 0::2] = dh * g * se * (1.0 + e * (1.0 - se))
    dx[:, 1::2] = dh * e * se
    h.copy_(e * se * g)


def product(name: str, A: Any, B: Any, use_quack: bool | None = None) -> Any:
    """``A B`` for the plain product ``name`` (``down`` or ``dgrad``): cuBLAS (torch) unless a quack tile was chosen
    for it on CUDA."""
    import torch

    if _quack(A, use_quack) and TILES[name] is not None:
        from quack.gemm_interface import gemm_tuned

        out = torch.empty(A.shape[0], B.shape[1], dtype=A.dtype, device=A.device)
        gemm_tuned.fn(A, B, out, config=_config(name))
        return out
    return A @ B


def product_runs(t: dict[str, Any], use_quack: bool | None = None) -> dict[str, Any]:
    """The design's four products on the warm-up's tensors ``t`` (``X``, ``dY``, ``XA``, ``dYB``, ``Bg``, ``Bu``,
    ``Ad`` and the ``packed`` weights, LoRA columns refreshed) as the Function runs them: ``{product: call}``, each
    call returning what it wrote, in the order they must run (each reads what the one before wrote)."""
    import torch

    gu, dn = t["packed"]
    refresh(gu, dn, t["Bg"], t["Bu"], t["Ad"], (1.0, 1.0, 1.0))
    T, n, K = t["X"].shape[0], gu.shape[0], gu.shape[2]
    Xc, dYc = torch.cat([t["X"], t["XA"]], 1), torch.cat([t["dY"], t["dYB"]], 1)
    pre, h, dx, h2 = (Xc.new_empty(T, w) for w in (2 * n, n, 2 * n, n))

    def run_gated() -> tuple[Any, ...]:
        gated(Xc, gu.view(2 * n, K).t(), pre, h, use_quack)
        return pre, h

    def run_dgated() -> tuple[Any, ...]:
        dgated(dYc, dn.t(), pre, dx, h2, use_quack)
        return dx, h2

    return {"gated": run_gated, "dgated": run_dgated,
            "down": lambda: (product("down", h, dn, use_quack),),
            "dgrad": lambda: (product("dgrad", dx, gu.view(2 * n, K), use_quack),)}


def tune(t: dict[str, Any], reps: int = 10, check_rows: int = 4096, tolerance: float = 2e-2) -> dict[str, Any]:
    """Pick each product's tile on the card: time every candidate (:func:`tile_candidates`) on the warm-up's
    tensors ``t`` (:func:`product_runs`: the model's shapes at the step's tokens) and keep the fastest in
    :data:`TILES`. A tile that does not compile or run here, or whose output differs from the default's by more
    than ``tolerance`` of the largest value, is left out with the reason.

    Why on the card and not a table: which tile hides the epilogue's memory traffic best depends on the card's
    memory and SM count and on the shapes; :data:`MEASURED` only narrows the candidates to a few (each compiles once,
    into quack's disk cache). Returns ``{product: {"tile", "ms", "left_out"}}`` for the training report."""
    cuda = t["packed"][0].is_cuda
    runs = product_runs(t)
    TILES.update(dict.fromkeys(PRODUCTS))
    found: dict[str, Any] = {}
    for name, tiles in tile_candidates().items():
        ms: dict[str, float] = {}
        left_out: dict[str, str] = {}
        reference: tuple[Any, ...] = ()
        for fields in tiles:
            label = tile_name(fields, name)
            if fields is not None and not reference:
                left_out[label] = "not tried: the default did not run, so there is nothing to check it against"
                continue
            TILES[name] = fields
            try:
                got = tuple(x[:check_rows].clone() for x in runs[name]())  # compiles (or loads from the cache)
                if fields is None:
                    reference = got
                elif not (diff := max_rel_diff(got, reference)) < tolerance:
                    left_out[label] = f"differs from the default by {diff:.2e} of the largest value"
                    continue
                ms[label] = round(timed_ms(runs[name], reps, cuda), 4)
            except Exception as exc:  # a tile this card cannot compile or run: the default stays
                left_out[label] = f"{type(exc).__name__}: {str(exc)[:200]}"
        best = min(ms, key=ms.__getitem__) if ms else tile_name(None, name)
        TILES[name] = next((f for f in tiles if tile_name(f, name) == best), None)
        found[name] = {"tile": best, "ms": ms, "left_out": left_out}
    return found  # the buffers go with this frame, before the design timings allocate theirs


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
            full = product("down", h, dn)  # [T, Dout + r]: the base output and sd h Ad^T from one read of h
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
            full = product("dgrad", dx, gu.view(2 * N, K))  # [T, D + 2r]: dX's base part, [sg d_gate Bg, su d_up Bu]
            del dx
            G = full[:, D:].contiguous()
            dA = G.t() @ X2  # [2r, in]
            dX = full[:, :D]
            dX.addmm_(G, A_gu)
            return (dX.contiguous().view(X.shape), None, None, dA[:r], dBg, dA[r:], dBu, dAd, dBd, None)

    _CACHE["function"] = LoRASwiGLUGated
    return LoRASwiGLUGated
