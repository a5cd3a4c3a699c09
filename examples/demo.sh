#!/bin/sh
# Run every stage that exists so far on the example corpus and print what it built.
# Usage: examples/demo.sh DB CORPUS_DIR
set -eu
db=${1:-demo-db}
corpus=${2:-examples/corpus}
echo "== retrodb chunk ($corpus -> $db)"
retrodb chunk "$corpus" --db "$db" --shard-size 10000 --workers 2
echo "== retrodb embed ($db, all-MiniLM-L6-v2 on the CPU: minutes for the full corpus)"
retrodb embed --db "$db"
echo "== retrodb index (train, add parts in parallel, merge on disk, measure recall)"
retrodb index --db "$db" --workers 2
echo "== retrodb query"
retrodb query "$db" "How do I define a class with a custom constructor?" -k 2
echo "== retrodb info"
retrodb info "$db"
