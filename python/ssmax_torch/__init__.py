"""ssmax attention kernels (Softmax, Scalable-Softmax and length-scaled variants) for PyTorch.

    import ssmax_torch
    out = ssmax_torch.attention(q, k, v, policy=ssmax_torch.SSMax(s), causal=True)

See python/README.md for the API and its limits.
"""

import importlib.machinery as _machinery
import os as _os

from .errors import ArgumentError


def _missing_extension_error(error):
    """The ImportError to raise when the compiled extension _C failed to import: when this
    package's directory holds no _C at all and sits in the source tree (python/, beside
    setup.py), the usual cause is a working directory of python/, whose sources shadow the
    installed package; say so. Otherwise None (the original error stands)."""
    package = _os.path.dirname(_os.path.realpath(__file__))
    names = _os.listdir(package)
    if any(n.startswith("_C.") and n.endswith(tuple(_machinery.EXTENSION_SUFFIXES))
           for n in names):
        return None  # the extension is there but failed to load: the original error says why
    source = _os.path.dirname(package)
    if not _os.path.isfile(_os.path.join(source, "setup.py")):
        return ImportError(f"ssmax_torch: the compiled extension ssmax_torch._C is missing from "
                           f"{package}; reinstall the package ({error})")
    return ImportError(
        f"ssmax_torch is being imported from the source tree {package}, which has no compiled "
        f"extension (ssmax_torch._C): Python found these sources before the installed package, "
        f"because the current directory or sys.path holds {source}. Run from another directory "
        f"(e.g. the repository root), where the installed package is found; if it is not "
        f"installed, install it with `pip install --no-build-isolation {source}` (see "
        f"python/README.md).")


try:
    from . import _C  # noqa: E402  (after errors: _C raises ArgumentError)
except ImportError as _error:
    _better = _missing_extension_error(_error)
    if _better is None:
        raise
    raise _better from _error

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
