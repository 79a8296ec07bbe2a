"""Compile a Triton kernel for a GPU this machine does not have, and read what a thread of it needs.

Triton's wheel carries NVIDIA's ``ptxas`` and ``cuobjdump``, so a kernel can be compiled to an sm_90 (H100/H200)
binary on a CPU-only machine, and the binary's resource table read: registers a thread, and the stack a thread
uses, which for these kernels is registers spilled to memory. A spilling kernel that should run at memory speed
does not; this is how the fused MLP's first tiles were found to spill (train/fused_mlp_kernels.py).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any


def tool(name: str) -> Path:
    """One of the NVIDIA tools bundled in Triton's wheel (``ptxas``, ``cuobjdump``)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def resources(fn: Any, constexprs: dict[str, int], num_warps: int, num_stages: int, *, ints: set[str],
              floats: set[str], pointer_type: str = "*bf16", arch: int = 90) -> dict[str, int]:
    """``{"registers": .., "stack": ..}`` a thread of ``fn`` needs, compiled for sm_``arch``; arguments not in
    ``constexprs``, ``ints`` or ``floats`` are pointers of ``pointer_type``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else "i32" if name in ints else
                 "fp32" if name in floats else pointer_type for name in fn.arg_names}
    # What Triton's JIT specializes at launch when a pointer is 16-byte aligned and an integer a multiple of 16
    # (torch's allocations; N = 11,008; token counts padded to a multiple of 64): without it no load is vectorized.
    aligned = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
               if signature[name] == pointer_type or name in ints}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        table = subprocess.run([str(tool("cuobjdump")), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
    found = re.search(r"REG:(\d+).*?STACK:(\d+)", table, re.S)
    if found is None:
        raise ValueError(f"no resource table in cuobjdump's output: {table[-500:]}")
    return {"registers": int(found.group(1)), "stack": int(found.group(2))}
