"""The package's one error type."""

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
