#!/usr/bin/env bash
# Builds .gpu/site.tgz in the current repo: the Python packages that the GPU machine's image lacks for
# Unsloth QLoRA training (its image already has torch 2.11 cu130, transformers 5.17, peft, accelerate,
# sentence-transformers, triton). Seen working on an H100 on 2026-11-24: Unsloth QLoRA of a Qwen2.5-3B
# architecture ran 2.8x faster than plain transformers+peft in 24% of the memory.
# Seen working again on an H200 on 2026-11-29 (torch 2.11 cu130, transformers 5.17): bench/train_gpu.py ran both paths.
#
# Use:   bash scripts/pack-gpu-site.sh          (once; the folder .gpu/ is git-ignored locally)
# Then carry .gpu to the GPU machine along with the repo and start the command there with
#   d=$(mktemp -d) && tar xzf .gpu/site.tgz -C $d && export PYTHONPATH=$d/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1;
# Nothing can be downloaded there: model weights must be made there (from a config) or carried (64 MiB per call).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
work=$(mktemp -d)
plat=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 --platform any)
# unsloth 2026.10.9 pins trl<=1.15.0 and datasets<5 and transformers<=5.17.0 (the image's).
pkgs=(unsloth==2026.10.9 unsloth-zoo==2026.10.9 trl==1.15.0 "datasets<5" bitsandbytes==0.50.2 torchao cut_cross_entropy
      tyro docstring_parser typeguard shtab msgspec hf_transfer diffusers structlog json5 nest_asyncio
      pydantic pydantic_core annotated_types typing_inspection certifi dill multiprocess ${EXTRA_PKGS:-})
for p in "${pkgs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$work/whl" "$p"
done
python3 -m pip install -q --no-deps --no-compile --target "$work/site" --python-version 3.12 --implementation cp \
  --only-binary=:all: "${plat[@]}" "$work"/whl/*.whl
# keep the wheel small enough to travel: drop Unsloth's web studio and the CUDA builds the image does not use
rm -rf "$work/site/studio" "$work/site/unsloth/studio"
find "$work/site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete
mkdir -p .gpu
tar czf .gpu/site.tgz -C "$work" site
rm -rf "$work"
ls -la .gpu/site.tgz
