"""`stagecraft models list | show | export | upload`: the models of a running service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.connect import JsonOption, connect, err, print_fields, print_json, print_table, take, when
from stagecraft.types import Model

models_cli = typer.Typer(
    help="Models on a running service: trained by jobs, or uploaded (Hugging Face, GGUF, exports).",
    no_args_is_help=True,
)
ModelId = Annotated[str, typer.Argument(metavar="MODEL", help="a model id (model_...), checkpoint id or job id")]


def _evaluation_summary(model: Model) -> str:
    final = model.evaluation.get("final", model.evaluation) if model.evaluation else {}
    parts = []
    for data, metrics in final.items():
        if isinstance(metrics, dict):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
            parts.append(f"{data}: {shown}")
    return "; ".join(parts)


@models_cli.command("list", epilog="Example: stagecraft models list --json")
def list_models(
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 50,
    json_: JsonOption = False,
) -> None:
    """Finished and uploaded models, newest first."""
    with connect() as c:
        found = take(c.models.list(limit=min(limit, 100)), limit)
    if json_:
        print_json(found)
        return
    rows = [[m.id, m.name, m.source, m.job_id or "", f"{m.parameters:,}", m.steps, when(m.created_at)] for m in found]
    print_table(["id", "name", "source", "job", "parameters", "steps", "created"], rows)


@models_cli.command("show", epilog="Example: stagecraft models show model_0123abcd --json")
def show(model_id: ModelId, json_: JsonOption = False) -> None:
    """A model: architecture, stages, final evaluation, kept checkpoints (or one checkpoint)."""
    with connect() as c:
        m = c.models.retrieve(model_id)
    if json_:
        print_json(m)
        return
    if not isinstance(m, Model):
        print_fields({"id": m.id, "object": "checkpoint", "job": m.job_id, "step": m.step, "stage": m.stage})
        return
    config = ", ".join(f"{k} {v}" for k, v in m.config.items())
    print_fields(
        {"id": m.id, "name": m.name, "source": m.source, "job": m.job_id, "parameters": f"{m.parameters:,}"}
        | {"steps": m.steps, "config": config, "evaluation": _evaluation_summary(m), "created": when(m.created_at)}
        | {"checkpoints": " ".join(ck.id for ck in m.checkpoints)}
    )


@models_cli.command(
    "export",
    epilog="Example: stagecraft models export model_0123abcd --out model.tar.gz   (then AutoModelForCausalLM)\n\n"
    "Example: stagecraft models export model_0123abcd --format gguf --quantization q8_0   (then llama.cpp)",
)
def export(
    model_id: ModelId,
    out: Annotated[Path, typer.Option("--out", help="a file, or an existing folder (the server's file name)")] = Path(),
    archive: Annotated[str | None, typer.Option(help="format hf: tar.gz (the default) or zip")] = None,
    format: Annotated[str, typer.Option("--format", help="hf (an archive) or gguf (one .gguf file)")] = "hf",
    quantization: Annotated[
        str | None,
        typer.Option(
            help="format gguf: f32, f16 (the default), q8_0, q4_0, q4_1; K-quants (q4_k_m, q5_k_m, q6_k, ...) "
            "where the server has llama.cpp (llama-cpp-python)"
        ),
    ] = None,
) -> None:
    """Download a model as a Hugging Face archive (transformers loads it with no custom code),
    or as a GGUF file (llama.cpp runs it; an adapter comes merged into its base). Prints the
    file written."""
    if format not in ("hf", "gguf"):
        err.print("[red]error:[/red] --format must be hf or gguf")
        raise typer.Exit(2)
    if archive not in (None, "tar.gz", "zip"):
        err.print("[red]error:[/red] --archive must be tar.gz or zip")
        raise typer.Exit(2)
    with connect() as c:
        path = c.models.export(model_id, out, archive=archive, format=format, quantization=quantization)
    print(path)


@models_cli.command("upload", epilog="Example: stagecraft models upload gpt2-small.tar.gz --name small")
def upload(
    path: Annotated[Path, typer.Argument(metavar="ARCHIVE", help=".tar.gz/.zip of a model folder, or a .gguf")],
    name: Annotated[str | None, typer.Option(help="the model's name")] = None,
    json_: JsonOption = False,
) -> None:
    """Import a model (an export, a GPT-2 or Llama-family Hugging Face folder archived, or a
    GGUF file); prints its id, usable as `model.init_from.model` in a spec and for generation."""
    with connect() as c:
        m = c.models.upload(path, name)
    if json_:
        print_json(m)
    else:
        print(m.id)
