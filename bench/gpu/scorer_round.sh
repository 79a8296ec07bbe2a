#!/usr/bin/env bash
# One round's scorer fits on a GPU machine whose image has torch, transformers and peft but not Forma's other
# dependencies (#14): `lm` runs the SmolLM2 reader's five grouped CV folds and its final fit as six processes on one
# card; `ce` runs the cross-encoder's grouped CV and final fit. Inputs (made on the CPU machine and carried over):
#   $W/smollm2/ (config, tokenizer), $W/lm_packed.safetensors (`python -m eval.lm_classifier pack`),
#   $W/minilm/ (the base MiniLM, fp16), $W/pool_aug.jsonl (`forma eval scorer augment`),
#   $W/pool_files.txt (learned.pool_files(), space-separated, in order).
# Outputs under $OUT (at most 8 files come back): lm_oof/oof_fold{0..4}.npz, lm/lm_classifier.{safetensors,json},
# lm/fit_proba.npz; or ce/oof.npz, ce/cross_encoder.{json,safetensors.part_a*}, ce/fit_proba.npz.
# `fits` runs only the two final fits, side by side, without CV (lm/ and ce/ as above, no OOF files): for a round
# whose device time cannot pay for both CVs (~19 of a session's 30 minutes); its CV is then not measured.
#   W=DIR bash bench/gpu/scorer_round.sh lm|ce|fits
set -euo pipefail
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
read -r -a FILES < "$W/pool_files.txt"
logs=$(mktemp -d)
# the reader's and the cross-encoder's final fits; extra arguments (the cross-encoder's --cv-out) pass through
lm_fit() {
  mkdir -p "$OUT/lm"
  python -m eval.lm_classifier fit --base "$W/smollm2" --packed "$W/lm_packed.safetensors" --out "$OUT/lm" \
    --fit-proba-out "$OUT/lm/fit_proba.npz" --augment "$W/pool_aug.jsonl" "${FILES[@]}"
}
ce_fit() {
  mkdir -p "$OUT/ce"
  python -m eval.cross_encoder fit --base "$W/minilm" --out "$OUT/ce" --fit-proba-out "$OUT/ce/fit_proba.npz" \
    --augment "$W/pool_aug.jsonl" "$@" "${FILES[@]}"
}
# wait for every background job, then show each log's last lines; the status is 1 if any job failed
wait_all() {
  local status=0 job f
  for job in $(jobs -p); do wait "$job" || status=1; done
  for f in "$logs"/*.log; do echo "== $f"; grep -v -i warn "$f" | tail -4; done
  return $status
}
# the cross-encoder's weights in parts under 15 MiB, so that they come back from the device
split_ce() {
  (cd "$OUT/ce" && split -b 15M cross_encoder.safetensors cross_encoder.safetensors.part_ && rm cross_encoder.safetensors)
}
case "$1" in
  lm)
    for k in 0 1 2 3 4; do
      python -m eval.lm_classifier cv --base "$W/smollm2" --packed "$W/lm_packed.safetensors" --fold "$k" \
        --out "$OUT/lm_oof/oof_fold$k.npz" --augment "$W/pool_aug.jsonl" "${FILES[@]}" > "$logs/cv$k.log" 2>&1 &
    done
    lm_fit > "$logs/fit.log" 2>&1 &
    wait_all ;;
  ce)
    ce_fit --cv-out "$OUT/ce/oof.npz" 2>&1 | grep -v -i warn | tail -12
    split_ce ;;
  fits)
    lm_fit > "$logs/lm.log" 2>&1 &
    ce_fit > "$logs/ce.log" 2>&1 &
    status=0; wait_all || status=1
    split_ce
    exit $status ;;
  *) echo "usage: W=DIR bash bench/gpu/scorer_round.sh lm|ce|fits" >&2; exit 2 ;;
esac
