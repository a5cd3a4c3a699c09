#!/bin/sh
# Run every stage on the example corpus and print what it built.
# Usage: examples/demo.sh DB CORPUS_DIR   (DEMO_STEPS sets the training steps, default 60)
set -eu
db=${1:-demo-db}
corpus=${2:-examples/corpus}
steps=${DEMO_STEPS:-60}
echo "== retrodb chunk ($corpus -> $db)"
retrodb chunk "$corpus" --db "$db" --root "$corpus" --split-size 2M --workers 2
echo "== retrodb embed ($db, all-MiniLM-L6-v2 on the CPU: minutes for the full corpus)"
retrodb embed --db "$db"
echo "== retrodb index (train, add parts in parallel, merge on disk, measure recall)"
retrodb index --db "$db" --workers 2
echo "== retrodb neighbours (k=2, own document and validation documents excluded)"
retrodb neighbours --db "$db" -k 2 --workers 2
retrodb neighbours report --db "$db"
echo "== retrodb query"
retrodb query "$db" "How do I define a class with a custom constructor?" -k 2
echo "== retrodb train: RETRO (small preset, $steps steps) and the same decoder without retrieval"
retrodb train --db "$db" --run demo-retro --preset small --steps "$steps" --batch-size 4 \
    --warmup 10 --eval-every 0 --checkpoint-every "$steps"
retrodb train --db "$db" --run demo-baseline --preset small --steps "$steps" --batch-size 4 \
    --warmup 10 --eval-every 0 --checkpoint-every "$steps" --no-retrieval
echo "== retrodb eval"
retrodb eval --db "$db" --run demo-retro --max-sequences 48
retrodb eval --db "$db" --run demo-baseline --max-sequences 48
echo "== retrodb generate (live retrieval from the index for every completed chunk)"
retrodb generate --db "$db" --run demo-retro "The for statement in Python differs a bit from what you may be used to in C. Rather than always iterating over an arithmetic progression of numbers, Python's for statement iterates over the items of any sequence" --max-tokens 64 --show-retrieval
echo "== retrodb info"
retrodb info "$db"
echo "== summary"
python examples/summary.py "$db"
