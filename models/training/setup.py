"""A training run's setup (Pipeline.load_data and Pipeline.build_model): its data, split into
training and validation and checked against the objectives that read it; its tokenizer and
model, loaded from init_from or made new; and the data streams its segments and evaluations
read. The run's tokenizer (and chat format) is kept in the workdir's `tokenizer/`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from models.data import streams as data
from models.data.chat import ChatFormat
from models.data.chat_records import save_chat_format
from models.data.preference_stream import make_any_stream
from models.data.records import DataFile
from models.data.tokenizer import Tokenizer
from models.errors import TrainingError
from models.families.build import Model, build_model, config_from_spec
from models.formats.load import chat_format_of, load_model
from models.spec import JobSpec, block_errors, data_kind_errors
from models.training.stages import Segment


def _user_errors(errors: list[dict[str, str]]) -> TrainingError:
    return TrainingError("user_error", "; ".join(f"{e['loc']}: {e['message']}" for e in errors))


def load_data(spec: JobSpec, resolve: Callable[[str], Path]) -> tuple[dict[str, DataFile], dict[str, DataFile]]:
    """(training, validation) part of every data name; a user error for data of the wrong
    kind (models.spec.data_kind_errors, as the API and the CLI check it)."""
    train_sets, val_sets = data.load_splits(spec.data, spec.seed, resolve)
    bad = data_kind_errors(spec, {name: ds.kind for name, ds in train_sets.items()})
    if bad:
        raise _user_errors(bad)
    return train_sets, val_sets


def tokenizer_and_model(
    spec: JobSpec, workdir: Path, resolve: Callable[[str], Path], train_sets: dict[str, DataFile]
) -> tuple[Model, Tokenizer, ChatFormat | None]:
    """The model to train, its tokenizer and chat format: the init_from model's, or a tokenizer
    trained on `tokenizer.train_on` (or the run's own, on resume) and a new model. Seeds torch
    first, so a new model's weights (and whatever draws random numbers after) follow spec.seed."""
    init = spec.model.init_from
    tok_dir = workdir / "tokenizer"
    torch.manual_seed(spec.seed)
    if init is not None:
        source = resolve(init.model)
        model, tok = load_model(source, dropout=spec.model.dropout)
        bad = block_errors(spec, model.config.n_layer)
        if bad:
            raise _user_errors(bad)
        # a base model with a chat template trains on records rendered by it (models/data/chat.py)
        chat = chat_format_of(source)
        if not (tok_dir / "tokenizer.json").exists():  # the run's tokenizer, beside its checkpoints
            tok.save(tok_dir)
            if chat is not None:  # and its chat format, for the checkpoints served
                save_chat_format(tok_dir, chat)
        return model, tok, chat
    if (tok_dir / "tokenizer.json").exists():
        tok = Tokenizer.load(tok_dir)
    else:
        assert spec.tokenizer is not None
        texts = [t for n in spec.tokenizer.train_on for t in train_sets[n].as_texts()]
        tok = Tokenizer.train(texts, spec.tokenizer.vocab_size)
        tok.save(tok_dir)
    return build_model(config_from_spec(spec.model, tok.vocab_size)), tok, None


def make_streams(
    spec: JobSpec,
    segments: list[Segment],
    train_sets: dict[str, DataFile],
    val_sets: dict[str, DataFile],
    tok: Tokenizer,
    block: int,
    chat: ChatFormat | None,
) -> tuple[dict[str, data.Stream], dict[str, data.Stream]]:
    """(training stream of each segment key, validation stream of each data name with
    validation records). Segments of one data name read forks of one stream, each with its
    own position."""
    streams: dict[str, data.Stream] = {}
    protos: dict[str, data.Stream] = {}
    for seg in segments:
        if seg.key not in streams:
            name = seg.part.data
            if name not in protos:
                protos[name] = make_any_stream(train_sets[name], tok, block, spec.seed, name, chat)
            streams[seg.key] = data.fork(protos[name], f"{name}/{seg.key}")
    val_streams = {
        name: make_any_stream(ds, tok, block, spec.seed, f"{name}/val", chat)
        for name, ds in val_sets.items()
        if ds.num_records
    }
    return streams, val_streams
