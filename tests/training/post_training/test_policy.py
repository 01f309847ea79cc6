"""The policy: LoRA adapters (peft) with the reference as adapters disabled, merged checkpoints, weight pushes."""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from models.packing import img_shapes
from models.prompt_embeds import PromptEmbeds
from models.sampler import predict_velocity
from training.checkpointer import export_transformer
from training.parallel import ParallelConfig, build_mesh
from training.post_training.config import LoraSettings
from training.post_training.dpo import PairBatch, dpo_step
from training.post_training.policy import Policy, load_trainable_state, load_transformer

from ...distributed import run_ranks


def _velocity(transformer, prompt) -> torch.Tensor:
    tokens = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return predict_velocity(transformer, tokens, torch.tensor([0.7, 0.3]), prompt, img_shapes(2, 8, 8))


def test_lora_policy_reference_and_merged_checkpoint(tiny_checkpoint, color_prompts, tmp_path):
    _, prompt = color_prompts
    base = load_transformer(tiny_checkpoint)
    policy = Policy(tiny_checkpoint, lora=LoraSettings(rank=4, alpha=8), need_reference=True)
    trainable = policy.trainable_state()
    assert trainable and all("lora_" in name for name in trainable)
    assert sum(p.numel() for p in policy.trainable_parameters()) < 0.05 * sum(p.numel() for p in base.parameters())
    torch.testing.assert_close(_velocity(policy.transformer, prompt), _velocity(base, prompt))  # B starts at 0

    with torch.no_grad():  # as if trained: non-zero adapters
        for param in policy.trainable_parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    adapted = _velocity(policy.transformer, prompt)
    assert not torch.allclose(adapted, _velocity(base, prompt))
    with policy.reference() as reference:  # adapters disabled: the start model, without a second copy
        assert reference is policy.transformer
        torch.testing.assert_close(_velocity(reference, prompt), _velocity(base, prompt))
    torch.testing.assert_close(_velocity(policy.transformer, prompt), adapted)  # re-enabled after the block

    # The export: every weight whole, adapters merged into the layers they adapt (what every role opens).
    exported = export_transformer(policy.model, tmp_path / "transformer", rank=0, dtype=torch.float32)
    merged = QwenImageTransformer2DModel.from_pretrained(exported)
    assert not any("lora" in name or "base_layer" in name for name in merged.state_dict())
    torch.testing.assert_close(_velocity(merged, prompt), adapted, rtol=1e-5, atol=1e-5)

    # What a rollout actor does with a push: same LoRA settings, then the trainable state.
    actor = Policy(tiny_checkpoint, lora=LoraSettings(rank=4, alpha=8), need_reference=False).transformer
    load_trainable_state(actor, policy.trainable_state())
    torch.testing.assert_close(_velocity(actor, prompt), adapted)


def test_full_policy_reference_is_a_frozen_copy(tiny_checkpoint, color_prompts):
    _, prompt = color_prompts
    policy = Policy(tiny_checkpoint, lora=None, need_reference=True)
    assert len(policy.trainable_state()) == len(list(policy.transformer.parameters()))
    start = _velocity(policy.transformer, prompt)
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.mul_(1.1)
    with policy.reference() as reference:
        assert reference is not policy.transformer
        assert not any(p.requires_grad for p in reference.parameters())
        torch.testing.assert_close(_velocity(reference, prompt), start)


def _pairs(seed: int) -> PairBatch:
    """Two preference pairs of 8x8 latents (64 px) with random prompt embeddings of the tiny text width."""
    generator = torch.Generator().manual_seed(seed)
    winner, loser = (torch.randn(2, 16, 8, 8, generator=generator) for _ in range(2))
    embeds = torch.randn(2, 5, 64, generator=generator)
    return PairBatch(winner, loser, PromptEmbeds(embeds, torch.ones(2, 5, dtype=torch.long)))


