"""The package's one error type, and the checks of scalar arguments that raise it."""

import math
import numbers
import operator

import torch

# The library's argument names (what ssmax::argument_error::argument() says) that differ
# from the Python keyword that carries the value.
_PYTHON_NAMES = {
    "options.mask.window": "window",
    "options.mask.query_offset": "query_offset",
    "options.mask.key_lengths": "key_lengths",
    "options.mask.cu_seqlens_q": "cu_seqlens_q",
    "options.mask.cu_seqlens_k": "cu_seqlens_k",
    "options.mask.sequences": "cu_seqlens_q",
    "options.mask.allowed": "attn_mask",
    "options.scale": "scale",
}


class ArgumentError(ValueError):
    """A bad argument to an ssmax_torch function (a ValueError).

    ``argument`` is the Python name of the offending argument (``"k"``, ``"key_lengths"``,
    ``"policy.s"``, ...). Raised both by the Python checks and, translated, for the C++
    library's ``ssmax::argument_error`` (whose message is kept).
    """

    def __init__(self, message, argument):
        python_name = _PYTHON_NAMES.get(argument, argument)
        if python_name != argument:
            message = f"{message} (Python argument '{python_name}')"
        super().__init__(message)
        self.argument = python_name


def fail(function, argument, problem):
    """Raises ArgumentError with the library's message format."""
    raise ArgumentError(f"ssmax_torch.{function}: argument '{argument}' {problem}", argument)


_INT64 = (-(2**63), 2**63 - 1)


def integer(function, argument, value):
    """value as a Python int: an int or integral 0-d tensor (never a bool, a float or a
    string), within int64; else ArgumentError naming argument."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_floating_point() \
                or value.is_complex():
            fail(function, argument, f"must be an integer, got a {value.dtype} tensor of shape "
                 f"{list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        fail(function, argument, f"must be an integer, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if not _INT64[0] <= value <= _INT64[1]:
        fail(function, argument, f"must fit in 64 bits, got {value}")
    return value


def constant_tensor(function, argument, value):
    """Refuses (ArgumentError naming argument) a tensor that requires grad where ssmax_torch
    computes no gradient: its gradient would otherwise be lost without a word."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        fail(function, argument, "is a tensor that requires grad, but ssmax_torch computes no "
             "gradient for it (only for q, k, v and SSMax's s and b): pass a number or "
             f"{argument}.detach()")


def real(function, argument, value):
    """value as a Python float: a real number or 1-element real tensor (not a bool or a
    string, nor a tensor that requires grad) that a double can hold; else ArgumentError
    naming argument."""
    if isinstance(value, torch.Tensor):
        constant_tensor(function, argument, value)
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            fail(function, argument, f"must be a number, got a {value.dtype} tensor of shape "
                 f"{list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(function, argument, f"must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        fail(function, argument, f"is too large for a double, got {value}")


def finite(function, argument, value):
    """real(), and also finite (SSMax's s and b where they are given as numbers: any sign,
    a learned b is often negative)."""
    value = real(function, argument, value)
    if not math.isfinite(value):
        fail(function, argument, f"must be finite, got {value}")
    return value
