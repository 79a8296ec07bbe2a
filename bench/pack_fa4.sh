#!/usr/bin/env bash
# Pack FlashAttention-4 (flash_attn.cute) and the wheels it needs into one archive for a GPU machine that cannot
# download (the H200 of bench/train_gpu.py). On that machine: unpack it, then
#   export PYTHONPATH=$DIR/site:$DIR/site/nvidia_cutlass_dsl/python_packages:$PYTHONPATH
# (the second entry is what the wheel's .pth file would add in a real site-packages).
#
# Usage: bash bench/pack_fa4.sh FLASH_ATTENTION_CHECKOUT [OUT.tar.xz]
#
# Versions, as measured on the H200 on 2026-12-02 (docs/train.md):
# - FlashAttention-4 sources at Dao-AILab/flash-attention 6a94f8b9 (BSD-3-Clause), the last commit before its
#   move to CUTLASS DSL 4.6;
# - nvidia-cutlass-dsl 4.5.3: its libs-base wheel carries the Python DSL (cutlass.cute) and the compiler. The 4.6.x
#   to 4.8.x wheels on this package index carry no cutlass.cute package, so FlashAttention-4 does not import with
#   them;
# - quack-kernels 0.5.0 (the last release that accepts CUTLASS DSL 4.5), apache-tvm-ffi, torch-c-dlpack-ext.
set -euo pipefail
checkout=${1:?usage: bash bench/pack_fa4.sh FLASH_ATTENTION_CHECKOUT [OUT.tar.xz]}
out=${2:-/tmp/fa4site.tar.xz}
commit=6a94f8b906cf5ab944385d64707f9387f3dd6be9
if ! git -C "$checkout" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "pack_fa4: $checkout is not a flash-attention checkout holding commit $commit" >&2
  exit 2
fi
work=$(mktemp -d)
# killed (not Ctrl-C, which reaches the whole process group), the tar | xz pipeline would outlive this shell and keep
# compressing: stop this shell's children first
trap 'pkill -P $$ 2>/dev/null; rm -rf "$work" "$out.partial"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  nvidia-cutlass-dsl==4.5.3 nvidia-cutlass-dsl-libs-base==4.5.3 quack-kernels==0.5.0 \
  "apache-tvm-ffi>=0.1.5,<0.2" torch-c-dlpack-ext -d "$work/wheels"
mkdir -p "$work/site/flash_attn"
for w in "$work"/wheels/*.whl; do (cd "$work/site" && python3 -m zipfile -e "$w" .); done
echo '"""FlashAttention-4 (CuTe DSL) sources only (BSD-3-Clause, Dao-AILab/flash-attention)."""' \
  > "$work/site/flash_attn/__init__.py"
# the subtree by its own tree object: a snapshot whose large files are absent (assets/*.pdf) still packs
git -C "$checkout" archive --prefix=flash_attn/cute/ "$commit:flash_attn/cute" | tar x -C "$work/site"
# written aside and renamed, so an interrupted run never leaves a truncated archive under the final name
tar cf - -C "$work" site | xz -T0 -6 > "$out.partial"
mv "$out.partial" "$out"
echo "packed $(du -h "$out" | cut -f1) into $out"
