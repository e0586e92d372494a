"""The token embedding lookup shared by the families whose head is tied to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def embed_tied(embedding: nn.Embedding, idx: Tensor) -> Tensor:
    """`embedding(idx)` for an embedding that is also the model's output head.

    In training the head's dense gradient reaches the weight first (backward starts at the
    loss), so the lookup's own gradient is added into it as a sparse update of the rows it
    read, not as a zero-filled (vocab × n_embd) matrix added whole: that fill and add cost
    1-2% of a CPU training step. The weight's gradient is dense either way.
    """
    w = embedding.weight
    return F.embedding(idx, w, sparse=w.requires_grad and torch.is_grad_enabled())
