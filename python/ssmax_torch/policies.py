"""Length policies: how a row's visible-key count n and query position p become the
multiplier m of its logits, softmax(m * scale * q.k). One class per policy of the C++
library's length_policy.hpp; pass an instance as ``attention(..., policy=...)``.

Formulas (natural logarithms):
    Softmax()                          m = 1
    SSMax(s, b, fixed_length)          m = s_h log n + b_h   (n = fixed_length when > 0)
    QwenLogN(train_length)             m = max(1, log(p + 1) / log(train_length))
    Llama4Temperature(floor_scale, a)  m = a log(1 + floor((p + 1) / floor_scale)) + 1
    Mistral(original_length, beta)     m = 1 + beta log(1 + floor(p / original_length))
"""

import torch

from .errors import fail, integer, real


class Policy:
    """Base class. Subclasses fill the extension's call description (``_fill``) and list
    the tensors autograd must see (``_tensors``)."""

    kind = 0

    def _tensors(self, heads):
        """Differentiable per-head parameters as float64 [heads] tensors (or None)."""
        return None, None

    def _fill(self, spec, s, b):
        """Sets spec.policy and copies the policy's fields (named as CallSpec's) to spec."""
        spec.policy = self.kind
        for name, value in vars(self).items():
            setattr(spec, name, value)

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Softmax(Policy):
    """Plain softmax attention: m = 1."""

    kind = 0


def _per_head(value, heads, name):
    """A float, 0-d / 1-element tensor (shared by every head) or [heads] tensor as a float64
    [heads] tensor; autograd flows through (a shared value gets the heads' sum)."""
    t = value if isinstance(value, torch.Tensor) else torch.tensor(float(value), dtype=torch.float64)
    if t.device.type != "cpu":
        fail("attention", name, f"must be on the CPU, got device {t.device}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.numel() == 1:
        t = t.reshape(()).expand(heads)
    elif t.dim() != 1 or t.numel() != heads:
        fail("attention", name, f"must be a number or hold one value per query head "
             f"({heads}), got shape {list(t.shape)}")
    return t.to(torch.float64).contiguous()


def _number_or_tensor(value, name):
    """SSMax's s or b as given: a tensor (checked per call) or a number, as a float."""
    return value if isinstance(value, torch.Tensor) else real("SSMax", name, value)


class SSMax(Policy):
    """Scalable-Softmax: m = s_h log n + b_h, n the row's visible keys (or fixed_length).

    s, b: a number, or a tensor with one value per query head (or one value in all); either
    may require grad, and attention's backward returns their gradients. Both must be finite,
    of any sign (a learned b is often negative: m < 0 on short rows, masked keys stay
    masked). b=None means 0 (the paper's default).
    """

    kind = 1

    def __init__(self, s=0.43, b=None, fixed_length=0):
        self.s = _number_or_tensor(s, "s")
        self.b = None if b is None else _number_or_tensor(b, "b")
        self.fixed_length = integer("SSMax", "fixed_length", fixed_length)

    def _tensors(self, heads):
        s = _per_head(self.s, heads, "policy.s")
        b = None if self.b is None else _per_head(self.b, heads, "policy.b")
        return s, b

    def _fill(self, spec, s, b):
        spec.policy = self.kind
        spec.s = s.detach()
        spec.b = None if b is None else b.detach()
        spec.b_value = 0.0
        spec.fixed_length = self.fixed_length


class QwenLogN(Policy):
    """Qwen's log-n scaling: m = max(1, log(p + 1) / log(train_length))."""

    kind = 2

    def __init__(self, train_length=8192):
        self.train_length = integer("QwenLogN", "train_length", train_length)


class Llama4Temperature(Policy):
    """Llama 4 temperature tuning: m = attn_scale log(1 + floor((p + 1) / floor_scale)) + 1."""

    kind = 3

    def __init__(self, floor_scale=8192, attn_scale=0.1):
        self.floor_scale = integer("Llama4Temperature", "floor_scale", floor_scale)
        self.attn_scale = real("Llama4Temperature", "attn_scale", attn_scale)


class Mistral(Policy):
    """Mistral (Ministral 3) length scaling: m = 1 + beta log(1 + floor(p / original_length))."""

    kind = 4

    def __init__(self, original_length=16384, beta=0.1):
        self.original_length = integer("Mistral", "original_length", original_length)
        self.beta = real("Mistral", "beta", beta)
