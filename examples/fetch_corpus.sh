#!/bin/sh
# Fetch the example corpus into CACHE and write its directory to CACHE/PATH.
# Source: Debian's python3.11-doc, whose _sources/**/*.rst.txt are the plain-text
# sources of the Python documentation (~11 MB, ~500 documents, PSF licence; see
# examples/LICENSE-python-docs.txt). apt-get download + dpkg -x need no root install.
# Without network or apt, falls back to the small slice committed in examples/corpus.
set -eu
cache=${1:-.cache/corpus}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
src="$cache/x/usr/share/doc/python3.11/html/_sources"
if [ ! -d "$src" ]; then
    if command -v apt-get >/dev/null 2>&1 && (cd "$cache" && apt-get download python3.11-doc >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get download python3.11-doc >/dev/null 2>&1; }); then
        dpkg -x "$cache"/python3.11-doc_*.deb "$cache/x"
        rm -f "$cache"/python3.11-doc_*.deb
    fi
fi
if [ -d "$src" ]; then
    echo "$src" > "$cache/PATH"
    echo "example corpus: Python 3.11 documentation sources ($(find "$src" -name '*.rst.txt' | wc -l) documents)" >&2
else
    here=$(cd "$(dirname "$0")" && pwd)
    echo "$here/corpus" > "$cache/PATH"
    echo "example corpus: python3.11-doc unavailable; using the committed slice examples/corpus" >&2
fi
