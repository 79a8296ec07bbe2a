"""Where a training step's GPU time goes: torch.profiler over a few steady steps, kernels grouped by what they do.

Used by ``bench/train_gpu.py`` (variant key ``profile``): the step clock's callbacks start the profiler at the
beginning of step ``start`` and stop it at the end of step ``start + steps - 1``; kernels are then summed by their
own GPU time into groups (matrix products, attention, 4-bit dequantisation, the loss over the vocabulary, norms,
activations, rotary embedding, the optimiser, copies, other). Names are matched by substring because the kernels
come from cuBLAS, FlashAttention, bitsandbytes, Triton (Unsloth's and torch.compile's) and aten, which share no
naming scheme; anything unmatched is reported under ``other`` with its top names so nothing hides.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

#: group -> name fragments (lower case), tried in this order; the first that matches wins.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("dequant_4bit", ("dequant", "kgemm_4bit", "4bit")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("loss_vocab", ("cross_entropy", "crossentropy", "logsumexp", "_ce_", "log_softmax", "nll_loss")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "wgmma")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("rms", "layernorm", "layer_norm")),
    ("rope", ("rope", "rotary")),
    ("activation", ("swiglu", "geglu", "silu", "gelu", "_fg_kernel", "dfg_kernel")),
    ("copy_fill", ("memcpy", "memset", "copy_", "fill", "cat_", "transpose", "contiguous")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, fragments in GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


def kernel_times(prof: Any) -> dict[str, float]:
    """Microseconds by kernel name, from a CUDA-only profile."""
    return {evt.key: float(getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0)
                           or 0.0) for evt in prof.key_averages()}


def trace_kernel_times(trace: dict[str, Any]) -> dict[str, float]:
    """Microseconds by kernel name, from a chrome trace (a profile with host ops lists each kernel once there)."""
    times: dict[str, float] = defaultdict(float)
    for e in trace.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            times[e["name"]] += float(e.get("dur", 0))
    return times


def summarize(times: dict[str, float], steps: int, wall_s: float) -> dict[str, Any]:
    """Per-group GPU milliseconds per step and share of the summed kernel time, plus the top kernels."""
    by_group: dict[str, float] = defaultdict(float)
    kernels: list[tuple[float, str, str]] = []
    for name, us in times.items():
        if us <= 0:
            continue
        group = group_of(name)
        by_group[group] += us
        kernels.append((us, group, name[:120]))
    total = sum(by_group.values()) or 1.0
    kernels.sort(reverse=True)
    return {
        "steps": steps, "wall_ms_per_step": round(1000 * wall_s / steps, 1),
        "kernel_ms_per_step": round(total / 1000 / steps, 1),
        "groups": {g: {"ms_per_step": round(us / 1000 / steps, 1), "share": round(us / total, 4)}
                   for g, us in sorted(by_group.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"ms_per_step": round(us / 1000 / steps, 2), "group": g, "name": n}
                        for us, g, n in kernels[:25]],
        "other_top": [n for _, g, n in kernels if g == "other"][:10],
    }


def _nesting(ops: list[dict[str, Any]]) -> list[int]:
    """Parent index of each CPU op (ops sorted by start; -1 at top level), from the intervals' nesting."""
    parents, stack = [], []  # type: ignore[var-annotated]
    for i, op in enumerate(ops):
        end = op["ts"] + op.get("dur", 0)
        while stack and ops[stack[-1]]["ts"] + ops[stack[-1]].get("dur", 0) < end:
            stack.pop()
        parents.append(stack[-1] if stack else -1)
        stack.append(i)
    return parents


def _enclosing(ops: list[dict[str, Any]], starts: list[float], parents: list[int], t: float) -> list[int]:
    """Indices of the CPU ops that contain time ``t``, innermost first."""
    import bisect

    i = bisect.bisect_right(starts, t) - 1
    while i >= 0 and ops[i]["ts"] + ops[i].get("dur", 0) < t:
        i = parents[i]
    chain = []
    while i >= 0:
        chain.append(i)
        i = parents[i]
    return chain


