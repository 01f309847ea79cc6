"""The model stack every role shares: presets, condition encoder, VAE wrapper, packing, samplers, losses, checkpoints.

Built on the published diffusers / transformers classes (``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage``,
``Qwen2_5_VLForConditionalGeneration``) so checkpoints stay compatible with the released Qwen-Image weights.
Import submodules directly (``from models.sampler import sample``); this package file stays light on purpose.
"""
