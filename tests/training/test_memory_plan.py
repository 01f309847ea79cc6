"""The memory plan against measured peaks (CPU, a mid-size model) and its figures for the published model."""

from __future__ import annotations

import pytest
import torch

from models.flow_matching import flow_matching_loss
from models.presets import MID_TRANSFORMER_CONFIG, QWEN_IMAGE_TRANSFORMER_CONFIG
from models.prompt_embeds import PromptEmbeds
from training.memory_plan import GIB, count_parameters, gpus_needed, plan_memory
from training.parallel import apply_activation_checkpointing


def _measured_peak(checkpointing: int, resolution: int, text_tokens: int, batch: int) -> dict:
    """Peak bytes of the second training step (the first allocates the optimiser's states), by torch's
    ``MemTracker``, which follows every tensor allocated in the step."""
    from diffusers import QwenImageTransformer2DModel
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = QwenImageTransformer2DModel(**MID_TRANSFORMER_CONFIG).train()
    apply_activation_checkpointing(model, checkpointing)
    optimizer = torch.optim.AdamW(model.parameters())
    latents = torch.randn(batch, 16, resolution // 8, resolution // 8)
    prompt = PromptEmbeds(torch.randn(batch, text_tokens, 512), torch.ones(batch, text_tokens, dtype=torch.long))

    def step(seed: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        flow_matching_loss(model, latents, prompt, generator=torch.Generator().manual_seed(seed)).loss.backward()
        optimizer.step()

    step(0)
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step(1)
    return next(iter(tracker.get_tracker_snapshot("peak").values()))


@pytest.mark.parametrize("checkpointing", [0, 1])
def test_memory_plan_matches_measured(checkpointing):
    """4 blocks at hidden 512 (38M parameters), 384 px, batch 2: the plan's peak is within 20% of the measured one,
    with and without activation checkpointing, and so are its activations."""
    resolution, text_tokens, batch = 384, 32, 2
    measured = _measured_peak(checkpointing, resolution, text_tokens, batch)
    plan = plan_memory(
        MID_TRANSFORMER_CONFIG,
        resolution=resolution,
        world=1,
        batch_size=batch,
        text_tokens=text_tokens,
        strategy="ddp",
        activation_checkpointing=checkpointing,
        compute_dtype=torch.float32,
    )
    assert plan.peak == pytest.approx(measured["Total"], rel=0.2)
    params = [value for key, value in measured.items() if str(key).endswith("PARAM")]
    assert plan.parameters == pytest.approx(params[0], rel=0.01)
    if not checkpointing:  # the peak is at the start of the backward pass: every activation is alive
        activations = [value for key, value in measured.items() if str(key).endswith("ACT")][0]
        assert plan.activations == pytest.approx(activations, rel=0.2)


def test_memory_plan_of_the_published_model():
    """20.43B parameters; activations per sample at 1328 px do not fit an 80 GB GPU without checkpointing, so no
    number of GPUs trains that phase; with checkpointing every block, a handful do. 4-way TP splits the weights and
    the activations of attention and feed-forward (the residual streams stay whole on every TP rank)."""
    config = dict(QWEN_IMAGE_TRANSFORMER_CONFIG)
    assert count_parameters(config).total == pytest.approx(20.43e9, rel=1e-3)
    gpu = 80 * GIB
    plan = plan_memory(config, resolution=1328, world=8)
    assert plan.activations_per_sample > 0.9 * gpu  # what the allocator leaves usable (max_batch reserve)
    assert gpus_needed(config, resolution=1328, gpu_bytes=gpu) is None
    needed = gpus_needed(config, resolution=1328, gpu_bytes=gpu, activation_checkpointing=1)
    assert needed is not None and needed <= 16
    low = plan_memory(config, resolution=256, world=8)
    assert low.activations_per_sample < plan.activations_per_sample / 10
    split = plan_memory(config, resolution=1328, world=8, tensor_parallel=4)
    assert plan.activations_per_sample / 4 < split.activations_per_sample < 0.75 * plan.activations_per_sample
    assert split.parameters == pytest.approx(plan.parameters, rel=0.05)  # 4-way TP x 2-way FSDP = 8-way FSDP
