#pragma once
// ssmax: Softmax and Scalable-Softmax (SSMax) attention kernels. The one header most
// users need.
//
//   length_policy.hpp  how (visible keys n, position p) become the logit multiplier m
//   softmax.hpp        row-level softmax / SSMax / log-sum-exp / streaming state
//   row_state.hpp      the (max, sum) streaming state and its merge

#include "error.hpp"
#include "length_policy.hpp"
#include "row_state.hpp"
#include "softmax.hpp"
#include "version.hpp"
