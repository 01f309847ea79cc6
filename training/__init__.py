"""Consumers: flow-matching pretraining (and later SFT, DPO, GRPO) on Ray Train, reading the latent store."""