def _gap_starts(gpu: list[dict[str, Any]], min_gap_us: float) -> list[tuple[dict[str, Any], float]]:
    """The GPU activities that start after an idle gap longer than ``min_gap_us``, each with when the GPU went idle."""
    found, busy_end = [], gpu[0]["ts"]
    for e in gpu:
        if e["ts"] - busy_end > min_gap_us:
            found.append((e, busy_end))
        busy_end = max(busy_end, e["ts"] + e.get("dur", 0))
    return found


def timeline(trace: dict[str, Any], steps: int, min_gap_us: float = 20.0) -> dict[str, Any]:
    """GPU idle time in a chrome trace and what the host was doing then; kernel time by the op that launched it.

    Idle gaps are the spans between GPU activities (kernels, copies, fills) longer than ``min_gap_us``. Each is
    charged to the top-level host ops that ran during it, by overlap (the host was busy there, not launching; the
    rest is "(no host op)"), and, where a synchronising runtime call falls inside it, to the op that called it (an
    ``aten::item`` and its parents). Each gap is also charged to the ops that launched the activity ending it
    (outermost > innermost): what the GPU was waiting for.
    """
    import bisect
    from collections import Counter

    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"])
    runtime = {e["args"].get("correlation"): e for e in events  # cuBLAS launches through the driver API
               if e.get("cat") in ("cuda_runtime", "cuda_driver") and "args" in e}
    by_tid: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_tid[e.get("tid")].append(e)
    if not gpu or not by_tid:
        return {}
    # the backward runs on autograd's own thread: each thread's ops nest separately
    threads = {}
    for tid, tid_ops in by_tid.items():
        tid_ops.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        threads[tid] = (tid_ops, [e["ts"] for e in tid_ops], _nesting(tid_ops))
    main = max(by_tid, key=lambda t: len(by_tid[t]))
    ops, starts, parents = threads[main]
    syncs = sorted((e for e in events if e.get("cat") == "cuda_runtime" and any(
        k in e.get("name", "") for k in ("Synchronize", "MemcpyAsync", "Memcpy"))), key=lambda e: e["ts"])
    gap_starts = _gap_starts(gpu, min_gap_us)
    gaps = [(idle_from, e["ts"]) for e, idle_from in gap_starts]
    span = max(e["ts"] + e.get("dur", 0) for e in gpu) - gpu[0]["ts"]
    at_top: Counter[str] = Counter()
    at_sync: Counter[str] = Counter()
    before: Counter[str] = Counter()  # what the GPU waited for: the ops that launched the kernel after each gap
    gap_after = {id(e): e["ts"] - idle_from for e, idle_from in gap_starts}
    sync_ts = [e["ts"] for e in syncs]
    top = [i for i, p in enumerate(parents) if p == -1]  # top-level host ops, in start order, not overlapping
    top_ends = [ops[i]["ts"] + ops[i].get("dur", 0) for i in top]
    for a, b in gaps:
        covered = 0.0
        for k in range(bisect.bisect_left(top_ends, a), len(top)):
            op = ops[top[k]]
            if op["ts"] >= b:
                break
            overlap = min(b, top_ends[k]) - max(a, op["ts"])
            if overlap > 0:
                at_top[op["name"]] += overlap
                covered += overlap
        if b - a - covered > 0:
            at_top["(no host op)"] += b - a - covered
        j = bisect.bisect_left(sync_ts, a)
        if j < len(syncs) and syncs[j]["ts"] < b:
            inner = _enclosing(ops, starts, parents, syncs[j]["ts"])
            at_sync[" < ".join(ops[k]["name"] for k in inner[:4]) or syncs[j]["name"]] += b - a
    launched: Counter[str] = Counter()
    for e in gpu:
        rt = runtime.get(e.get("args", {}).get("correlation"))
        t_ops, t_starts, t_parents = threads.get(rt.get("tid"), threads[main]) if rt else threads[main]
        chain = _enclosing(t_ops, t_starts, t_parents, rt["ts"]) if rt else []
        if id(e) in gap_after:  # outermost and innermost op around the launch that ended a gap
            names = [t_ops[k]["name"] for k in chain]
            key = f"{names[-1]} > {names[0]}" if len(names) > 1 else (names[0] if names else e["name"][:60])
            before[key] += gap_after[id(e)]
        if e.get("cat") != "kernel":
            continue
        op = t_ops[chain[0]] if chain else None
        dims = str(op.get("args", {}).get("Input Dims", ""))[:90] if op else ""
        launched[f"{group_of(e['name'])} | {e['name'][:60]} | {op['name'] if op else '?'} {dims}"] += e.get("dur", 0)
    per = 1000.0 * steps
    return {
        "gpu_span_ms_per_step": round(span / per, 1),
        "idle_ms_per_step": round(sum(b - a for a, b in gaps) / per, 1),
        "idle_gaps_per_step": round(len(gaps) / steps, 1),
        "idle_by_host_op_ms_per_step": {k: round(v / per, 2) for k, v in at_top.most_common(15)},
        "idle_after_sync_ms_per_step": {k: round(v / per, 2) for k, v in at_sync.most_common(15)},
        "idle_before_launch_by_op_ms_per_step": {k: round(v / per, 2) for k, v in before.most_common(20)},
        "kernel_ms_per_step_by_launching_op": {k: round(v / per, 2) for k, v in launched.most_common(60)},
    }


