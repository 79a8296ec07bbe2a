"""Real answers of three local SmolLM2-135M models (llama.cpp, CPU) to the prompts written for heldout_v4.jsonl.

The shipped SmolLM2-135M-Instruct GGUF (greedy, no system prompt) and two of the team's fine-tunes exported as q8_0
GGUF (``out/exp3/r256-model``, ``out/exp2/heavy-model``), each under the Forma system prompt its Modelfile sets and
sampled at the Modelfile's temperature 0.7 / top-p 0.9 with a fixed seed. The fine-tunes were chosen because they
really decline and refer, in their own garbled ways, which the instruct model rarely does. Answers are written
unlabelled; labels were added by hand afterwards, before any scorer was run on them or changed
(eval/labeled/README.md, "heldout_v4.jsonl"). Resumable: (prompt, model) pairs already in OUT are skipped.

    nice -n 10 .venv/bin/python bench/heldout_v4_answers.py PROMPTS.jsonl OUT.jsonl [MODEL,MODEL,...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0], and bench/eval.py would shadow the eval/ package ("'eval' is not a
# package", met by a helper on 2026-12-01): the repository root goes first; bench/ stays on the path for
# heldout_v3_answers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMA_SYSTEM = ("You are Forma AI, a knowledgeable and supportive fitness coach. Give accurate, evidence-based advice "
                "on training, nutrition, recovery and motivation, adapted to the person's level and goals. Recommend a "
                "doctor, physiotherapist or registered dietitian whenever symptoms, injuries, pregnancy, medical "
                "conditions or medications are involved.")
#: name -> (GGUF path, or "" for the shipped instruct model; system prompt; temperature; top-p)
MODELS: dict[str, tuple[str, str | None, float, float]] = {
    "smollm2-instruct": ("", None, 0.0, 1.0),
    "exp3-r256": ("out/exp3/r256-model/gguf/merged-q8_0.gguf", FORMA_SYSTEM, 0.7, 0.9),
    "exp2-heavy": ("out/exp2/heavy-model/gguf/merged-q8_0.gguf", FORMA_SYSTEM, 0.7, 0.9),
    # Only when named (training answers, #14's v10 round): two more of the team's fine-tunes, for variety.
    "exp2-default": ("out/exp2/default-model/gguf/merged-q8_0.gguf", FORMA_SYSTEM, 0.7, 0.9),
    "exp-default": ("out/exp/default/model/gguf/merged-q8_0.gguf", FORMA_SYSTEM, 0.7, 0.9),
    # Only when named (heldout_v11, #14's v11 round, on a machine without the fine-tunes above): the shipped
    # instruct model under the Forma system prompt, sampled as the Modelfile does.
    "smollm2-forma": ("", FORMA_SYSTEM, 0.7, 0.9),
}
#: The models a run uses unless a comma-separated list is named (the held-out sets' three).
DEFAULT_MODELS = ("smollm2-instruct", "exp3-r256", "exp2-heavy")


def main(prompts_file: Path, out_file: Path, models: tuple[str, ...] = DEFAULT_MODELS) -> None:
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    from heldout_v3_answers import chat  # run as a script, bench/ is on sys.path
    from llama_cpp import Llama

    from common.model_paths import smollm2_gguf
    from eval.runners import auto_threads

    rows = [json.loads(line) for line in prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    done = set()
    if out_file.is_file():
        done = {(r["pid"], r["model"]) for r in map(json.loads, out_file.read_text(encoding="utf-8").splitlines())}
    with out_file.open("a", encoding="utf-8") as fh:
        for name in models:
            path, system, temperature, top_p = MODELS[name]
            todo = [r for r in rows if (r["pid"], name) not in done]
            if not todo:
                continue
            # 1 thread when another job holds a core: on 2026-12-01 two of these runs at once, 2 threads each (and
            # a 2-thread bench beside them), made about 2 answers a minute each, against 39 a minute for one run
            # alone; the thread count does not change the answers
            threads = auto_threads()
            llm = Llama(model_path=path or str(smollm2_gguf()), n_ctx=1024, n_threads=threads, n_threads_batch=threads,
                        seed=14, verbose=False)
            for row in todo:
                text = chat(llm, system, row["prompt"], temperature, top_p)
                fh.write(json.dumps({**row, "model": name, "temperature": temperature, "response": text}) + "\n")
                fh.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else DEFAULT_MODELS)
