"""The model stack every role shares: presets, condition encoder, VAE wrapper, packing, samplers, losses, checkpoints.

Built on the published diffusers / transformers classes (``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage``,
``Qwen2_5_VLForConditionalGeneration``) so checkpoints stay compatible with the released Qwen-Image weights.
Import submodules directly (``from models.sampler import sample``); this package file stays light on purpose.
"""

import logging


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


# diffusers imports torchao (the quantised LoRA bases, models.lora) whenever it is installed, in every process that
# imports diffusers. torch 2.14 then warns that two of torchao's enums need no registration, and diffusers 0.42 that
# torchao 0.18 moved tensor classes it looks for: notices about library versions, the same in every process and
# every run, that would bury a job's own output. Only those messages are dropped.
logging.getLogger("torch.utils._pytree").addFilter(_DropMessages("is an Enum subclass and is now natively supported"))
logging.getLogger("diffusers.quantizers.torchao.torchao_quantizer").addFilter(
    _DropMessages("Unable to import `torchao` Tensor objects")
)
