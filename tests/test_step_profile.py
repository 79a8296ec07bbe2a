"""bench/step_profile.py's reading of a profiler trace: idle GPU time, what the host did then, who launched what."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Loaded from its file, not by putting bench/ on sys.path: bench/export.py and bench/eval.py would then shadow the
# export/ and eval/ packages for every test that imports them later in the same session.
_SPEC = importlib.util.spec_from_file_location("step_profile", Path(__file__).resolve().parents[1] / "bench" /
                                               "step_profile.py")
assert _SPEC is not None and _SPEC.loader is not None
step_profile = importlib.util.module_from_spec(_SPEC)
sys.modules["step_profile"] = step_profile
_SPEC.loader.exec_module(step_profile)


def _x(cat: str, name: str, ts: float, dur: float, tid: int = 1, **args: object) -> dict[str, object]:
    """A complete event; times in units of 100 us (the figures are rounded to 0.01 ms or coarser)."""
    return {"ph": "X", "cat": cat, "name": name, "ts": 100 * ts, "dur": 100 * dur, "tid": tid, "args": dict(args)}


def test_timeline_charges_idle_time_and_kernels_to_host_ops() -> None:
    trace = {"traceEvents": [
        # main thread: a forward op that launches a GEMM (driver API) and an add (runtime API) ...
        _x("cpu_op", "forward", 0, 100),
        _x("cpu_op", "aten::mm", 5, 10, **{"Input Dims": [[8, 4], [4, 4]]}),
        _x("cuda_driver", "cuLaunchKernelEx", 6, 2, correlation=1),
        _x("cpu_op", "aten::add", 20, 5),
        _x("cuda_runtime", "cudaLaunchKernel", 21, 2, correlation=2),
        # ... then the host reads a value back (a sync) while the GPU has nothing to do
        _x("cpu_op", "collate", 200, 300),
        _x("cpu_op", "aten::item", 210, 20),
        _x("cuda_runtime", "cudaStreamSynchronize", 212, 10),
        # autograd's thread launches the backward GEMM
        _x("cpu_op", "MmBackward0", 510, 20, tid=2),
        _x("cuda_driver", "cuLaunchKernelEx", 512, 2, tid=2, correlation=3),
        _x("kernel", "nvjet_gemm_fwd", 10, 90, correlation=1),
        _x("kernel", "elementwise_add", 100, 50, correlation=2),
        _x("kernel", "nvjet_gemm_bwd", 520, 80, correlation=3),
    ]}
    t = step_profile.timeline(trace, steps=1)
    assert t["gpu_span_ms_per_step"] == 59.0  # 1 .. 60 ms
    assert t["idle_ms_per_step"] == 37.0 and t["idle_gaps_per_step"] == 1  # 15 .. 52 ms
    assert t["idle_by_host_op_ms_per_step"] == {"collate": 30.0, "(no host op)": 7.0}
    assert t["idle_after_sync_ms_per_step"] == {"aten::item < collate": 37.0}
    assert t["idle_before_launch_by_op_ms_per_step"] == {"MmBackward0": 37.0}  # what the GPU waited for
    launched = t["kernel_ms_per_step_by_launching_op"]
    assert launched["matmul | nvjet_gemm_fwd | aten::mm [[8, 4], [4, 4]]"] == 9.0
    assert launched["other | elementwise_add | aten::add "] == 5.0
    assert launched["matmul | nvjet_gemm_bwd | MmBackward0 "] == 8.0


def test_kernel_groups_from_a_trace() -> None:
    trace = {"traceEvents": [_x("kernel", "flash_fwd_kernel", 0, 30), _x("kernel", "_fg_kernel", 30, 10),
                             _x("gpu_memset", "Memset (Device)", 40, 5), _x("cpu_op", "aten::mm", 0, 5)]}
    summary = step_profile.summarize(step_profile.trace_kernel_times(trace), steps=1, wall_s=0.001)
    assert summary["groups"]["attention"]["ms_per_step"] == 3.0
    assert summary["groups"]["activation"]["ms_per_step"] == 1.0
    assert summary["groups"]["copy_fill"]["ms_per_step"] == 0.5
