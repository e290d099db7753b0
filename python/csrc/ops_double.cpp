// The double instantiation of the extension's kernels (see ops.hpp).
#include "ops_impl.hpp"

SSMAX_TORCH_INSTANTIATE(double);
