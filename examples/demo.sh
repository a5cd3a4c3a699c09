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
echo "== retrodb info"
retrodb info "$db"
