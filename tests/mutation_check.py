"""Tests that can fail: break the code on purpose, run the test that guards it, expect it
to fail, restore the code.

Each mutation is a plausible bug (a wrong rule, a missing check) in one line of the
library; the test named beside it must fail while it is in place and pass again once it
is gone. Writes tests/mutations.md (the table below, machine-written).

Usage: python tests/mutation_check.py [NAME ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (file, original text, mutated text, test node id, what the bug would be)
MUTATIONS = {
    "continuation": (
        "retrodb/stores/tokens.py",
        "same = (self.doc_ids(nxt) == self.doc_ids(ids)) & (nxt >= 0)",
        "same = nxt >= 0",
        "tests/test_neighbours.py::test_continuation_is_the_next_chunk_of_the_same_document",
        "a neighbour's continuation taken from the next document"),
    "best-hit": (
        "retrodb/training/generate.py",
        "neigh[c] = np.array([_hit_id(h) for h in hits][:k] +",
        "neigh[c] = np.array([_hit_id(h) for h in hits][::-1][:k] +",
        "tests/test_generate.py::test_live_retrieval_from_the_real_index",
        "generation feeds the worst hits instead of the best"),
    "padding-loss": (
        "retrodb/training/model/retro.py",
        "return F.cross_entropy(logits.float(), targets[keep], reduction=reduction)",
        "return F.cross_entropy(h.reshape(-1, h.shape[-1]) @ self.embed.weight.T, "
        "targets.reshape(-1).clamp(min=0), reduction=reduction)",
        "tests/test_model.py::test_loss_ignores_padding_targets",
        "padding targets counted as token 0"),
    "encoder-detached": (
        "retrodb/training/model/retro.py",
        "encode = (lambda h: self.encoder(self.embed(neighbours), neighbour_mask, h))",
        "encode = (lambda h: self.encoder(self.embed(neighbours), neighbour_mask, "
        "h).detach())",
        "tests/test_train.py::test_retrieval_weights_learn",
        "no gradient reaches the neighbour encoder"),
    "ddp-unsynced": (
        "retrodb/training/train.py",
        "fwd = DDP(fwd, device_ids=[device.index] if device.type == \"cuda\" else None)",
        "fwd = fwd",
        "tests/test_ddp.py::test_train_under_torchrun_then_resume_alone",
        "ranks train without averaging their gradients"),
    "verify-index": (
        "retrodb/ops/verify_sets.py",
        "        index_identity(db, EmbeddingStore(db))",
        "        pass",
        "tests/test_verify.py::"
        "test_verify_finds_a_merged_index_that_does_not_hold_the_current_keys",
        "verify does not compare the merged index with the current keys"),
    "half-written": (
        "retrodb/core/storage.py",
        "        return p.with_name(f\"{TMP_PREFIX}{p.name}\")",
        "        return p",
        "tests/test_verify.py::test_readers_never_see_a_half_written_file",
        "shards written under their final name"),
    "recall-ties": (
        "retrodb/stages/index/recall.py",
        "    hit = valid & (exact >= gt_scores[:, k - 1:k] - eps)",
        "    hit = valid & (exact > gt_scores[:, k - 1:k] + eps)",
        "tests/test_index.py::test_recall_at_chosen_operating_point_reaches_target",
        "recall that misses ties with the k-th exact score"),
    "same-doc-filter": (
        "retrodb/stages/neighbours/search.py",
        "                drop_d = elig & (doc == qdocs[:, None])",
        "                drop_d = elig & (doc == -2)",
        "tests/test_neighbours.py::test_every_chunk_gets_k_neighbours_none_from_its_own_"
        "document",
        "neighbours from the query's own document kept"),
    "chunk-ids": (
        "retrodb/stages/chunk/stage.py",
        "        return {\"first_id\": offsets[\"first_id\"] + counts[\"rows\"],",
        "        return {\"first_id\": offsets[\"first_id\"] + counts[\"rows\"] + 1,",
        "tests/test_chunk.py::test_round_trip_ids_and_manifest",
        "ids of a split not following the split before"),
}


def run(test: str) -> bool:
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    return p.returncode == 0


def check(name: str) -> tuple[bool, bool, float]:
    path, old, new, test, _ = MUTATIONS[name]
    f = ROOT / path
    text = f.read_text()
    if text.count(old) != 1:
        raise SystemExit(f"{name}: {path} no longer holds the original line once")
    t0 = time.time()
    f.write_text(text.replace(old, new))
    try:
        mutated_passes = run(test)
    finally:
        f.write_text(text)
    return mutated_passes, run(test), time.time() - t0


def main() -> None:
    names = sys.argv[1:] or list(MUTATIONS)
    rows = ["| mutation (the bug) | file | test | with the bug | restored |",
            "|---|---|---|---|---|"]
    ok = True
    for name in names:
        mutated, restored, _ = check(name)
        ok &= (not mutated) and restored
        path, _, _, test, what = MUTATIONS[name]
        rows.append(f"| {name}: {what} | {path} | {test.split('::')[1]} | "
                    f"{'passes (test too weak)' if mutated else 'fails'} | "
                    f"{'passes' if restored else 'FAILS'} |")
        print(rows[-1], flush=True)
    if not sys.argv[1:]:
        (ROOT / "tests" / "mutations.md").write_text(
            "# Tests that can fail\n\nWritten by `python tests/mutation_check.py`: each "
            "row put a plausible bug into the library, ran the test that guards it, and "
            "restored the code.\n\n" + "\n".join(rows) + "\n")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
