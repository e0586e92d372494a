"""The `stagecraft` command line."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from app.progress import RunDisplay, summary_table
from models.errors import TrainingError
from models.records import DataError
from models.spec import JobSpec, SpecError, parse_spec

cli = typer.Typer(
    help="Stagecraft: train language models from a job spec, locally or as a service.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)


def load_spec_file(path: Path) -> JobSpec:
    """Read a YAML or JSON spec; on any problem print every error with its field path and exit 2."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot read {path}: {exc.strerror}")
        raise typer.Exit(2) from None
    except yaml.YAMLError as exc:
        err.print(f"[red]error:[/red] {path} is not valid YAML/JSON: {exc}")
        raise typer.Exit(2) from None
    try:
        return parse_spec(raw)
    except SpecError as exc:
        err.print(f"[red]error:[/red] invalid spec {path}:")
        for e in exc.errors:
            err.print(f"  {e['loc']}: {e['message']}")
        raise typer.Exit(2) from None


class EventLog:
    """Appends events to DIR/events.jsonl with a per-run sequence number, and forwards them."""

    def __init__(self, path: Path, display: RunDisplay):
        self.path, self.display = path, display
        self.seq = len(path.read_bytes().splitlines()) if path.exists() else 0
        self.step = 0  # the newest step seen, for the job-level events
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, event: dict[str, Any]) -> None:
        self.seq += 1
        self.step = max(self.step, event["step"])
        event = {"seq": self.seq, **event}
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()
        self.display(event)

    def job(self, type_: str, step: int, data: dict[str, Any]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        self({"type": type_, "time": now, "stage": None, "step": step, "data": data})

    def close(self) -> None:
        self.file.close()


@cli.command()
def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="job spec, YAML or JSON")],
    out: Annotated[Path, typer.Option("--out", help="run directory: events.jsonl, checkpoints/, model/")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint in --out")] = False,
) -> None:
    """Run a job spec on this machine, without the service.

    Dataset entries are file paths, relative to the spec file. Ctrl-C saves a checkpoint
    and exits; `--resume` continues from it and ends with the same weights.
    """
    from models.pipeline import Stopped, run  # torch loads here, not for every command

    spec = load_spec_file(spec_path)
    base = spec_path.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    stop = {"requested": False}

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        err.print("\n[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)[/yellow]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    started = time.monotonic()
    with RunDisplay(spec, err) as display:
        log = EventLog(out / "events.jsonl", display)
        log.job("job.started", 0, {"name": spec.name, "total_steps": spec.total_steps})
        try:
            result = run(
                spec,
                out,
                on_event=log,
                should_stop=lambda: stop["requested"],
                resolve=lambda ref: base / ref,
                resume=resume,
            )
        except Stopped as exc:
            log.job("job.cancelled", exc.step, {"reason": "interrupted"})
            display.progress.stop()
            err.print(f"stopped at step {exc.step}; continue with: stagecraft train {spec_path} --out {out} --resume")
            raise typer.Exit(130) from None
        except (TrainingError, DataError) as exc:
            code = getattr(exc, "code", "user_error")
            log.job("job.failed", log.step, {"code": code, "message": str(exc)})
            display.progress.stop()
            err.print(f"[red]error ({code}):[/red] {exc}")
            raise typer.Exit(1) from None
        else:
            log.job("job.succeeded", result.steps, {"model_dir": str(result.model_dir)})
        finally:
            signal.signal(signal.SIGINT, previous)
            log.close()
    err.print(summary_table(result.evaluation))
    err.print(f"model: {result.model_dir}  ({result.steps} steps in {time.monotonic() - started:.0f} s)")


TASKS = ("translate", "qa", "summarize")
SERVED_IDS = ("model_", "ckpt_", "job_")


@cli.command()
def generate(
    model_ref: Annotated[
        str,
        typer.Argument(
            metavar="DIR_OR_MODEL",
            help="a run directory (from train --out) or its model/, or a model, checkpoint or job id "
            "served at STAGECRAFT_URL (with STAGECRAFT_API_KEY)",
        ),
    ],
    prompt: Annotated[str | None, typer.Option(help="plain text to continue")] = None,
    task: Annotated[str | None, typer.Option(help="translate | qa | summarize, with the task's fields")] = None,
    text: Annotated[str | None, typer.Option(help="translate/summarize: the input text")] = None,
    source_lang: Annotated[str, typer.Option(help="translate: source language")] = "en",
    target_lang: Annotated[str, typer.Option(help="translate: target language")] = "fr",
    question: Annotated[str | None, typer.Option(help="qa: the question")] = None,
    context: Annotated[str | None, typer.Option(help="qa: the passage that answers it")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, max=10.0, help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0)] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    stream: Annotated[bool, typer.Option(help="served models: print tokens as they come")] = False,
) -> None:
    """Generate from a trained model: a plain --prompt, or a --task with its fields."""
    from models import records

    if (prompt is None) == (task is None):
        err.print("[red]error:[/red] give exactly one of --prompt or --task")
        raise typer.Exit(2)
    if task is not None:
        need = {
            "translate": {"--text": text},
            "qa": {"--question": question, "--context": context},
            "summarize": {"--text": text},
        }.get(task)
        if need is None:
            err.print(f"[red]error:[/red] --task must be one of {', '.join(TASKS)}")
            raise typer.Exit(2)
        missing = [flag for flag, value in need.items() if value is None]
        if missing:
            err.print(f"[red]error:[/red] --task {task} needs {', '.join(missing)}")
            raise typer.Exit(2)
        if task == "translate":
            prompt = records.translate_prompt(str(text), source_lang, target_lang)
        elif task == "qa":
            prompt = records.qa_prompt(str(question), str(context))
        else:
            prompt = records.summarize_prompt(str(text))
    path = Path(model_ref)
    if not path.exists() and model_ref.startswith(SERVED_IDS):
        from app.client_cli import generate_remote

        fields: dict[str, Any] = {
            "translate": {"text": text, "source_lang": source_lang, "target_lang": target_lang},
            "qa": {"question": question, "context": context},
            "summarize": {"text": text},
        }.get(task or "", {"prompt": prompt, "stop": stop or None, "stream": stream})
        body = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        generate_remote(model_ref, task, {**fields, **body, "seed": seed})
        return
    from models import artifact
    from models.generate import Sampling, complete

    directory = path / "model" if (path / "model" / "config.json").exists() else path
    try:
        model, tok = artifact.load_model(directory)
    except (FileNotFoundError, TrainingError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
    try:
        [output] = complete(model, tok, [str(prompt)], sampling, stop=stop, supervised=task is not None)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    print(output.strip() if task else output)


from app import service_cli  # noqa: E402,F401  (registers up, api, worker, migrate, keys, jobs)


def main() -> None:
    cli(prog_name="stagecraft")


if __name__ == "__main__":
    main()
