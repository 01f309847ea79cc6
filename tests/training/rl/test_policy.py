"""The policy: LoRA adapters (peft) with the reference as adapters disabled, merged checkpoints, weight pushes."""

from __future__ import annotations

import torch

from models.checkpoint import load_checkpoint, read_metadata
from models.packing import img_shapes
from models.sampler import predict_velocity
from training.rl.config import LoraSettings
from training.rl.policy import Policy, load_trainable_state, load_transformer


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

    folder = policy.save(tmp_path / "model", metadata={"step": 3})
    assert read_metadata(folder)["step"] == 3 and read_metadata(folder)["parts"] == ["transformer"]
    merged = load_checkpoint(folder, parts=("transformer",)).transformer
    assert not any("lora" in name for name in merged.state_dict())
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
