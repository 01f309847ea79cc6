"""The forward context on CPU: bf16 runs attention on the math kernel (the CPU flash kernel's bf16 backward is slow)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.parallel import autocast
from training.post_training.policy import single_process


def _attention_backward_name() -> str:
    q, k, v = (torch.randn(2, 4, 36, 64, requires_grad=True) for _ in range(3))
    return type(F.scaled_dot_product_attention(q, k, v).grad_fn).__name__


def test_cpu_bf16_attention_uses_the_math_kernel():
    parallel = single_process()
    with autocast(parallel, torch.float32):
        fp32 = _attention_backward_name()
        assert not torch.is_autocast_enabled("cpu")
    with autocast(parallel, torch.bfloat16):
        bf16 = _attention_backward_name()
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert "Flash" in fp32  # fp32 keeps PyTorch's default (flash) kernel
    assert "Flash" not in bf16, bf16  # the math kernel: matrix products and a softmax
    assert not torch.is_autocast_enabled("cpu")  # the context is left as it was found
