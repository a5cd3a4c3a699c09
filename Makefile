# retrodb: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO_DB ?= demo-db
CORPUS_CACHE ?= .cache/corpus

.PHONY: install test demo corpus bench bench-embed bigdb clean

install: $(VENV)/.installed

# torch first, pinned to the CPU wheel, when none is importable: a bare torch
# requirement would otherwise pull a multi-GB CUDA build. GPU users bring their own.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The suite, then BENCHMARKS.md against the result files: rendered from them, and no
# result measured on a dirty tree or before the last change to the code it measures.
test: install
	$(BIN)/python -m pytest -q
	$(BIN)/python benchmarks/report.py --check

# The example corpus: the Python 3.11 documentation sources (PSF licence) from Debian's
# python3.11-doc, unpacked without root. Falls back to the committed slice offline.
corpus:
	sh examples/fetch_corpus.sh $(CORPUS_CACHE)

demo: install corpus
	PATH="$(abspath $(BIN)):$$PATH" sh examples/demo.sh $(DEMO_DB) "$$(cat $(CORPUS_CACHE)/PATH)"

# Every benchmark, each writing benchmarks/results/NAME.json, then BENCHMARKS.md from them.
# bench_retro builds its own database (Python docs + the standard library) under .cache;
# bench_search needs one of >= 1M keys: `make bigdb`.
BIG_DB ?= .cache/big/db
BIG_TEXT ?= .cache/big/text
bench: install corpus bigdb
	$(BIN)/python benchmarks/bench_chunk.py --corpus "$$(cat $(CORPUS_CACHE)/PATH)" --copies 2 --rounds 3
	$(BIN)/python benchmarks/bench_embed.py --copies 3 --rounds 3
	$(BIN)/python benchmarks/bench_retro.py
	$(BIN)/python benchmarks/bench_neighbours.py --db .cache/retro/db
	$(BIN)/python -m pip install -q --no-deps retro-pytorch==0.3.9 einops  # baseline only
	$(BIN)/python benchmarks/bench_train.py --db .cache/retro/db
	$(BIN)/python benchmarks/bench_search.py --db $(BIG_DB)
	test -f $(DEMO_DB)/index/manifest.json || $(MAKE) demo
	$(BIN)/python benchmarks/bench_serve.py --db $(DEMO_DB)
	$(BIN)/python benchmarks/report.py

# The >= 1M-key database of bench_search: ~250 MB of real text (Debian's Linux, Perl,
# Python and Sphinx docs, then the installed packages' Python sources), chunked in 32 MB
# splits (~1.2M chunks) and embedded with the default MiniLM, once: about 2 hours on 2
# CPU cores. Both steps resume where an interrupted run stopped.
bigdb: $(BIG_DB)/embeddings/manifest.json

$(BIG_DB)/embeddings/manifest.json: | install
	test -f $(BIG_TEXT)/part-000.jsonl || $(BIN)/python benchmarks/real_corpus.py --out $(BIG_TEXT) --max-mb 250
	HF_HUB_OFFLINE=1 $(BIN)/retrodb chunk $(BIG_TEXT) --db $(BIG_DB) --split-size 32M --workers 2
	HF_HUB_OFFLINE=1 $(BIN)/retrodb embed --db $(BIG_DB)

# embed vs SentenceTransformer.encode on the same chunks (committed slice, 3 copies)
bench-embed: install
	$(BIN)/python benchmarks/bench_embed.py --copies 3 --rounds 3

clean:
	rm -rf $(DEMO_DB) $(DEMO_DB).tokenizer.json .pytest_cache
