// The float instantiation of the extension's kernels (see ops.hpp).
#include "ops_impl.hpp"

SSMAX_TORCH_INSTANTIATE(float);
