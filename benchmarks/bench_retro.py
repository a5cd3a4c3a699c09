"""Does retrieval lower bits per byte? RETRO (from scratch and RETROfit) against its
no-retrieval baseline, same decoder, same tokens seen, several seeds, on real text.

Corpus: the Python 3.11 documentation sources (`make corpus`) and the Python standard
library's own source files (this interpreter's, site-packages excluded), read as text
(`--text-suffix .py`). The whole pipeline runs through the CLI, commands recorded:
tokenizer (byte-level BPE), chunk, embed, index, neighbours (k=2, own document and
validation documents excluded), then per seed:
  - baseline:  --no-retrieval, S steps;
  - RETRO:     the same decoder with CCA and encoder, S steps, from the same seed (its
               decoder starts identical to the baseline's; CCA's output starts at zero);
  - RETROfit:  the baseline's final decoder, frozen; encoder and CCA trained for S/4
               more steps (a run keeps only its latest checkpoint): the decoder has
               seen exactly the baseline's tokens, only the retrieval weights more.
Every run is evaluated on every validation window: bits per byte (true UTF-8 bytes of
the predicted tokens) with retrieval, with it off, filtered at α = 0.2, and by leakage
bucket; the baseline is bucketed by the same neighbours. Runs and stages already done
are reused (the database lives in --work), so an interrupted benchmark resumes.

Usage: python benchmarks/bench_retro.py [--steps 600] [--seeds 0 1] [--work .cache/retro]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from common import ROOT, Measure, Result, Side

ARMS = ("baseline", "retro", "retrofit")


def sh(cmd: list[str], log: list, out: Path | None = None) -> float:
    """Run a retrodb command, record it (paths relative to the repository), time it."""
    shown = " ".join(_rel(c) for c in cmd)
    print(f"$ {shown}", file=sys.stderr, flush=True)
    t = time.time()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    with open(out, "w") if out else open(os.devnull, "w") as f:
        p = subprocess.run(cmd, stdout=f if out else None, env=env)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {shown}")
    took = time.time() - t
    log.append({"command": shown, "seconds": round(took, 1)})
    return took


def _rel(c: str) -> str:
    for base, name in ((str(ROOT) + "/", ""), (stdlib() + "/", "$STDLIB/"),
                       (stdlib(), "$STDLIB")):
        if c.startswith(base):
            return name + c[len(base):]
    return c


def stdlib() -> str:
    return sysconfig.get_paths()["stdlib"]


def retrodb() -> str:
    return str(Path(sys.executable).with_name("retrodb"))


def prepare(a, db: Path, log: list) -> dict:
    docs = Path((ROOT / ".cache/corpus/PATH").read_text().strip())
    lib = Path(stdlib())
    py = ["--text-suffix", ".py", "--exclude", "site-packages/*", "--exclude",
          "dist-packages/*"]
    tok = a.work / "tokenizer.json"
    r = retrodb()
    if not tok.exists():
        sh([r, "tokenizer", str(docs), str(lib), *py, "--root", str(lib), "--out",
            str(tok), "--vocab-size", str(a.vocab_size)], log)
    sh([r, "chunk", str(docs), "--db", str(db), "--root", str(docs), "--tokenizer",
        str(tok), "--split-size", "8M", "--workers", "2"], log)
    sh([r, "chunk", str(lib), *py, "--db", str(db), "--root", str(lib), "--split-size",
        "8M", "--workers", "2"], log)
    sh([r, "embed", "--db", str(db)], log)
    sh([r, "index", "--db", str(db), "--workers", "2"], log)
    sh([r, "neighbours", "--db", str(db), "-k", "2", "--workers", "2", "--val-fraction",
        str(a.val_fraction)], log)
    info = json.loads(subprocess.run([r, "info", str(db), "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    return info


def run_name(arm: str, seed: int, steps: int) -> str:
    return f"{arm}-s{seed}-{steps}"


def last_step(db: Path, run: str) -> int:
    ck = db / "models" / run / "checkpoints"
    steps = [int(p.name.split("-")[1]) for p in ck.glob("step-*")] if ck.is_dir() else []
    return max(steps, default=0)


def train(a, db: Path, arm: str, seed: int, log: list) -> dict:
    """Train one arm for one seed (or resume it); its wall time (None if reused)."""
    S = a.steps
    base = run_name("baseline", seed, S)
    run = run_name(arm, seed, S)
    steps = S if arm != "retrofit" else S - a.retrofit_at
    common = ["--db", str(db), "--run", run, "--preset", a.preset, "--steps", str(steps),
              "--batch-size", str(a.batch_size), "--seq-chunks", "8", "--lr", str(a.lr),
              "--warmup", str(a.warmup), "--seed", str(seed), "--val-fraction",
              str(a.val_fraction), "--eval-every", "0"]
    if arm == "baseline":
        extra = ["--no-retrieval", "--checkpoint-every", str(a.retrofit_at)]
    else:
        lr = a.retrofit_lr if arm == "retrofit" else a.retrieval_lr
        extra = ["--retrieval-lr", str(lr), "--retrieval-warmup",
                 str(a.retrieval_warmup), "--checkpoint-every", str(steps)]
        if arm == "retrofit":
            extra += ["--retrofit", str(db / "models" / base / "checkpoints" /
                                        f"step-{S:06d}")]
    times = a.work / "train-seconds.json"  # wall time of each finished run, kept
    known = json.loads(times.read_text()) if times.exists() else {}
    done = last_step(db, run)
    if done >= steps:
        return {"run": run, "seconds": known.get(run), "steps": steps}
    took = sh([retrodb(), "train", *common, *extra] + (["--resume"] if done else []), log)
    if not done:  # a resumed run's wall time would be a part of it
        known[run] = round(took, 1)
        times.write_text(json.dumps(known, indent=1))
    return {"run": run, "seconds": known.get(run), "steps": steps}


def evaluate(a, db: Path, runs: list[str], log: list) -> dict:
    out = a.work / f"eval-{a.steps}.json"
    sh([retrodb(), "eval", "--db", str(db), *[x for r in runs for x in ("--run", r)],
        "--exclude-overlap", "0.2", "--json"], log, out)
    return {r["run"]: r for r in json.loads(out.read_text())}


def report(a, info: dict, trained: dict, evals: dict, log: list, flops: dict) -> None:
    res = Result("retro", ["retrodb/training", "retrodb/stores/overlap.py",
                           "retrodb/stages/tokenizer.py"],
                 "RETRO vs its baseline: bits per byte on held-out documents")
    seeds = a.seeds
    bpb = {(arm, s): evals[run_name(arm, s, a.steps)] for arm in ARMS for s in seeds}
    base = [bpb["baseline", s]["no_retrieval"]["bpb"] for s in seeds]
    for arm, label in (("retro", "RETRO from scratch"), ("retrofit", "RETROfit")):
        for mode, what in (("retrieval", "retrieval on"),
                           ("leakage_filtered", "neighbours with r > 0.2 removed"),
                           ("no_retrieval", "retrieval off")):
            ours = [bpb[arm, s][mode]["bpb"] for s in seeds]
            res.add(Measure(f"validation bpb, {label} ({what}) vs baseline, per seed",
                            "bpb", Side(label, ours), Side("baseline", base),
                            higher_is_better=False))
    rows = []
    for arm in ARMS:
        for s in seeds:
            e, t = bpb[arm, s], trained[arm, s]
            rows.append([arm, s, t["steps"], t["tokens"], t["params"],
                         t["seconds"] if t["seconds"] is not None else "reused",
                         e.get("retrieval", {}).get("bpb"), e["no_retrieval"]["bpb"],
                         e.get("leakage_filtered", {}).get("bpb")])
    res.table("Every run (bits per byte of the validation documents; tokens = tokens "
              "trained on, decoder and retrieval together)",
              ["arm", "seed", "steps", "tokens", "parameters", "wall s", "bpb retrieval",
               "bpb retrieval off", "bpb r ≤ 0.2"], rows)
    res.table("By leakage of the predicted chunk (mean bpb over seeds; the paper's Fig. 6)",
              ["r", "tokens", "baseline", "RETRO", "RETROfit"], leakage_rows(bpb, seeds))
    gains = {}
    for arm in ("retro", "retrofit"):
        for mode in ("retrieval", "leakage_filtered"):
            g = [1 - bpb[arm, s][mode]["bpb"] / bpb["baseline", s]["no_retrieval"]["bpb"]
                 for s in seeds]
            gains[f"{arm}_{mode}_gain_pct"] = round(100 * sum(g) / len(g), 2)
            gains[f"{arm}_{mode}_gain_min_pct"] = round(100 * min(g), 2)
    res.facts.update(gains, corpus_tokens=info["stages"]["chunks"]["tokens"],
                     corpus_chunks=info["stages"]["chunks"]["rows"],
                     val_docs=bpb["baseline", seeds[0]]["validation_docs"],
                     val_bytes=bpb["baseline", seeds[0]]["no_retrieval"]["bytes"],
                     steps=a.steps, batch=a.batch_size, seeds=len(seeds),
                     retrofit_steps=a.steps - a.retrofit_at, preset=a.preset, lr=a.lr,
                     retrieval_lr=a.retrieval_lr, retrofit_lr=a.retrofit_lr)
    res.facts["commands"] = log
    for arm in ARMS:
        res.facts[f"{arm}_pflop"] = round(flops[arm] / 1e15, 3)
        res.facts[f"{arm}_gpu_min"] = round(flops[arm] / GPU_FLOPS / 60, 2)
    res.notes.append(
        "Compute per run (counted by torch, forward + backward): baseline "
        "{baseline_pflop} PFLOP, RETRO {retro_pflop}, RETROfit {retrofit_pflop}; at an "
        "assumed 50 TFLOP/s sustained on one GPU (a few percent of a current GPU's bf16 "
        "peak, which a model this small cannot fill) that is {baseline_gpu_min}, "
        "{retro_gpu_min} and {retrofit_gpu_min} minutes: an estimate, not a measurement "
        "(no GPU was lent to this run).")
    res.notes += [
        "Corpus: the Python 3.11 documentation sources and the Python standard library's "
        "source files, {corpus_tokens} tokens in {corpus_chunks} chunks of a byte-level "
        "BPE trained on them; {val_docs} validation documents ({val_bytes} bytes) held "
        "out; neighbours k = 2 from the training documents only.",
        "Runs: preset {preset}, {steps} steps of {batch} sequences of 512 tokens, lr "
        "{lr}, retrieval lr {retrieval_lr}; RETROfit freezes the baseline's final decoder "
        "and trains encoder and CCA (lr {retrofit_lr}) for {retrofit_steps} more steps (its compute counts "
        "the baseline's); {seeds} seeds.",
        "Mean gain over the baseline (1 − bpb ratio, the worst seed in brackets): RETRO "
        "{retro_retrieval_gain_pct}% ({retro_retrieval_gain_min_pct}%), filtered at "
        "r ≤ 0.2 {retro_leakage_filtered_gain_pct}% "
        "({retro_leakage_filtered_gain_min_pct}%); RETROfit "
        "{retrofit_retrieval_gain_pct}% ({retrofit_retrieval_gain_min_pct}%), filtered "
        "{retrofit_leakage_filtered_gain_pct}% ({retrofit_leakage_filtered_gain_min_pct}%).",
        "The leakage plot is docs/retro-leakage.png; the commands and their wall times "
        "are in benchmarks/results/retro.json (facts.commands)."]
    plot(bpb, seeds)
    res.save()


def leakage_rows(bpb: dict, seeds: list[int]) -> list[list]:
    first = bpb["baseline", seeds[0]]["no_retrieval"]["by_leakage"]
    rows = []
    for i, b in enumerate(first):
        row = [b["r"], b["tokens"]]
        for arm, mode in (("baseline", "no_retrieval"), ("retro", "retrieval"),
                          ("retrofit", "retrieval")):
            vals = [bpb[arm, s][mode]["by_leakage"][i]["bpb"] for s in seeds
                    if bpb[arm, s][mode]["by_leakage"][i]["tokens"]]
            row.append(sum(vals) / len(vals) if vals else None)
        rows.append(row)
    return rows


def plot(bpb: dict, seeds: list[int]) -> None:
    sys.path.insert(0, str(ROOT))
    from retrodb.training.plot import plot_leakage

    series = []
    for arm, mode, label in (("baseline", "no_retrieval", "baseline"),
                             ("retro", "retrieval", "RETRO"),
                             ("retrofit", "retrieval", "RETROfit")):
        runs = [bpb[arm, s][mode]["by_leakage"] for s in seeds]
        series.append((f"{label} ({len(seeds)} seeds)", runs[0], runs[1:]))
    plot_leakage(series, ROOT / "docs" / "retro-leakage.png",
                 "Validation bits per byte by leakage (mean, range over seeds)")


GPU_FLOPS = 50e12  # assumed sustained FLOP/s of one data-centre GPU on a model this small


def step_flops(db: Path, preset: str, batch: int, retrieval: bool, frozen: bool) -> float:
    """FLOPs of one training step (forward + backward), counted by torch on a real batch;
    a frozen decoder (RETROfit) still runs its forward and backpropagates through the
    layers above the first CCA, which the count includes."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from retrodb.core.db import Database
    from retrodb.stores.split import load_split
    from retrodb.training.model import Retro, is_retrieval, preset_config
    from retrodb.training.sequences import Sequences, neighbour_table
    from retrodb.training.device import to_torch

    d = Database(db)
    cfg = d.config()
    mc = preset_config(preset, cfg["tokenizer"]["vocab_size"], cfg["chunk_size"], retrieval)
    seqs = Sequences(d, load_split(d), "train", 8,
                     table=neighbour_table(d, "train") if retrieval else None)
    model = Retro(mc)
    if frozen:
        for n, p in model.named_parameters():
            p.requires_grad = is_retrieval(n)
    t = to_torch(seqs.batch(np.arange(batch)), torch.device("cpu"))
    with FlopCounterMode(display=False) as fc:
        model(**t).backward()
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "retro")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--retrieval-lr", type=float, default=5e-4)
    ap.add_argument("--retrofit-lr", type=float, default=3e-3,
                    help="retrieval lr of RETROfit (its decoder is frozen: nothing to "
                    "disturb)")
    ap.add_argument("--retrieval-warmup", type=int, default=20)
    ap.add_argument("--vocab-size", type=int, default=16384)
    ap.add_argument("--val-fraction", type=float, default=0.04)
    ap.add_argument("--prepare-only", action="store_true")
    a = ap.parse_args()
    a.retrofit_at = a.steps * 3 // 4
    a.work.mkdir(parents=True, exist_ok=True)
    db = a.work / "db"
    log: list = []
    info = prepare(a, db, log)
    if a.prepare_only:
        return
    trained = {}
    for s in a.seeds:
        for arm in ARMS:
            t = train(a, db, arm, s, log)
            cfg = json.loads((db / "models" / t["run"] / "config.json").read_text())
            t.update(params=cfg["n_params"], tokens=t["steps"] * a.batch_size * 512)
            trained[arm, s] = t
    evals = evaluate(a, db, [run_name(arm, s, a.steps) for s in a.seeds for arm in ARMS],
                     log)
    flops = {"baseline": a.steps * step_flops(db, a.preset, a.batch_size, False, False),
             "retro": a.steps * step_flops(db, a.preset, a.batch_size, True, False)}
    flops["retrofit"] = flops["baseline"] + (a.steps - a.retrofit_at) * step_flops(
        db, a.preset, a.batch_size, True, True)  # the baseline it starts from, then its own
    report(a, info, trained, evals, log, flops)


if __name__ == "__main__":
    main()
