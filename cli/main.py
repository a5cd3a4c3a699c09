"""The retrodb Typer app. Commands import the library (and torch/faiss) lazily."""

from __future__ import annotations

import typer

from . import (chunk, embed, eval, generate, index, info, neighbours, plan, plot, query,
               serve, tokenizer, train, verify)

app = typer.Typer(
    name="retrodb",
    help="Build and query the retrieval database of a RETRO model.\n\n"
         "Example: retrodb chunk corpus/ --db mydb && retrodb embed --db mydb && "
         "retrodb info mydb",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text as written: defaults and [extras] stay visible
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
app.command("tokenizer")(tokenizer.tokenizer_cli)
app.command("chunk")(chunk.chunk_cli)
app.command("embed")(embed.embed_cli)
app.add_typer(index.app, name="index")
app.add_typer(neighbours.app, name="neighbours")
app.command("query")(query.query_cli)
app.command("serve")(serve.serve_cli)
app.command("info")(info.info_cli)
app.command("plan")(plan.plan_cli)
app.command("verify")(verify.verify_cli)
app.command("train")(train.train_cli)
app.command("eval")(eval.eval_cli)
app.command("generate")(generate.generate_cli)
app.command("plot")(plot.plot_cli)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
