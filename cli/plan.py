"""`retrodb plan`: bytes, device-hours and machines per stage for a corpus size."""

from __future__ import annotations

from typing import Optional

import typer

from .common import human_bytes, print_json, print_table, table, user_errors, write
from .options import JSON


@user_errors
def plan_cli(
    tokens: float = typer.Option(..., help="Corpus size in tokens, e.g. 2e12.",
                                 show_default=False),
    chunk_size: int = typer.Option(64, help="Tokens per chunk."),
    dim: int = typer.Option(384, help="Embedding dimension (all-MiniLM-L6-v2: 384)."),
    factory: Optional[str] = typer.Option(None, help="faiss factory string of the index "
                                          "[default: what `retrodb index` would choose "
                                          "for the size].", show_default=False),
    gpus: int = typer.Option(0, help="GPUs for embed and index training (0: the CPUs)."),
    cpus: int = typer.Option(64, help="CPU cores for chunk, index add and neighbours."),
    k: int = typer.Option(2, "-k", help="Neighbours per chunk."),
    split_size: float = typer.Option(256, help="chunk's --split-size, in MB."),
    cores_per_machine: int = typer.Option(64, help="CPU cores of one machine."),
    gpus_per_machine: int = typer.Option(8, help="GPUs of one machine."),
    hours: float = typer.Option(24, help="The machines column: how many finish each "
                                "stage in this many hours."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure the CPU chunk rate "
                                   "on this machine first (a few seconds)."),
    json_out: bool = JSON,
):
    """Estimate what each stage writes, its device-hours, the machines that finish it in
    a day, and how many workers one coordinator can feed, with the arithmetic and the
    source of every rate.

    Example: retrodb plan --tokens 2e12 --gpus 64 --cpus 512
    """
    from retrodb.ops.plan import PlanConfig, load_rates
    from retrodb.ops.plan import calibrate as measure
    from retrodb.ops.plan import plan

    cfg = PlanConfig(tokens=tokens, chunk_size=chunk_size, dim=dim, factory=factory,
                     gpus=gpus, cpus=cpus, k=k, split_mb=split_size,
                     cores_per_machine=cores_per_machine,
                     gpus_per_machine=gpus_per_machine, hours=hours)
    cfg.validate()  # before measuring anything
    p = plan(cfg, measure() if calibrate else load_rates())
    if json_out:
        print_json(p)
        return
    write(f"{p['tokens']:.3g} tokens = {p['chunks']:.3g} chunks in {p['shards']:,} "
          f"shards; index {p['factory']}")
    t = table("stage", "writes", "device-hours", "hours", "on", f"machines for {hours:g} h",
              "one coordinator feeds", "arithmetic")
    for s in p["stages"]:
        lim = s.get("coordinator_limit_devices")
        t.add_row(s["stage"], human_bytes(s["bytes"]), f"{s['device_hours']:,.1f}",
                  f"{s['hours']:,.1f}", s["on"], f"{s['machines_in_a_day']:,}",
                  f"{lim:,.0f} {s['device']}s" if lim else "-", s["how"])
    t.add_row("total", human_bytes(p["total_bytes"]), "", f"{p['total_hours']:,.1f}", "",
              "", "", "")
    print_table(t)
    write("rates: " + "; ".join(f"{k} {v['value']:.3g} ({v['source']})"
                                for k, v in p["rates"].items()))
