"""The preference losses against TRL's own code (trl 1.16), on one tiny Llama that both our model
and a transformers LlamaForCausalLM hold, the same pairs, the same reference, in fp32: the loss,
the rewards and log-probs TRL logs, and every parameter's gradient agree within 1e-5.

TRL computes each loss in its trainer: DPOTrainer._compute_loss (sigmoid DPO, IPO) with its
fused log-prob head and data collator, CPOTrainer (SimPO: loss_type simpo, cpo_alpha 0; and its
`cpo_loss`, the conservative sigmoid loss with label smoothing, for DPO's `label_smoothing`) and
ORPOTrainer, each instantiated with a tiny config and called on a batch we build."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.data.preference_stream import PairBatch
from models.data.streams import collate
from models.data.tokenizer import Tokenizer
from models.families.llama.hf import from_hf_state
from models.layers import onednn
from models.spec import DPOLoss, IPOLoss, ORPOLoss, SimPOLoss
from models.training.preference_losses import pair_logps, preference_loss, summarize

transformers = pytest.importorskip("transformers")
trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

# transformers and trl warn of their own deprecations as their trainers are built
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
TOL = 1e-5
PAIRS = [  # token ids: a prompt, the chosen and the rejected completion, of varied lengths
    {"prompt_ids": [5, 6, 7, 8, 40], "chosen_ids": [9, 10, 11, 2], "rejected_ids": [12, 13, 2]},
    {"prompt_ids": [20, 21], "chosen_ids": [22, 2], "rejected_ids": [23, 24, 25, 26, 27, 2]},
    {"prompt_ids": [30, 31, 32], "chosen_ids": [33, 34, 35, 36, 2], "rejected_ids": [37, 2]},
]
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
METRIC_NAMES += ("logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def hf_tok(tokenizer: Tokenizer) -> Any:
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.hf, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )


@pytest.fixture(scope="module")
def models(tokenizer: Tokenizer) -> tuple[Any, Any]:
    """(policy, reference): a random tiny Llama and a perturbed copy, as transformers models."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(
        "llama",
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    policy = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in policy.parameters():  # decisive logits: log-probs far from uniform
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() >= 2 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return policy, reference


@pytest.fixture(autouse=True)
def aten_products(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """transformers' products are aten's: ours through aten too, so the sums run in one order."""
    monkeypatch.setattr(onednn, "ENABLED", False)
    yield


def ours(hf_model: Any) -> Any:
    model, _ = from_hf_state(hf_model.config.to_dict(), hf_model.state_dict())
    return model.train()


def our_batch(pad_id: int) -> PairBatch:
    """The pairs as our PairBatch: the chosen sequences, then the rejected, scored on the completion."""
    seqs = [
        (p["prompt_ids"] + p[f"{side}_ids"], len(p["prompt_ids"]) - 1) for side in ("chosen", "rejected") for p in PAIRS
    ]
    b = collate(seqs, pad_id)  # type: ignore[arg-type]
    return PairBatch(b.idx, b.targets, b.completion_targets, b.tokens, torch.arange(len(PAIRS)))


def pair_inputs(pad_id: int) -> dict[str, torch.Tensor]:
    """The pairs as CPOTrainer and ORPOTrainer take a batch (their tokenize_row's fields)."""
    out = {}
    for side in ("chosen", "rejected"):
        seqs = [p["prompt_ids"] + p[f"{side}_ids"] for p in PAIRS]
        w = max(map(len, seqs))
        out[f"{side}_input_ids"] = torch.tensor([s + [pad_id] * (w - len(s)) for s in seqs])
        out[f"{side}_attention_mask"] = torch.tensor([[1] * len(s) + [0] * (w - len(s)) for s in seqs])
        out[f"{side}_labels"] = torch.tensor(
            [[-100] * len(p["prompt_ids"]) + p[f"{side}_ids"] + [-100] * (w - len(s)) for p, s in zip(PAIRS, seqs)]
        )
    return out


def dataset() -> Any:
    return datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}] * 2)


def run_ours(policy_hf: Any, reference_hf: Any | None, spec: Any, pad_id: int) -> tuple[Any, float, dict[str, float]]:
    """(our policy with its gradients, the loss, the metrics) of one batch."""
    policy = ours(policy_hf)
    batch = our_batch(pad_id)
    ref = None
    if reference_hf is not None:
        with torch.no_grad():
            ref = pair_logps(ours(reference_hf).eval(), batch).stacked()
    loss, stats = preference_loss(spec, pair_logps(policy, batch, with_nll=spec.type == "orpo"), ref)
    loss.backward()
    return policy, float(loss), summarize([stats])


def assert_same_gradients(mine: Any, theirs: Any) -> None:
    want = dict(theirs.named_parameters())
    got = dict(mine.named_parameters())
    assert set(got) == set(want)
    worst = 0.0
    for name, p in got.items():
        g = want[name].grad
        assert p.grad is not None and g is not None, name
        worst = max(worst, (p.grad - g).abs().max().item())
    scale = max(w.grad.abs().max().item() for w in want.values() if w.grad is not None)
    assert worst <= TOL * max(1.0, scale), (worst, scale)


def assert_metrics(mine: dict[str, float], theirs: dict[str, float]) -> None:
    for name in METRIC_NAMES:
        assert abs(mine[name] - theirs[name]) <= TOL * max(1.0, abs(theirs[name])), (name, mine[name], theirs[name])


