"""`retrodb embed`: compute the retrieval key of every chunk (frozen BERT, mean-pooled)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import err, human_count, note, print_json, user_errors
from .options import DB, EXECUTOR, JSON, RAY_ADDRESS, WORKERS, parse_gpus
from .progress import Reporter


@user_errors
def embed_cli(
    db: str = DB,
    model: Optional[str] = typer.Option(None, help="A local sentence-transformers model "
                                        "directory with mean pooling [default: the "
                                        "database's embedder, else all-MiniLM-L6-v2, "
                                        "shipped offline].", show_default=False),
    gpus: Optional[str] = typer.Option(None, help="CUDA devices, e.g. 0,1: one worker per "
                                       "GPU [default: CPU].", show_default=False),
    batch_size: Optional[int] = typer.Option(None, help="Chunks per forward pass, halved "
                                             "automatically on out-of-memory [default: 64 "
                                             "on CPU, 1024 on GPU].", show_default=False),
    workers: int = WORKERS,
    precision: str = typer.Option("auto", help="GPU autocast: auto (fp16), fp16, bf16 or "
                                  "fp32. The CPU always computes in fp32."),
    new_set: bool = typer.Option(False, "--new-set", help="If --model differs from the "
                                 "database's embedder, delete its keys and start a new "
                                 "embedding set (the index must then be rebuilt)."),
    executor: str = EXECUTOR,
    ray_address: Optional[str] = RAY_ADDRESS,
    json_out: bool = JSON,
):
    """Embed every chunk not yet embedded into DB/embeddings (float16 .npy per shard).

    A key is the model's last hidden state mean-pooled over the chunk's tokens and
    L2-normalised. A rerun embeds only new chunk shards and key shards found missing
    or corrupt.

    Example: retrodb embed --db mydb (or --gpus 0,1 on a GPU machine)
    """
    from retrodb.stages.embed import EmbedConfig, embed_db

    cfg = EmbedConfig(model=model, gpus=parse_gpus(gpus), batch_size=batch_size,
                      workers=workers, precision=precision, new_set=new_set,
                      executor=executor, ray_address=ray_address)
    with Reporter() as bar:
        result = embed_db(db, cfg, on_progress=bar.update, on_note=note)
    if json_out:
        print_json({**result.__dict__, "padding_waste": round(result.padding_waste, 4)})
        return
    if not result.shards:
        err.print(f"nothing to embed: all {result.skipped} chunk shards have keys "
                  f"({result.model})")
        return
    rate = result.chunks / result.seconds if result.seconds else 0
    extra = f", {result.redone} recomputed (missing or corrupt)" if result.redone else ""
    err.print(f"embedded {human_count(result.chunks)} chunks into {len(result.shards)} new "
              f"key shards ({result.skipped} already embedded{extra}) with {result.model} "
              f"on {', '.join(sorted(set(result.devices)))}: {result.seconds:.1f} s, "
              f"{rate:.0f} chunks/s")
    err.print(f"padding waste {100 * result.padding_waste:.1f}%; "
              f"{human_count(result.retokenized)} chunks re-tokenised from their text (cut "
              f"inside a word, or all of them when the model has its own tokenizer), "
              f"{result.truncated} truncated to the model's max length"
              + (f"; {result.oom_halvings} out-of-memory halvings" if result.oom_halvings
                 else ""))
