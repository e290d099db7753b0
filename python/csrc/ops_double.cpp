// The double instantiation of the extension's kernels (see ops.hpp).
#include "ops_impl.hpp"

namespace ssmax_torch {
template void forward<double>(const call_spec&, ssmax::tensor_view<const double>,
                              ssmax::tensor_view<const double>, ssmax::tensor_view<const double>,
                              ssmax::tensor_view<double>, double*);
template void backward<double>(const call_spec&, ssmax::tensor_view<const double>,
                               ssmax::tensor_view<const double>, ssmax::tensor_view<const double>,
                               ssmax::tensor_view<const double>, ssmax::tensor_view<const double>,
                               const double*, ssmax::tensor_view<double>,
                               ssmax::tensor_view<double>, ssmax::tensor_view<double>, double*,
                               double*);
}  // namespace ssmax_torch
