"""The processes of a multi-process run (`resources.processes` > 1): who this process is,
and every collective the pipeline makes. models/training/rank.py starts one Group per
process under torchrun; a 1-process run has none, and its code paths do not change.

Both shardings are data parallel over the same global batch. Every rank draws the whole
batch (`batch_size` rows) from the identical stream and trains on its contiguous slice of
the rows (`local`); its loss, a token-weighted mean over its slice, is weighted by the
slice's share of the batch's scored tokens, so the gradients summed over the ranks are
exactly the gradient of the 1-process loss, a token-weighted mean over the whole batch.

- ddp: every rank holds the whole model. After the backward passes, `reduce` sums the
  trainable weights' gradients (and the loss) over the ranks with one all_reduce of a flat
  fp32 buffer. That is DistributedDataParallel's semantics, done by hand: torch's DDP fixes
  its gradient buckets when it wraps the model, and the trainable set changes between
  segments (stages, multistep phases, adapters).
- fsdp: FSDP2 (`fully_shard`) on each transformer block and on the root; its
  reduce-scatter in the backward pass sums the gradients (divide factor 1), and each rank
  keeps its shard of the weights, gradients and optimizer state.

Either way the update equals the 1-process update on the same global batch up to
floating-point reassociation (the rows' matmuls in other shapes, the sum over ranks): on
a CPU, over the 22 steps of the tests' spec, per-step losses agree with a 1-process run
to about 2e-7 relative in fp32 and 2e-4 in bf16, the final weights to 4e-6 and 1e-2
(tests/models/training/test_distributed.py holds fp32 to 2e-4 and 1e-3). Every rank
evaluates the whole validation data (with fsdp every forward pass takes all of them).
Each rank has its own random stream (dropout): rank 0 the seed's, as a 1-process run,
the others one derived from the seed and their rank.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor

from models.data.streams import IGNORE, Batch, stable_seed
from models.errors import TrainingError
from models.families import family
from models.families.build import Model
from models.spec import JobSpec
from models.training.precision import resolve_device


@dataclass(frozen=True)
class Group:
    """This process's place in the run, and the collectives: each method that communicates
    must be called by every rank, in the same order."""

    rank: int
    world: int
    sharded: bool  # fsdp
    device: torch.device  # where this rank trains, and where its collectives' tensors live

    @classmethod
    def start(cls, spec: JobSpec) -> Group:
        """Join the process group torchrun set up: gloo on the CPU, NCCL on CUDA (one device
        per process, by local rank)."""
        device = resolve_device(spec.run_device)
        if device.type == "cuda":
            wanted, found = int(os.environ["LOCAL_WORLD_SIZE"]), torch.cuda.device_count()
            if wanted > found:
                raise TrainingError("user_error", f"resources.processes: {wanted} need as many GPUs, found {found}")
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device.index)
        return cls(dist.get_rank(), dist.get_world_size(), spec.resources.sharding == "fsdp", device)

    def close(self) -> None:
        dist.destroy_process_group()

    # --- data parallel ------------------------------------------------------------------------

    def local(self, batch: Batch, scored: Tensor) -> tuple[Batch, float]:
        """This rank's rows of the global `batch`, and their share of its scored tokens
        (`scored`: the targets the loss reads). Rows split as evenly as they go, in order."""
        n = batch.idx.size(0)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        counted = scored != IGNORE
        share = float(counted[lo:hi].sum()) / max(1.0, float(counted.sum()))
        return batch.rows(lo, hi), share

    def reduce(self, params: list[torch.nn.Parameter], loss: Tensor) -> Tensor:
        """Sum `loss` over the ranks, and with ddp the gradients of `params`, in place (fsdp
        summed its shards' gradients in the backward pass). Returns the summed loss."""
        grads = [] if self.sharded else [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.reshape(1).float().to(self.device)])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()
        return flat[-1:].reshape(()).cpu()

    def norm(self, grads: list[Tensor]) -> float:
        """The total L2 norm of the gradients over all ranks (fsdp: of every rank's shards)."""
        total = torch.nn.utils.get_total_norm(grads)
        return float(total.full_tensor() if isinstance(total, DTensor) else total)

    def agreed(self, value: float) -> float:
        """The largest `value` over the ranks: decisions every rank must take alike (stop,
        the wall-clock limit) are taken on it."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def barrier(self) -> None:
        dist.barrier()

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the block, then the others (what it writes, they read)."""
        if self.rank:
            self.barrier()
        yield
        if not self.rank:
            self.barrier()

    def seed(self, seed: int) -> None:
        """After the model is built alike everywhere: each rank >0 its own random stream."""
        if self.rank:
            torch.manual_seed(stable_seed(seed, "rank", self.rank))

    # --- fsdp ---------------------------------------------------------------------------------

    def shard(self, model: Model, low: torch.dtype | None) -> Model:
        """FSDP2 on each transformer block, then on the root (what is left: embeddings, final
        norm, head), whose `hidden` counts as a forward pass. `low`: compute in this dtype
        from the fp32 shards (FSDP's mixed precision, gradients reduced in fp32)."""
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32 if low else None)
        blocks = family(str(model.config.arch)).blocks
        for name, module in model.named_modules():
            if blocks.fullmatch(name + "."):
                fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        register_fsdp_forward_method(model, "hidden")
        for module in model.modules():
            if isinstance(module, FSDPModule):  # a sum: each rank's loss is weighted by its share
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum
        return model

    def release(self, model: Model) -> None:
        """Free the root's gathered weights after an evaluation: the next training forward
        gathers them again, with the trainable flags its segment sets (FSDP keeps the root
        gathered after a forward pass, for the backward pass that follows in training)."""
        if self.sharded:
            model.reshard()  # type: ignore[operator]

    def full(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state` with every shard gathered whole, on rank 0 (the others get {})."""
        out = {}
        for k, v in state.items():
            whole = v.full_tensor() if isinstance(v, DTensor) else v
            if not self.rank:
                out[k] = whole.cpu()
        return out

    # --- checkpoints --------------------------------------------------------------------------

    def split(self, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(what rank 0 writes whole, what every rank writes its shards of): fsdp's DTensors."""
        shards: dict[str, Tensor] = {k: v for k, v in tensors.items() if isinstance(v, DTensor)}
        return {k: v for k, v in tensors.items() if k not in shards}, shards

    def gather(self, own: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Every rank's `own` (tensors of one shape on every rank: random states), by rank, on
        rank 0; the others get []."""
        out: list[dict[str, Tensor]] = [{} for _ in range(self.world)]
        for name, t in own.items():
            parts = [torch.empty_like(t, device=self.device) for _ in range(self.world)]
            dist.all_gather(parts, t.to(self.device))
            for r, part in enumerate(parts):
                out[r][name] = part.cpu()
        return [] if self.rank else out
