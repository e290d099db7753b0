#pragma once
// ssmax: Softmax and Scalable-Softmax (SSMax) attention kernels. The one header most
// users need.
//
//   length_policy.hpp  how (visible keys n, position p) become the logit multiplier m
//   softmax.hpp        row-level softmax / SSMax / log-sum-exp / streaming state
//   row_state.hpp      the (max, sum) streaming state and its merge
//   tensor_view.hpp    strided [B, seq, H, d] views (BSHD, BHSD, Eigen helpers)
//   mask.hpp           attention masks and visible_keys(): which keys a row sees, its n
//   logit.hpp          the logit's extras: additive bias, ALiBi, soft-cap, sinks
//   attention.hpp      the multi-head attention operator (fused and materialised paths)
//   analysis.hpp       attention diagnostics: largest weight, weight on a key, entropy
//   softmax_backward.hpp    row backward: dL/dx and dL/dm (training a learnable SSMax s)
//   attention_backward.hpp  the attention operator's backward: dq, dk, dv, ds, db
//   policy_gradient.hpp     dL/dm of a row -> dL/ds_h, dL/db_h of an SSMax policy
//   quantize.hpp       8-bit K/V formats (fp8 e4m3 / e5m2, ggml's Q8_0) and their helpers

#include "analysis.hpp"
#include "attention.hpp"
#include "attention_backward.hpp"
#include "error.hpp"
#include "length_policy.hpp"
#include "logit.hpp"
#include "mask.hpp"
#include "paged.hpp"
#include "policy_gradient.hpp"
#include "quantize.hpp"
#include "row_state.hpp"
#include "softmax.hpp"
#include "softmax_backward.hpp"
#include "storage.hpp"
#include "tensor_view.hpp"
#include "version.hpp"
