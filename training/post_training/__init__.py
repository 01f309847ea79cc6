"""Fine-tuning after pretraining (docs/qwen_image.md §5, §8): DPO and GRPO sharing trainer, checkpoints, store.

SFT is not here: it is a pretraining recipe (``configs/sft_tiny.yaml``: one phase over a curated subset, hand-picked
``sample_ids`` and predicates, a lower learning rate, from an ``init`` checkpoint) run by ``jobs/pretrain.py``.

- ``dpo``: Diffusion-DPO for flow matching (same sigma and noise for winner and loser) and its Ray Train loop;
  ``pairs``: preference pairs in the latent-store format, built from a reward or from human labels;
- ``grpo``: Flow-GRPO (SDE rollouts with per-step log-probabilities, group advantages, clipped ratio, optional KL)
  and its Ray Train loop; ``rollout``: the SDE rollout and the Ray actors that run it beside the train workers;
- ``rewards``: pluggable rewards behind one interface (OCR, CLIP score, mean colour, weighted sums);
- ``policy``: the trained transformer, LoRA adapters (peft), the frozen reference, checkpoints;
- ``config``: one validated config per algorithm; ``runner`` / ``curves``: the shared trainer set-up and metrics.

Entry point: ``python jobs/rl.py --algo {dpo,grpo} --config configs/rl_<algo>_tiny.yaml``.
"""
