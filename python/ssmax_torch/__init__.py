"""ssmax attention kernels (Softmax, Scalable-Softmax and length-scaled variants) for PyTorch.

    import ssmax_torch
    out = ssmax_torch.attention(q, k, v, policy=ssmax_torch.SSMax(s), causal=True)

See python/README.md for the API and its limits.
"""

from .errors import ArgumentError
from . import _C  # noqa: E402  (after errors: _C raises ArgumentError)
from .policies import Llama4Temperature, Mistral, Policy, QwenLogN, Softmax, SSMax
from .functional import attention
from . import nn
from .nn import ScalableSoftmaxAttention, replace_softmax

_C._set_error_type(ArgumentError)

__all__ = [
    "ArgumentError",
    "Llama4Temperature",
    "Mistral",
    "Policy",
    "QwenLogN",
    "Softmax",
    "SSMax",
    "ScalableSoftmaxAttention",
    "attention",
    "nn",
    "replace_softmax",
]
