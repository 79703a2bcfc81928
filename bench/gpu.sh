#!/usr/bin/env bash
# Throughput of an 8B recipe on one GPU: self-augmentation and logits-mode curation on vLLM, measured on N segments
# and projected to the paper's pool of 502k pairs (targets, issue #12: curation under 2.5 h and augmentation under
# 3 h on one H100).
#
# UNRUN: written without a GPU (checked with `bash -n` only); expect to fix a detail on the first run.
#
#   bash bench/gpu.sh                                   # recipes/llama-3.1-8b, 1,000 segments
#   bash bench/gpu.sh recipes/qwen2.5-7b 1000
#
# Needs a CUDA torch already installed and access to the recipe's models (HF_TOKEN for Llama). Each stage runs twice,
# on a tenth of the segments and on all of them: the difference of the two times is the steady rate, without model
# loading and engine start-up, which a 502k-pair run pays once.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${1:-recipes/llama-3.1-8b}
SEGMENTS=${2:-1000}
POOL=${POOL:-502000}
OUT=${OUT:-outputs/bench-gpu/$(basename "$RECIPE")}
# The base the recipe's backward model is trained on: a LoRA adapter on it costs about the same per token.
MODEL=${MODEL:-$(sed -n 's/^model_name_or_path: *//p' "$RECIPE/backward.yaml")}
SMALL=$((SEGMENTS / 10))

pip install -e ".[vllm]"
mkdir -p "$OUT"

# Documents beyond the segments needed: the corpus filters drop some, and a document may give several segments.
humpback corpus --config "$RECIPE/corpus.yaml" --max_documents $((SEGMENTS * 2)) --output_dir "$OUT/corpus"

seconds() {
  local start end
  start=$(date +%s.%N)
  "$@" > "$OUT/last.log" 2>&1 || { tail -20 "$OUT/last.log"; exit 1; }
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

augment() {
  humpback augment --config "$RECIPE/augment.yaml" --engine vllm --model_name_or_path "$MODEL" \
    --corpus "$OUT/corpus/dataset" --max_segments "$1" --output_dir "$OUT/augment-$1"
}

curate() {
  humpback curate --config "$RECIPE/curate.yaml" --curation_engine vllm --curation_mode logits \
    --model_name_or_path "$MODEL" --calibration_dev_set none --candidates "$1" --output_dir "$2"
}

rate() {  # items, seconds for a tenth, seconds for all -> steady items/s
  echo "scale=3; ($1 - $1 / 10) / ($3 - $2)" | bc
}

project() {  # items/s -> hours for the pool
  echo "scale=2; $POOL / $1 / 3600" | bc
}

t_small=$(seconds augment "$SMALL")
t_all=$(seconds augment "$SEGMENTS")
candidates="$OUT/augment-$SEGMENTS/candidates.jsonl"
pairs=$(wc -l < "$candidates")
augment_rate=$(rate "$SEGMENTS" "$t_small" "$t_all")

head -n $((pairs / 10)) "$candidates" > "$OUT/candidates-small.jsonl"
c_small=$(seconds curate "$OUT/candidates-small.jsonl" "$OUT/curate-small")
c_all=$(seconds curate "$candidates" "$OUT/curate-all")
curate_rate=$(rate "$pairs" "$c_small" "$c_all")

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "recipe $RECIPE, model $MODEL, $SEGMENTS segments -> $pairs candidate pairs"
echo "augmentation: ${t_all} s for $SEGMENTS segments; steady ${augment_rate} pairs/s;" \
  "$POOL pairs in $(project "$augment_rate") h (target < 3 h)"
echo "curation (logits): ${c_all} s for $pairs pairs; steady ${curate_rate} pairs/s;" \
  "$POOL pairs in $(project "$curate_rate") h (target < 2.5 h)"
