#!/bin/sh
# Run every stage on the example corpus and print what it built.
# Usage: examples/demo.sh DB CORPUS_DIR   (DEMO_STEPS sets the baseline's training steps,
# default 200; DEMO_TOKENIZER where the trained tokenizer goes, default DB.tokenizer.json)
set -eu
db=${1:-demo-db}
corpus=${2:-examples/corpus}
steps=${DEMO_STEPS:-200}
tok=${DEMO_TOKENIZER:-$db.tokenizer.json}
echo "== retrodb tokenizer (a lossless byte-level BPE for the language model)"
test -f "$tok" || retrodb tokenizer "$corpus" --out "$tok" --vocab-size 16384
echo "== retrodb chunk ($corpus -> $db)"
retrodb chunk "$corpus" --db "$db" --root "$corpus" --tokenizer "$tok" --split-size 2M --workers 2
echo "== retrodb embed ($db, all-MiniLM-L6-v2 on the CPU: minutes for the full corpus)"
retrodb embed --db "$db"
echo "== retrodb index (train, add parts in parallel, merge on disk, measure recall)"
retrodb index --db "$db" --workers 2
echo "== retrodb neighbours (k=2, own document and validation documents excluded)"
retrodb neighbours --db "$db" -k 2 --workers 2
retrodb neighbours report --db "$db"
echo "== retrodb query"
retrodb query "$db" "How do I define a class with a custom constructor?" -k 2
echo "== retrodb train: a baseline (cpu preset, $steps steps), then RETROfit: its decoder frozen, encoder and CCA trained"
retrodb train --db "$db" --run demo-baseline --preset cpu --no-retrieval --steps "$steps" \
    --batch-size 4 --warmup 10 --eval-every 0 --checkpoint-every "$steps"
retrodb train --db "$db" --run demo-retrofit --preset cpu --retrofit demo-baseline \
    --steps "$((steps / 2))" --batch-size 4 --retrieval-lr 3e-3 --warmup 5 --eval-every 0 \
    --checkpoint-every "$((steps / 2))"
echo "== retrodb eval (bits per byte with retrieval, without, filtered at r <= 0.2, by leakage)"
retrodb eval --db "$db" --run demo-retrofit --run demo-baseline --max-sequences 48
echo "== retrodb generate (live retrieval from the index for every completed chunk)"
prompt=$(mktemp)
printf '%s' "The for statement in Python differs a bit from what you may be used to in C. Rather than always iterating over an arithmetic progression of numbers, Python's for statement iterates over the items of any sequence" > "$prompt"
retrodb generate --db "$db" --run demo-retrofit --prompt-file "$prompt" --max-tokens 64 --show-retrieval
rm -f "$prompt"
echo "== retrodb info"
retrodb info "$db"
echo "== summary"
python examples/summary.py "$db"
