// The float instantiation of the extension's kernels (see ops.hpp).
#include "ops_impl.hpp"

namespace ssmax_torch {
template void forward<float>(const call_spec&, ssmax::tensor_view<const float>,
                             ssmax::tensor_view<const float>, ssmax::tensor_view<const float>,
                             ssmax::tensor_view<float>, float*);
template void backward<float>(const call_spec&, ssmax::tensor_view<const float>,
                              ssmax::tensor_view<const float>, ssmax::tensor_view<const float>,
                              ssmax::tensor_view<const float>, ssmax::tensor_view<const float>,
                              const float*, ssmax::tensor_view<float>, ssmax::tensor_view<float>,
                              ssmax::tensor_view<float>, double*, double*);
}  // namespace ssmax_torch
