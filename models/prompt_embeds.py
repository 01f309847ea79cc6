"""Prompt embeddings as the transformer takes them: zero-padded hidden states and their mask.

Kept apart from ``models.condition_encoder`` (which re-exports them) so that a trainer or sampler imports them
without the condition encoder's ``transformers`` classes: a Ray Train worker that only trains the transformer
starts seconds sooner.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class PromptEmbeds:
    """``embeds: [B, L, D]`` zero-padded hidden states; ``mask: [B, L]`` int64, 1 on valid tokens."""

    embeds: torch.Tensor
    mask: torch.Tensor

    @property
    def lengths(self) -> list[int]:
        return self.mask.sum(dim=1).tolist()

    def unpadded(self) -> list[torch.Tensor]:
        """One ``[L_i, D]`` tensor per prompt: what the latent store keeps."""
        return [embeds[:length] for embeds, length in zip(self.embeds, self.lengths, strict=True)]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEmbeds:
        return PromptEmbeds(self.embeds.to(device=device, dtype=dtype), self.mask.to(device=device))

    def repeat_interleave(self, repeats: int) -> PromptEmbeds:
        """Each prompt ``repeats`` times in a row (several images per prompt)."""
        return PromptEmbeds(self.embeds.repeat_interleave(repeats, 0), self.mask.repeat_interleave(repeats, 0))


def pad_prompt_embeds(sequences: list[torch.Tensor]) -> PromptEmbeds:
    """Zero-pad ``[L_i, D]`` tensors to the longest; the inverse of ``PromptEmbeds.unpadded``."""
    if not sequences:
        raise ValueError("no prompt embeddings to pad")
    longest = max(sequence.shape[0] for sequence in sequences)
    embeds = sequences[0].new_zeros(len(sequences), longest, sequences[0].shape[1])
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=sequences[0].device)
    for row, sequence in enumerate(sequences):
        embeds[row, : sequence.shape[0]] = sequence
        mask[row, : sequence.shape[0]] = 1
    return PromptEmbeds(embeds, mask)
