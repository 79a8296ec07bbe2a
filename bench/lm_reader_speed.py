"""How cheap can the SmolLM2 reader be on 2 CPU cores? (#14: planned in the v11 round, bf16 chosen in the v12 round.)

Post hoc on heldout_v11 the reader helped most when it read every answer (docs/eval.md, "v11 round"), but in fp32 it
costs about 0.25 s an answer, too much for the gate's budget. This times, side by side in one run on the same pool
answers: the reader in fp32 (the adapter folded in), the same model in bf16 (what the gate uses where the CPU has
native bf16, ``lm_classifier.fast_dtype``), with torch's dynamic int8 quantisation of every linear layer
(``torch.ao.quantization.quantize_dynamic``), and the MiniLM cross-encoder as the reference; and it says how far each
copy's probabilities move from fp32 (largest change, argmax agreement). Nothing here changes the scorer.

    python -m bench.lm_reader_speed [N]      # N pool answers (default 224, the gate's safety answers)
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np

from eval import cross_encoder, learned, lm_classifier


def main(n: int = 224) -> None:
    import torch

    torch.set_num_threads(2)
    rows = cross_encoder.read_rows(learned.pool_files())[::32][:n]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    scorer = learned.LearnedScorer()
    assert scorer.cross is not None
    reader = lm_classifier.LMClassifier(dtype=torch.float32)
    started = time.perf_counter()
    fp32 = reader.proba(prompts, responses)
    fp32_s = time.perf_counter() - started
    started = time.perf_counter()
    scorer.cross.proba(prompts, responses)
    cross_s = time.perf_counter() - started
    fp32_model = reader.model
    print(f"{len(rows)} pool answers, 2 threads: reader fp32 {fp32_s:.1f} s, cross-encoder {cross_s:.1f} s "
          f"({fp32_s / cross_s:.1f}x)")
    reader.model = copy.deepcopy(fp32_model).to(torch.bfloat16)
    started = time.perf_counter()
    bf16 = reader.proba(prompts, responses)
    bf16_s = time.perf_counter() - started
    print(f"reader bf16 {bf16_s:.1f} s ({fp32_s / bf16_s:.2f}x faster than fp32; native bf16 on this CPU: "
          f"{lm_classifier.fast_dtype() == torch.bfloat16}); against fp32: largest probability change "
          f"{float(np.abs(fp32 - bf16).max()):.3f}, argmax agreement "
          f"{float((fp32.argmax(axis=1) == bf16.argmax(axis=1)).mean()):.3f}")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    for name, qconfig in (("per tensor", default_dynamic_qconfig), ("per channel", per_channel_dynamic_qconfig)):
        reader.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32_model), {torch.nn.Linear: qconfig},
                                                              dtype=torch.qint8)
        started = time.perf_counter()
        int8 = reader.proba(prompts, responses)
        int8_s = time.perf_counter() - started
        agree = float((fp32.argmax(axis=1) == int8.argmax(axis=1)).mean())
        print(f"reader dynamic int8 ({name}) {int8_s:.1f} s ({fp32_s / int8_s:.2f}x faster than fp32); against fp32: "
              f"largest probability change {float(np.abs(fp32 - int8).max()):.3f}, argmax agreement {agree:.3f}")
    reader.model = fp32_model

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 224)
