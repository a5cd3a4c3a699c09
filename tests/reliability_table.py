"""Write RELIABILITY.md's bad-input table from a run of tests/test_bad_input.py.

    python tests/reliability_table.py

runs the bad-input tests with RETRODB_BAD_INPUT_LOG set (each passing case records its
command, exit status and the exact error line, temporary paths shown as TMP) and
replaces the table between the markers in RELIABILITY.md. No line of it is typed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "RELIABILITY.md"
BEGIN = "<!-- bad-input table: written by tests/reliability_table.py -->"
END = "<!-- end of bad-input table -->"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "cases.jsonl"
        env = dict(os.environ, RETRODB_BAD_INPUT_LOG=str(log))
        p = subprocess.run([sys.executable, "-m", "pytest", "-q",
                            "tests/test_bad_input.py"], cwd=ROOT, env=env)
        if p.returncode:
            raise SystemExit("tests/test_bad_input.py failed: the table is not written")
        rows = [json.loads(x) for x in log.read_text().splitlines()]
    lines = [BEGIN, "", "| case | command | exit | the line it printed |", "|---|---|---|---|"]
    for r in rows:
        what = r["doc"] or r["case"].replace("_", " ")
        err = r["error"].replace("|", "\\|")
        lines.append(f"| {what} | `{r['command']}` | {r['status']} | `{err}` |")
    lines += ["", f"{len(rows)} cases, every one passing when this table was written.", END]
    text = DOC.read_text()
    a, b = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:a] + "\n".join(lines) + text[b:])
    print(f"wrote {len(rows)} rows to {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