def config_kwargs(tmp_path: Path) -> dict[str, Any]:
    # fp32 throughout (TRL's configs default to bf16 where the machine has it)
    return {"output_dir": str(tmp_path), "report_to": [], "use_cpu": True, "save_strategy": "no", "bf16": False}


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_and_ipo_equal_dpo_trainer(loss: str, models: tuple[Any, Any], hf_tok: Any, tmp_path: Path) -> None:
    policy_hf, reference_hf = (copy.deepcopy(m) for m in models)
    beta = 0.2
    args = trl.DPOConfig(**config_kwargs(tmp_path), beta=beta, loss_type=["sigmoid" if loss == "dpo" else "ipo"])
    trainer = trl.DPOTrainer(
        model=policy_hf, ref_model=reference_hf, args=args, train_dataset=dataset(), processing_class=hf_tok
    )
    inputs = trainer.data_collator(PAIRS)
    theirs_loss = trainer._compute_loss(trainer.model, inputs, False)
    theirs_loss.backward()
    theirs = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    spec = DPOLoss(type="dpo", beta=beta) if loss == "dpo" else IPOLoss(type="ipo", beta=beta)
    mine, value, metrics = run_ours(models[0], models[1], spec, hf_tok.pad_token_id)
    assert abs(value - float(theirs_loss)) <= TOL * max(1.0, abs(float(theirs_loss)))
    assert_metrics(metrics, theirs)
    assert theirs["rewards/margins"] != 0.0  # a reference other than the policy
    assert_same_gradients(mine, trainer.model)


def test_dpo_label_smoothing_equals_trl_conservative_sigmoid(
    models: tuple[Any, Any], hf_tok: Any, tmp_path: Path
) -> None:
    """Conservative DPO: CPOTrainer's sigmoid loss (TRL's DPO sigmoid loss before 1.0) on the
    log-ratios, each log-prob from TRL's get_batch_logps."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy_hf, reference_hf = (copy.deepcopy(m) for m in models)
    beta, eps = 0.1, 0.15
    args = CPOConfig(**config_kwargs(tmp_path), beta=beta, label_smoothing=eps, loss_type="sigmoid", cpo_alpha=0.0)
    trainer = CPOTrainer(model=policy_hf, args=args, train_dataset=dataset(), processing_class=hf_tok)
    batch = trainer.concatenated_inputs(pair_inputs(hf_tok.pad_token_id), padding_value=hf_tok.pad_token_id)
    ids, mask, labels = (batch[f"concatenated_{k}"] for k in ("input_ids", "attention_mask", "labels"))
    logps = trainer.get_batch_logps(policy_hf(ids, attention_mask=mask).logits, labels)
    with torch.no_grad():
        ref_logps = trainer.get_batch_logps(reference_hf(ids, attention_mask=mask).logits, labels)
    n = len(PAIRS)
    losses, _, _ = trainer.cpo_loss(logps[:n] - ref_logps[:n], logps[n:] - ref_logps[n:])
    losses.mean().backward()
    mine, value, _ = run_ours(
        models[0], models[1], DPOLoss(type="dpo", beta=beta, label_smoothing=eps), hf_tok.pad_token_id
    )
    assert abs(value - float(losses.mean())) <= TOL
    assert_same_gradients(mine, policy_hf)


def test_simpo_equals_cpo_trainer(models: tuple[Any, Any], hf_tok: Any, tmp_path: Path) -> None:
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy_hf = copy.deepcopy(models[0])
    beta, gamma = 2.0, 0.7
    args = CPOConfig(**config_kwargs(tmp_path), beta=beta, simpo_gamma=gamma, loss_type="simpo", cpo_alpha=0.0)
    trainer = CPOTrainer(model=policy_hf, args=args, train_dataset=dataset(), processing_class=hf_tok)
    theirs_loss, theirs = trainer.get_batch_loss_metrics(trainer.model, pair_inputs(hf_tok.pad_token_id))
    theirs_loss.backward()
    mine, value, metrics = run_ours(
        models[0], None, SimPOLoss(type="simpo", beta=beta, gamma=gamma), hf_tok.pad_token_id
    )
    assert abs(value - float(theirs_loss)) <= TOL * max(1.0, abs(float(theirs_loss)))
    assert_metrics(metrics, theirs)
    assert_same_gradients(mine, policy_hf)


def test_orpo_equals_orpo_trainer(models: tuple[Any, Any], hf_tok: Any, tmp_path: Path) -> None:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    policy_hf = copy.deepcopy(models[0])
    beta = 0.25
    trainer = ORPOTrainer(
        model=policy_hf,
        args=ORPOConfig(**config_kwargs(tmp_path), beta=beta),
        train_dataset=dataset(),
        processing_class=hf_tok,
    )
    theirs_loss, theirs = trainer.get_batch_loss_metrics(trainer.model, pair_inputs(hf_tok.pad_token_id))
    theirs_loss.backward()
    mine, value, metrics = run_ours(models[0], None, ORPOLoss(type="orpo", beta=beta), hf_tok.pad_token_id)
    assert abs(value - float(theirs_loss)) <= TOL * max(1.0, abs(float(theirs_loss)))
    assert_metrics(metrics, theirs)
    assert_same_gradients(mine, policy_hf)
