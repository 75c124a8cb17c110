#!/usr/bin/env bash
# The char-LM with each of fastrnn's options beyond torch.nn, against the plain layer, at the same
# budget: the demo's model and data (examples/char_lm.py --main's shapes), STEPS optimizer steps,
# one seed; prints a Markdown table of the final validation perplexity and writes each run's log
# to OUT. Perplexity does not depend on timing, so two runs go at once, one thread each.
#   usage: scripts/charlm_options.sh [OUT] ; STEPS=400 by default
set -euo pipefail
out=${1:-charlm-options}
steps=${STEPS:-400}
py=${PYTHON:-python}
mkdir -p "$out"
common=(--cell lstm --layers 2 --hidden 256 --embed 64 --seq-len 64 --batch-size 32 --dropout 0.1 --lr 3e-3
        --steps "$steps" --log-every 100 --seed 1234 --device cpu)
names=(plain layer_norm zoneout recurrent_dropout weight_drop all_but_ln layer_norm+rd+wd)
flags=("" "--layer-norm" "--zoneout 0.1" "--recurrent-dropout 0.25" "--weight-drop 0.3"
       "--zoneout 0.1 --recurrent-dropout 0.25 --weight-drop 0.3"
       "--layer-norm --recurrent-dropout 0.25 --weight-drop 0.3")
run() {  # name, flags
  echo "fastrnn char-LM options: training '$1' ($2) for $steps steps -> $out/$1.log" >&2
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 "$py" examples/char_lm.py "${common[@]}" $2 > "$out/$1.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do
  run "${names[i]}" "${flags[i]}" &
  if ((i + 1 < ${#names[@]})); then run "${names[i + 1]}" "${flags[i + 1]}" & fi
  wait
done
echo "| options | validation perplexity after $steps steps |"
echo "|---|---|"
for ((i = 0; i < ${#names[@]}; i++)); do
  ppl=$(grep -o "validation perplexity [0-9.]*" "$out/${names[i]}.log" | tail -1 | awk '{print $3}')
  echo "| ${flags[i]:-(none)} | ${ppl:-?} |"
done