def _sharded_policy(rank: int, world: int, checkpoint: str, folder: str) -> None:
    from safetensors.torch import load_file

    cpu = torch.device("cpu")
    lora = LoraSettings(rank=4, alpha=8)
    runs = {}
    # The loss-parity rule for RL: LoRA DPO on two FSDP workers gives the losses, pushed adapters and merged export
    # of two DDP workers (fp32), each worker with its own pairs.
    for strategy in ("ddp", "fsdp"):
        parallel = build_mesh(ParallelConfig(strategy=strategy), cpu, world, rank)
        policy = Policy(checkpoint, lora=lora, need_reference=True, parallel=parallel, seed=0)
        optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
        losses = []
        for step in range(3):
            generator = torch.Generator().manual_seed(step * 97 + rank)
            batch = _pairs(step * 10 + rank)
            losses.append(dpo_step(policy.model, optimizer, policy.reference, batch, beta=100.0, generator=generator))
        pushed = policy.trainable_state()  # a collective: every rank gathers, rank 0 keeps
        export_transformer(policy.model, f"{folder}/{strategy}", rank=rank, dtype=torch.float32)
        runs[strategy] = losses, pushed
    if rank == 0:
        (ddp_losses, ddp_pushed), (fsdp_losses, fsdp_pushed) = runs["ddp"], runs["fsdp"]
        assert len({round(row["loss"], 6) for row in ddp_losses}) == 3  # the steps are not all alike
        for ddp, fsdp in zip(ddp_losses, fsdp_losses, strict=True):
            assert fsdp["loss"] == pytest.approx(ddp["loss"], rel=1e-5)
            assert fsdp["grad_norm"] == pytest.approx(ddp["grad_norm"], rel=1e-5)
        assert fsdp_pushed.keys() == ddp_pushed.keys() and all("lora_" in name for name in fsdp_pushed)
        # AdamW moves each weight by up to lr (1e-2) a step whatever its gradient's size, so the two strategies'
        # different reduction orders can move a weight whose gradient is mostly cancellation by a few 1e-6 (2.2e-6
        # measured on an AVX2 CPU; under 1e-6 on the earlier CI machines); a wrong gradient moves it by about lr.
        # Tolerance: a thousandth of one step.
        step_tolerance = dict(rtol=1e-5, atol=1e-5)
        for name, value in ddp_pushed.items():
            torch.testing.assert_close(fsdp_pushed[name], value, **step_tolerance)
        ddp_export, fsdp_export = (load_file(f"{folder}/{s}/diffusion_pytorch_model.safetensors") for s in runs)
        assert fsdp_export.keys() == ddp_export.keys() and not any("lora" in name for name in fsdp_export)
        for name, value in ddp_export.items():
            torch.testing.assert_close(fsdp_export[name], value, **step_tolerance)

    # bf16 frozen weights under FSDP: the LoRA base in bf16, adapters fp32; its forward is the single-process
    # policy's with the base rounded to bf16.
    parallel = build_mesh(ParallelConfig(strategy="fsdp"), cpu, world, rank)
    sharded = Policy(checkpoint, lora=lora, need_reference=True, parallel=parallel, frozen_dtype=torch.bfloat16)
    dtypes = {(param.requires_grad, param.dtype) for param in sharded.model.parameters()}
    assert dtypes == {(False, torch.bfloat16), (True, torch.float32)}
    whole = Policy(checkpoint, lora=lora, need_reference=True)
    with torch.no_grad():
        for param in whole.transformer.parameters():
            if not param.requires_grad:
                param.copy_(param.to(torch.bfloat16))
    prompt = _pairs(5).prompt
    torch.testing.assert_close(_velocity(sharded.model, prompt), _velocity(whole.transformer, prompt))

    # Full fine-tuning under FSDP: the reference is a frozen copy sharded like the policy, in bf16; a step moves the
    # policy and leaves the reference as it was.
    full = Policy(checkpoint, lora=None, need_reference=True, parallel=parallel, frozen_dtype=torch.bfloat16)
    reference = list(full.frozen_reference.parameters())
    assert all(hasattr(p, "device_mesh") and p.dtype == torch.bfloat16 and not p.requires_grad for p in reference)
    before = [p.full_tensor() for p in reference]
    start = [p.full_tensor() for p in full.trainable_parameters()]
    optimizer = torch.optim.AdamW(full.trainable_parameters(), lr=1e-3)
    dpo_step(full.model, optimizer, full.reference, _pairs(7 + rank), beta=100.0)
    assert all(torch.equal(p.full_tensor(), b) for p, b in zip(reference, before, strict=True))
    assert any(not torch.equal(p.full_tensor(), s) for p, s in zip(full.trainable_parameters(), start, strict=True))


def test_sharded_policy_matches_ddp(tiny_checkpoint, tmp_path):
    """DPO and GRPO's policy under FSDP on two gloo processes: LoRA steps, pushes and exports as under DDP; frozen
    weights in bf16; a full fine-tune's reference sharded and untouched by training."""
    run_ranks(_sharded_policy, 2, tiny_checkpoint, str(tmp_path))