def attach(clock: Any, start: int, steps: int, out: Path, trace: bool = False) -> None:
    """Wrap ``clock``'s step callbacks so steps ``start .. start + steps - 1`` run under the profiler.

    With ``trace``, host ops are recorded too (with input shapes) and :func:`timeline` is written beside the kernel
    groups: where the GPU sat idle and which host op launched each kernel.
    """
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    state: dict[str, Any] = {"n": 0, "prof": None, "t": 0.0}
    begin, end = clock.on_step_begin, clock.on_step_end

    def on_step_begin(*a: Any, **k: Any) -> Any:
        if state["n"] == start and state["prof"] is None:
            torch.cuda.synchronize()
            prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) if trace \
                else profile(activities=[ProfilerActivity.CUDA])
            prof.__enter__()
            state["prof"] = prof
            state["t"] = time.perf_counter()
        return begin(*a, **k)

    def on_step_end(*a: Any, **k: Any) -> Any:
        result = end(*a, **k)
        state["n"] += 1
        if state["prof"] is not None and state["n"] == start + steps:
            torch.cuda.synchronize()
            wall = time.perf_counter() - state["t"]
            state["prof"].__exit__(None, None, None)
            out.mkdir(parents=True, exist_ok=True)
            if trace:
                import gzip

                path = out / "trace.json"
                state["prof"].export_chrome_trace(str(path))
                data = json.loads(path.read_text())
                summary = summarize(trace_kernel_times(data), steps, wall)
                summary["timeline"] = timeline(data, steps)
                with gzip.open(out / "trace.json.gz", "wt") as fh:
                    json.dump(data, fh)
                path.unlink()
                print("TIMELINE " + json.dumps(summary["timeline"], indent=1), flush=True)
            else:
                summary = summarize(kernel_times(state["prof"]), steps, wall)
            (out / "step_profile.json").write_text(json.dumps(summary, indent=1) + "\n")
            print("PROFILE " + json.dumps({g: v["ms_per_step"] for g, v in summary["groups"].items()}), flush=True)
            state["prof"] = False  # done; never again
        return result

    clock.on_step_begin = on_step_begin
    clock.on_step_end = on_step_end
