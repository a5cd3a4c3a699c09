"""Build a large corpus of real text for the scale and search benchmarks.

Sources, all real text installable without root:
  - Debian documentation packages (`apt-get download` + `dpkg -x`): the Linux kernel
    docs (linux-doc-6.1, reStructuredText), Perl's (perl-doc, POD), Python's
    (python3.11-doc, the .rst.txt sources) and Sphinx's (sphinx-doc);
  - the Python source files of the packages installed in this environment and of the
    standard library (real code and docstrings; deterministic order).

Written as JSONL files of about 64 MB ({"text": ..., "source": ...} per document), so
the chunk stage cuts them into byte ranges; `--max-mb` caps the total.

Usage: python benchmarks/real_corpus.py --out DIR [--max-mb 250] [--debs DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import site
import subprocess
import sys
from pathlib import Path

PACKAGES = ["linux-doc-6.1", "perl-doc", "python3.11-doc", "sphinx-doc"]
DOC_SUFFIXES = (".rst", ".txt", ".pod", ".rst.gz", ".txt.gz", ".pod.gz")


def fetch(debs: Path) -> Path:
    """Download and unpack the Debian packages (once)."""
    root = debs / "x"
    if root.is_dir():
        return root
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True,
                   capture_output=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def documents(root: Path):
    """(source name, text) of every documentation file, then every Python source."""
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name.endswith(DOC_SUFFIXES) and "changelog" not in p.name:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            yield "debian/" + str(p.relative_to(root)), raw.decode("utf-8", "replace")
    import sysconfig

    for sp in sorted(site.getsitepackages()) + [sysconfig.get_paths()["stdlib"]]:
        for p in sorted(Path(sp).rglob("*.py")):
            if p.is_file() and "site-packages" not in p.relative_to(sp).parts:
                yield "python/" + str(p.relative_to(sp)), p.read_text("utf-8", "replace")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-mb", type=float, default=250)
    ap.add_argument("--debs", type=Path, default=Path(".cache/debs"))
    args = ap.parse_args()
    root = fetch(args.debs)
    args.out.mkdir(parents=True, exist_ok=True)
    limit, total, part, f = args.max_mb * 1e6, 0, 0, None
    written = 0
    for source, text in documents(root):
        if not text.strip():
            continue
        line = json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n"
        if f is None or written > 64e6:
            if f is not None:
                f.close()
            f = open(args.out / f"part-{part:03d}.jsonl", "w", encoding="utf-8")
            part, written = part + 1, 0
        f.write(line)
        n = len(line.encode("utf-8"))
        written += n
        total += n
        if total >= limit:
            break
    if f is not None:
        f.close()
    print(f"{total / 1e6:.1f} MB of real text in {part} JSONL files under {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
