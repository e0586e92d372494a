"""`stagecraft train` and `stagecraft generate`: a job spec run on this machine, and
generation from its result (or from a model served at STAGECRAFT_URL)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

from app.cli.display import RunDisplay, print_answer, summary_table
from app.cli.specfile import checked_spec, local_data, print_data_error, read_raw
from models import events
from models.data.records import TASK_INPUTS, task_prompt
from models.errors import DataError, StagecraftError
from models.spec import JobSpec

err = Console(stderr=True, soft_wrap=True)


def refuse_out(out: Path, spec: JobSpec, resume: bool) -> None:
    """Exit 2, writing nothing there, when --out holds another run (or, with --resume, a
    run of a different spec)."""
    spec_file = out / "spec.json"
    if out.exists() and not out.is_dir():
        err.print(f"[red]error:[/red] --out {out} is a file, not a run directory")
        raise typer.Exit(2)
    if not spec_file.exists():
        return
    if not resume:
        err.print(f"[red]error:[/red] {out} already holds a run: add --resume to continue it, or choose another --out")
        raise typer.Exit(2)
    from models.training.run import same_spec  # (train has imported it already)

    if not same_spec(spec_file, spec):
        err.print(f"[red]error:[/red] {out} holds a run of a different spec; --resume needs the same spec")
        raise typer.Exit(2)


class EventLog:
    """Appends events to DIR/events.jsonl with a per-run sequence number, and forwards them."""

    def __init__(self, path: Path, display: RunDisplay):
        self.path, self.display = path, display
        self.seq = len(path.read_bytes().splitlines()) if path.exists() else 0
        self.step = 0  # the newest step seen, for the job-level events
        self.file = path.open("a", encoding="utf-8")

    def __call__(self, event: events.Event) -> None:
        self.seq += 1
        self.step = max(self.step, event["step"])
        numbered = {"seq": self.seq, **event}
        self.file.write(json.dumps(numbered) + "\n")
        self.file.flush()
        self.display(numbered)

    def job(self, type_: events.EventType, step: int, data: dict[str, Any]) -> None:
        self(events.make(type_, step, data))

    def close(self) -> None:
        self.file.close()


def train(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="job spec, YAML or JSON")],
    out: Annotated[Path, typer.Option("--out", help="run directory: events.jsonl, checkpoints/, model/")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from the newest checkpoint in --out")] = False,
) -> None:
    """Run a job spec on this machine, without the service.

    Dataset entries are file paths, relative to the spec file. Ctrl-C saves a checkpoint
    and exits; `--resume` continues from it and ends with the same weights. A spec asking
    for `resources.processes` > 1 runs that many processes under torchrun.
    """
    from app.services import reporting  # (sqlalchemy and the trackers' imports: not for every command)
    from models.errors import Stopped  # torch loads here, not for every command
    from models.training.launch import run_processes
    from models.training.run import run

    raw = read_raw(spec_path)
    spec = checked_spec(raw, spec_path)
    base = spec_path.resolve().parent
    refuse_out(out, spec, resume)
    local_data(raw, base)  # every bad line of every file, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    sinks = reporting.ReportSinks.for_run(spec, out)  # the spec's report_to (docs/spec.md)
    stop = {"requested": False}

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        err.print("\n[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)[/yellow]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    started = time.monotonic()
    runner = run_processes if spec.resources.processes > 1 else run
    with RunDisplay(spec, err) as display:
        log = EventLog(out / "events.jsonl", display)
        log.job("job.started", 0, {"name": spec.name, "total_steps": spec.total_steps})
        try:
            result = runner(
                spec,
                out,
                on_event=sinks.wrap(log),
                should_stop=lambda: stop["requested"],
                resolve=lambda ref: base / ref,
                resume=resume,
            )
        except Stopped as exc:
            log.job("job.cancelled", exc.step, {"reason": "interrupted"})
            display.progress.stop()
            err.print(f"stopped at step {exc.step}; continue with: stagecraft train {spec_path} --out {out} --resume")
            raise typer.Exit(130) from None
        except StagecraftError as exc:
            code = exc.code
            log.job("job.failed", log.step, {"code": code, "message": str(exc)})
            display.progress.stop()
            if isinstance(exc, DataError):
                print_data_error(exc)
            else:
                err.print(f"[red]error ({code}):[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        else:
            log.job("job.succeeded", result.steps, {"model_dir": str(result.model_dir)})
        finally:
            signal.signal(signal.SIGINT, previous)
            log.close()
            reporting.finish_local_run(out, spec, sinks)  # DIR/metrics.png; the trackers' runs closed
    err.print(summary_table(result.evaluation))
    ran = result.steps - display.resumed_from
    resumed = f", resumed at step {display.resumed_from}" if display.resumed_from else ""
    took = time.monotonic() - started
    err.print(
        f"model: {result.model_dir}  ({ran} steps in {took:.0f} s{resumed}; {result.steps} in all)", highlight=False
    )


SERVED_IDS = ("model_", "ckpt_", "job_")


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
    if (prompt is None) == (task is None):
        err.print("[red]error:[/red] give exactly one of --prompt or --task")
        raise typer.Exit(2)
    fields: dict[str, Any] = {"prompt": prompt, "stop": stop or None, "stream": stream}
    if task is not None:
        if task not in TASK_INPUTS:
            err.print(f"[red]error:[/red] --task must be one of {', '.join(TASK_INPUTS)}")
            raise typer.Exit(2)
        given = {"text": text, "source_lang": source_lang, "target_lang": target_lang}
        given.update(question=question, context=context)
        fields = {k: given[k] for k in TASK_INPUTS[task]}
        missing = ["--" + k.replace("_", "-") for k, v in fields.items() if v is None]
        if missing:
            err.print(f"[red]error:[/red] --task {task} needs {', '.join(missing)}")
            raise typer.Exit(2)
        prompt = task_prompt(task, fields)
    path = Path(model_ref)
    if not path.exists() and model_ref.startswith(SERVED_IDS):
        from app.cli.jobs import generate_remote

        body = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        generate_remote(model_ref, task, {**fields, **body, "seed": seed})
        return
    from models.formats.load import load_model, served_chat_format
    from models.inference.generate import Sampling, complete, complete_tasks

    directory = path / "model" if (path / "model" / "config.json").exists() else path
    try:
        model, tok = load_model(directory)
    except (FileNotFoundError, StagecraftError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    sampling = Sampling(max_new_tokens, temperature, top_k, top_p, seed)
    try:
        if task is None:
            [output] = complete(model, tok, [str(prompt)], sampling, stop=stop)
        else:  # a task's answer, as the task endpoints give it (through the chat template, if any)
            chat = served_chat_format(directory, tok)
            [output] = complete_tasks(model, tok, [str(prompt)], sampling, chat, stop=stop)
    except (ValueError, StagecraftError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    new_tokens = len(tok.encode(output)) if output else 0
    print_answer(output, "stop" if new_tokens < max_new_tokens else "length", new_tokens)
