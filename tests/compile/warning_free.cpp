// Compiled with -Wall -Wextra -Werror and the headers on a plain -I (not -isystem), as a
// user's build may: the library's headers, through xsimd and the compiler's AVX-512
// intrinsics, must not warn (GCC 12's -Wmaybe-uninitialized in avx512fintrin.h, PR 105593).
#include <ssmax/ssmax.hpp>
#include <vector>

float warning_free() {
  std::vector<float> q(2 * 4 * 8, 0.5f), out(q.size()), y(16), d(q.size() * 3), lse(8);
  const auto in = ssmax::bshd_view(static_cast<const float*>(q.data()), 1, 4, 2, 8);
  ssmax::attention_options<ssmax::ssmax_policy> options;
  ssmax::attention_extras<float> extras;
  extras.lse = lse.data();
  ssmax::attention(in, in, in, ssmax::bshd_view(out.data(), 1, 4, 2, 8), options, extras);
  ssmax::softmax(q.data(), y.data(), 16);
  ssmax::scalable_softmax(q.data(), y.data(), 16, 0.43);
  ssmax::attention_gradients<float> grads{ssmax::bshd_view(d.data(), 1, 4, 2, 8),
                                          ssmax::bshd_view(d.data() + 64, 1, 4, 2, 8),
                                          ssmax::bshd_view(d.data() + 128, 1, 4, 2, 8)};
  const auto o = ssmax::bshd_view(static_cast<const float*>(out.data()), 1, 4, 2, 8);
  ssmax::attention_backward(in, in, in, o, in, lse.data(), grads, options);
  return out[0] + y[0] + d[0];
}
