// Attention benchmarks: prefill (n_q = n_k) and decode (n_q = 1) for the fused and the
// materialised kernels and a plain Eigen composition (Q K^T, row softmax, times V), with
// Softmax and SSMax, 8 heads, float, d = 64 and 128; plus, in the same run, the machine's
// FMA peak (a register-blocked xsimd FMA loop), a plain memory copy's bandwidth and one
// thread's read bandwidth (support/machine_peaks.hpp), so each kernel is also reported as a
// fraction of them.
//
// Names: "<kind>/<impl>/<policy>/d:<d>/n:<n>/threads:<t>", e.g.
// prefill/fused/ssmax/d:128/n:4096/threads:1; grouped-query decode (8 query heads over 2
// key/value heads) adds "/kv:2" after the policy. Counters:
//   GFLOPs     4 n_q n_k d per head (half of it when causal) per second
//   of_peak    GFLOPs / (threads x the 1-thread FMA peak measured first)
//   GBs        decode: bytes of K and V read per second
//   of_copy    GBs / the copy bandwidth (bytes read + written per second, STREAM's convention)
//   of_read    GBs / one thread's read bandwidth (read/sum/256MiB: bytes read per second)
//   extra_MB   memory the call needs beyond inputs and outputs (workspace, or Eigen's scores)
// 16-bit storage (q, k, v and out all bf16 or all f16, computed in float) adds "/bf16" or
// "/f16" after the policy: prefill causal d = 64 and 128, n = 4096; decode n_k = 32768,
// d = 128, MHA and GQA 8:2; their GBs count the 16-bit bytes of K and V actually read.
// "/bf16w": bf16 prefill with the opt-in bf16 weights (attention_options::
// allow_bf16_weights: P rounded to bf16 for P V). "/bf16-dots" and "/bf16-widened": the bf16
// prefill with each bf16 method forced (attention_options::bf16: vdpbf16ps, or the float
// GEMM on q and k widened while packing), where the build has AVX512-BF16; "/bf16" takes
// the CPU's automatic choice. The 16-bit decode speedup: the time of
// decode/fused/softmax/d:128/n:32768/threads:1 over that of
// decode/fused/softmax/bf16/d:128/n:32768/threads:1 (or /f16) of the same run, and the same for
// "/kv:2": the "float / 16-bit" table after the run.
//   of_bf16_peak  "bf16" runs: GFLOPs / the bf16 dot-product peak (peak/dpbf16/bf16)
// 8-bit K/V caches (q and out float) add the format after the policy: "/q8_0" (ggml's Q8_0
// blocks), "/e4m3" and "/e5m2" (fp8, one scale for the tensor) and "/q8_0k-f16v" (Q8_0 k,
// half v) and "/q8_0-int8" (Q8_0 k and v with attention_options::allow_int8_dot_products):
// Softmax decode, n_k = 32768, d = 128, MHA and GQA 8:2; their GBs count the bytes
// of K and V actually read (Q8_0: 34 bytes per 32 values). "decode/paged/softmax/q8_0/..."
// (and "/q8_0-int8/"): the Q8_0 decode through paged_attention, blocks of 16 tokens in
// shuffled order. After the
// run: "bf16 / 8-bit" (the "/bf16" decode's time over each 8-bit one's), "float / 8-bit"
// and "paged / contiguous" (the paged Q8_0 decode's time over the contiguous one's).
// The logit soft-cap (c = 50, Gemma 2's): "prefill/fused/softmax/softcap/d:128/n:<n>" for
// n = 1024 and 4096; its cost is its time over prefill/fused/softmax/d:128/n:<n> of the run.
// The score GEMM tile alone: "tile/gemm/<float|bf16>/d:<d>" (register_tiles). After the
// table, ratios of the same run: SSMax / Softmax time and the 2-thread speedup.
// Typical run (the tables of docs/performance.md):
//   bench_attention --benchmark_filter='peak|copy|d:128/n:4096/|decode/.*n:32768'
//   --benchmark_min_time=1
// and for the 8-bit caches:
//   bench_attention --benchmark_filter='peak|copy|decode/.*d:128/n:32768'
//   --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/kernels/convert.hpp>
#include <ssmax/kernels/gemm_bf16.hpp>
#include <ssmax/paged.hpp>
#include <ssmax/quantize.hpp>
#include <string>
#include <type_traits>
#include <vector>

#include "support/machine_peaks.hpp"
#include "support/ratio_reporter.hpp"
#include "support/run.hpp"

namespace {

using ssmax::index_t;

/// q, k, v (BSHD, float), random in [-1, 1]; H query heads, H_kv key/value heads.
struct tensors {
  index_t n_q, n_k, H, H_kv, d;
  std::vector<float> q, k, v, out;
  tensors(index_t nq, index_t nk, index_t heads, index_t kv_heads, index_t dim)
      : n_q(nq), n_k(nk), H(heads), H_kv(kv_heads), d(dim) {
    std::mt19937 gen(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    q.resize(static_cast<size_t>(n_q * H * d));
    k.resize(static_cast<size_t>(n_k * H_kv * d));
    v.resize(k.size());
    out.resize(q.size());
    for (auto* t : {&q, &k, &v})
      for (auto& x : *t) x = u(gen);
  }
  ssmax::tensor_view<const float> qv() const { return ssmax::bshd_view(q.data(), 1, n_q, H, d); }
  ssmax::tensor_view<const float> kv() const { return ssmax::bshd_view(k.data(), 1, n_k, H_kv, d); }
  ssmax::tensor_view<const float> vv() const { return ssmax::bshd_view(v.data(), 1, n_k, H_kv, d); }
  ssmax::tensor_view<float> ov() { return ssmax::bshd_view(out.data(), 1, n_q, H, d); }
};

constexpr index_t kHeads = 8;

void set_counters(benchmark::State& state, double flops, double kv_bytes, int threads,
                  double extra_bytes) {
  using benchmark::Counter;
  state.counters["GFLOPs"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  if (kv_bytes > 0)
    state.counters["GBs"] = Counter(kv_bytes * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["extra_MB"] = extra_bytes / (1 << 20);
  state.counters["threads"] = threads;
}

/// Calls call(&workspace) once (the workspace grows once), then once per iteration; returns
/// the workspace's bytes.
template <class Call>  // void(ssmax::attention_workspace*): one attention call
std::size_t time_calls(benchmark::State& state, const void* out, Call call) {
  ssmax::attention_workspace ws;
  call(&ws);  // warm-up
  for (auto _ : state) {
    call(&ws);
    benchmark::DoNotOptimize(out);
  }
  return ws.capacity();
}

/// ssmax's operator. decode: n_q = 1 over n keys; prefill: n_q = n_k = n, causal. kHeads
/// query heads over kv_heads key/value heads.
template <class Policy>
void run_ssmax(benchmark::State& state, bool decode, ssmax::attention_path path, index_t n,
               index_t d, int threads, index_t kv_heads = kHeads, double softcap = 0.0) {
  tensors t(decode ? 1 : n, n, kHeads, kv_heads, d);
  ssmax::attention_options<Policy> o;
  o.mask = ssmax::attention_mask::causal_mask();
  o.logit.softcap = softcap;
  o.threads = threads;
  o.path = path;
  const std::size_t extra = ssmax::attention_workspace_bytes(t.qv(), t.kv(), t.vv(), t.ov(), o);
  time_calls(state, t.out.data(), [&](ssmax::attention_workspace* ws) {
    ssmax::attention(t.qv(), t.kv(), t.vv(), t.ov(), o, {}, ws);
  });
  const double pairs =
      decode ? static_cast<double>(n) : 0.5 * static_cast<double>(n) * static_cast<double>(n);
  const double flops = 4.0 * pairs * static_cast<double>(d) * kHeads;
  const double kv_bytes =
      decode ? 2.0 * static_cast<double>(n * kv_heads * d) * sizeof(float) : 0.0;
  set_counters(state, flops, kv_bytes, threads, static_cast<double>(extra));
}

/// The plain Eigen composition, one head at a time: S = m scale Q K^T (+ causal mask),
/// row softmax (the library's row kernel), O = S V.
void run_eigen(benchmark::State& state, bool decode, bool ssmax_policy, index_t n, index_t d,
               int threads) {
  using Mat = ssmax::row_matrix<float>;
  tensors t(decode ? 1 : n, n, kHeads, kHeads, d);
  Eigen::setNbThreads(threads);
  Mat S = Mat::Zero(t.n_q, t.n_k), O = Mat::Zero(t.n_q, d);  // touched: no page faults in the loop
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (auto _ : state) {
    for (index_t h = 0; h < kHeads; ++h) {
      auto Q = ssmax::head_matrix(t.qv(), 0, h);
      auto K = ssmax::head_matrix(t.kv(), 0, h);
      auto V = ssmax::head_matrix(t.vv(), 0, h);
      S.noalias() = (Q * scale) * K.transpose();
      for (index_t i = 0; i < t.n_q; ++i) {
        const index_t p = decode ? n - 1 : i, visible = p + 1;
        const float m =
            ssmax_policy ? static_cast<float>(0.43 * std::log(static_cast<double>(visible))) : 1.0f;
        ssmax::kernels::scaled_softmax_row<ssmax::default_arch>(S.row(i).data(), S.row(i).data(),
                                                                visible, m);
        std::fill(S.row(i).data() + visible, S.row(i).data() + t.n_k, 0.0f);
      }
      O.noalias() = S * V;
      ssmax::head_matrix(t.ov(), 0, h) = O;
    }
    benchmark::DoNotOptimize(t.out.data());
  }
  Eigen::setNbThreads(0);
  // The Eigen composition computes the full product, masked or not; it is credited with
  // the same (causal) flops as the kernels so the GFLOPs columns compare times.
  const double pairs =
      decode ? static_cast<double>(n) : 0.5 * static_cast<double>(n) * static_cast<double>(n);
  const double kv_bytes = decode ? 2.0 * static_cast<double>(n * kHeads * d) * sizeof(float) : 0.0;
  set_counters(state, 4.0 * pairs * static_cast<double>(d) * kHeads, kv_bytes, threads,
               static_cast<double>(t.n_q * t.n_k) * sizeof(float));
}

/// The scale of the fp8 caches: |x| <= 1 maps to codes of at most 256, within e4m3's range
/// (448) and e5m2's.
constexpr float kFp8Scale = 1.0f / 256;

/// x stored as S: 16-bit values, fp8 codes of x / kFp8Scale, or Q8_0 blocks (x.size() a
/// multiple of 32).
template <class S>  // Eigen::bfloat16, Eigen::half, or an 8-bit format (storage.hpp)
std::vector<S> encode(const std::vector<float>& x) {
  std::vector<S> y(x.size() / ssmax::values_per_element_v<S>);
  const auto n = static_cast<index_t>(x.size());
  if constexpr (std::is_same_v<S, ssmax::block_q8_0>)
    ssmax::quantize_q8_0(x.data(), n, y.data());
  else if constexpr (ssmax::is_fp8_v<S>)
    ssmax::quantize_fp8(x.data(), n, kFp8Scale, y.data());
  else
    std::transform(x.begin(), x.end(), y.begin(),
                   [](float v) { return ssmax::kernels::from_compute<S>(v); });
  return y;
}

/// ssmax's operator with q, k, v and out stored as S (Eigen::bfloat16 or Eigen::half):
/// as run_ssmax, the GBs counter counting the bytes of S read for K and V.
template <class S, class Policy>  // a 16-bit storage type; a length policy
void run_stored(benchmark::State& state, bool decode, index_t n, index_t d, int threads,
                index_t kv_heads, bool bf16_weights = false,
                ssmax::bf16_method method = ssmax::bf16_method::automatic) {
  tensors t(decode ? 1 : n, n, kHeads, kv_heads, d);
  const std::vector<S> q = encode<S>(t.q), k = encode<S>(t.k), v = encode<S>(t.v);
  std::vector<S> out(q.size());
  const auto qv = ssmax::bshd_view(q.data(), 1, t.n_q, kHeads, d);
  const auto kv = ssmax::bshd_view(k.data(), 1, n, kv_heads, d);
  const auto vv = ssmax::bshd_view(v.data(), 1, n, kv_heads, d);
  const auto ov = ssmax::bshd_view(out.data(), 1, t.n_q, kHeads, d);
  ssmax::attention_options<Policy> o;
  o.mask = ssmax::attention_mask::causal_mask();
  o.threads = threads;
  o.path = ssmax::attention_path::fused;
  o.allow_bf16_weights = bf16_weights;
  o.bf16 = method;
  const std::size_t extra = ssmax::attention_workspace_bytes(qv, kv, vv, ov, o);
  time_calls(state, out.data(),
             [&](ssmax::attention_workspace* ws) { ssmax::attention(qv, kv, vv, ov, o, {}, ws); });
  const double pairs =
      decode ? static_cast<double>(n) : 0.5 * static_cast<double>(n) * static_cast<double>(n);
  const double kv_bytes = decode ? 2.0 * static_cast<double>(n * kv_heads * d) * sizeof(S) : 0.0;
  set_counters(state, 4.0 * pairs * static_cast<double>(d) * kHeads, kv_bytes, threads,
               static_cast<double>(extra));
}

/// The 16-bit cases (see the top of the file), Softmax and SSMax.
void register_16bit() {
  struct shape {
    bool decode;
    index_t n, d, kv_heads;
  };
  const shape shapes[] = {{false, 4096, 64, kHeads},
                          {false, 4096, 128, kHeads},
                          {true, 32768, 128, kHeads},
                          {true, 32768, 128, 2}};
  for (const shape& sh : shapes)
    for (int threads : {1, 2})
      for (bool bf : {true, false})
        for (bool ss : {false, true}) {
          const std::string name =
              std::string(sh.decode ? "decode" : "prefill") + "/fused/" +
              (ss ? "ssmax" : "softmax") + (bf ? "/bf16" : "/f16") +
              (sh.kv_heads != kHeads ? "/kv:" + std::to_string(sh.kv_heads) : "") +
              "/d:" + std::to_string(sh.d) + "/n:" + std::to_string(sh.n) +
              "/threads:" + std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(),
                                       [=](benchmark::State& s) {
                                         if (bf && ss)
                                           run_stored<Eigen::bfloat16, ssmax::ssmax_policy>(
                                               s, sh.decode, sh.n, sh.d, threads, sh.kv_heads);
                                         else if (bf)
                                           run_stored<Eigen::bfloat16, ssmax::softmax_policy>(
                                               s, sh.decode, sh.n, sh.d, threads, sh.kv_heads);
                                         else if (ss)
                                           run_stored<Eigen::half, ssmax::ssmax_policy>(
                                               s, sh.decode, sh.n, sh.d, threads, sh.kv_heads);
                                         else
                                           run_stored<Eigen::half, ssmax::softmax_policy>(
                                               s, sh.decode, sh.n, sh.d, threads, sh.kv_heads);
                                       })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
#ifdef SSMAX_HAVE_AVX512BF16
  // Each bf16 method forced (attention_options::bf16), where the build has both:
  // "/bf16-dots" (vdpbf16ps) and "/bf16-widened" (the float GEMM); "/bf16" is automatic.
  for (const shape& sh : shapes)
    for (int threads : {1, 2})
      for (bool dots : {true, false}) {
        if (sh.decode) continue;
        const auto method =
            dots ? ssmax::bf16_method::dot_products : ssmax::bf16_method::float_gemm;
        const std::string name = std::string("prefill/fused/softmax/") +
                                 (dots ? "bf16-dots" : "bf16-widened") +
                                 "/d:" + std::to_string(sh.d) + "/n:" + std::to_string(sh.n) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(),
                                     [=](benchmark::State& s) {
                                       run_stored<Eigen::bfloat16, ssmax::softmax_policy>(
                                           s, false, sh.n, sh.d, threads, sh.kv_heads, false,
                                           method);
                                     })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
#endif
  // The opt-in bf16 weights (attention_options::allow_bf16_weights): bf16 prefill with P
  // rounded to bf16 for P V, "/bf16w" after the policy.
  for (const shape& sh : shapes)
    for (int threads : {1, 2})
      for (bool ss : {false, true}) {
        if (sh.decode) continue;
        const std::string name = std::string("prefill/fused/") + (ss ? "ssmax" : "softmax") +
                                 "/bf16w/d:" + std::to_string(sh.d) + "/n:" + std::to_string(sh.n) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(),
                                     [=](benchmark::State& s) {
                                       if (ss)
                                         run_stored<Eigen::bfloat16, ssmax::ssmax_policy>(
                                             s, false, sh.n, sh.d, threads, sh.kv_heads, true);
                                       else
                                         run_stored<Eigen::bfloat16, ssmax::softmax_policy>(
                                             s, false, sh.n, sh.d, threads, sh.kv_heads, true);
                                     })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
}

/// The scale of K or V stored as S (encode): kFp8Scale for fp8, none for the others.
template <class S>  // a K/V storage type
ssmax::value_scale kv_scale() {
  return ssmax::is_fp8_v<S> ? ssmax::value_scale{&kFp8Scale} : ssmax::value_scale{};
}

/// A [1, n, H_kv, d] view of K or V stored as S (encode), with its scale.
template <class S>  // a K/V storage type
ssmax::tensor_view<const S> kv_view(const std::vector<S>& x, index_t n, index_t kv_heads,
                                    index_t d) {
  auto view = ssmax::bshd_view(x.data(), 1, n, kv_heads, d / ssmax::values_per_element_v<S>);
  view.scale = kv_scale<S>();
  return view;
}

/// The pool of a paged cache holding x (one sequence, blocks of `block` elements): logical
/// block b of x in pool block table[b].
template <class S>  // a K/V storage type
std::vector<S> paged_pool(const std::vector<S>& x, std::size_t block,
                          const std::vector<std::int32_t>& table) {
  std::vector<S> pool(x.size());
  for (std::size_t b = 0; b < table.size(); ++b)
    std::copy_n(x.begin() + static_cast<std::ptrdiff_t>(b * block), block,
                pool.begin() + static_cast<std::ptrdiff_t>(table[b] * block));
  return pool;
}

/// Decode through paged_attention: k and v (one sequence of n tokens) copied into pools of
/// 16-token blocks in shuffled order; returns the workspace's bytes.
template <class K, class V>  // K/V storage types
std::size_t time_paged(benchmark::State& state, tensors& t, const std::vector<K>& k,
                       const std::vector<V>& v,
                       const ssmax::attention_options<ssmax::softmax_policy>& o) {
  constexpr index_t kBlock = 16;
  std::vector<std::int32_t> table(static_cast<std::size_t>(t.n_k / kBlock));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(2));
  const auto values = static_cast<std::size_t>(kBlock * t.H_kv * t.d);  // in a pool block
  const std::vector<K> k_pool = paged_pool(k, values / ssmax::values_per_element_v<K>, table);
  const std::vector<V> v_pool = paged_pool(v, values / ssmax::values_per_element_v<V>, table);
  const std::int32_t length = static_cast<std::int32_t>(t.n_k);
  ssmax::paged_kv_cache<K, V> cache;
  cache.k_pool = k_pool.data(), cache.v_pool = v_pool.data();
  cache.num_blocks = static_cast<index_t>(table.size()), cache.block_size = kBlock;
  cache.kv_heads = t.H_kv, cache.dim = t.d;
  cache.block_table = table.data(), cache.max_blocks = cache.num_blocks;
  cache.cache_lengths = &length;
  cache.k_scale = kv_scale<K>(), cache.v_scale = kv_scale<V>();
  return time_calls(state, t.out.data(), [&](ssmax::attention_workspace* ws) {
    ssmax::paged_attention(t.qv(), cache, t.ov(), o, {}, ws);
  });
}

/// Softmax decode (n_q = 1 over n keys, float q and out) with K stored as K and V as V
/// (encode), contiguous or paged (time_paged); the GBs counter counts the bytes of K and V
/// stored, extra_MB the workspace.
template <class K, class V, bool Int8 = false>  // K/V storage types; allow_int8_dot_products
void run_8bit(benchmark::State& state, bool paged, index_t n, index_t d, int threads,
              index_t kv_heads) {
  tensors t(1, n, kHeads, kv_heads, d);
  const std::vector<K> k = encode<K>(t.k);
  const std::vector<V> v = encode<V>(t.v);
  ssmax::attention_options<ssmax::softmax_policy> o;
  o.threads = threads;
  o.allow_int8_dot_products = Int8;
  std::size_t extra = 0;
  if (paged) {
    extra = time_paged(state, t, k, v, o);
  } else {
    o.mask = ssmax::attention_mask::causal_mask();
    const auto kv = kv_view(k, n, kv_heads, d);
    const auto vv = kv_view(v, n, kv_heads, d);
    extra = time_calls(state, t.out.data(), [&](ssmax::attention_workspace* ws) {
      ssmax::attention(t.qv(), kv, vv, t.ov(), o, {}, ws);
    });
  }
  const double kv_bytes = static_cast<double>(k.size() * sizeof(K) + v.size() * sizeof(V));
  set_counters(state, 4.0 * static_cast<double>(n * d * kHeads), kv_bytes, threads,
               static_cast<double>(extra));
}

/// The 8-bit K/V names after the policy (see the top of the file).
const std::vector<std::string> kEightBitFormats = {"q8_0", "e4m3", "e5m2", "q8_0k-f16v",
                                                   "q8_0-int8"};

/// The 8-bit decode cases (see the top of the file): each format contiguous, Q8_0 also paged.
void register_8bit() {
  using run = void (*)(benchmark::State&, bool, index_t, index_t, int, index_t);
  const run runs[] = {
      run_8bit<ssmax::block_q8_0, ssmax::block_q8_0>, run_8bit<ssmax::fp8_e4m3, ssmax::fp8_e4m3>,
      run_8bit<ssmax::fp8_e5m2, ssmax::fp8_e5m2>, run_8bit<ssmax::block_q8_0, Eigen::half>,
      run_8bit<ssmax::block_q8_0, ssmax::block_q8_0, true>};
  for (index_t kv_heads : {kHeads, index_t{2}})
    for (int threads : {1, 2})
      for (std::size_t f = 0; f < kEightBitFormats.size(); ++f)
        for (bool paged : {false, true}) {
          if (paged && f != 0 && f != 4) continue;  // paged: Q8_0 only
          const std::string name = std::string("decode/") + (paged ? "paged" : "fused") +
                                   "/softmax/" + kEightBitFormats[f] +
                                   (kv_heads != kHeads ? "/kv:" + std::to_string(kv_heads) : "") +
                                   "/d:128/n:32768/threads:" + std::to_string(threads);
          const run r = runs[f];
          benchmark::RegisterBenchmark(
              name.c_str(),
              [=](benchmark::State& s) { r(s, paged, 32768, 128, threads, kv_heads); })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
}

/// The score GEMM tile alone (L1/L2-resident operands): S[64 x 256] = Q' K^T of one query
/// block and one key block, K^T packed once, as the fused prefill runs it per strip.
/// "tile/gemm/float/d:<d>" (the float GEMM, gemm.hpp) and, with AVX512-BF16,
/// "tile/gemm/bf16/d:<d>" (gemm_bf16.hpp; its of_bf16_peak is against peak/dpbf16/bf16).
void run_tile(benchmark::State& state, bool bf16, index_t d) {
  namespace k = ssmax::kernels;
  // keys through a volatile: with every size a constant GCC 12 warns falsely on pack_kt.
  volatile index_t block = k::kKeyBlock;
  const index_t rows = 64, keys = block;  // a query block of 64 rows
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(rows * d)), kv(static_cast<size_t>(keys * d));
  for (auto* t : {&q, &kv})
    for (auto& x : *t) x = u(gen);
  const index_t lds = k::detail::score_stride(16);
  std::vector<float> s(static_cast<size_t>(rows * lds));
  if (!bf16) {
    const index_t ldk = k::detail::kt_stride(keys, 16);
    std::vector<float> kt(static_cast<size_t>(d * ldk));
    k::detail::pack_kt<ssmax::default_arch>(kv.data(), d, keys, d, keys, ldk, kt.data());
    for (auto _ : state) {
      k::detail::gemm<ssmax::default_arch>(rows, keys, d, q.data(), d, kt.data(), ldk, s.data(),
                                           lds, false);
      benchmark::DoNotOptimize(s.data());
    }
  } else {
#ifdef SSMAX_HAVE_AVX512BF16
    const index_t kp = k::detail::bf16_pairs(d), ldk = 2 * keys + 32;
    std::vector<Eigen::bfloat16> qb(q.begin(), q.end()), kb(kv.begin(), kv.end());
    std::vector<std::uint16_t> kt(static_cast<size_t>(kp * ldk));
    std::vector<std::uint32_t> qp(static_cast<size_t>(rows * kp));
    const std::vector<float> f(static_cast<size_t>(rows), 1.0f);
    k::detail::pack_kt_bf16(kb.data(), d, keys, d, keys, ldk, kt.data());
    for (index_t r = 0; r < rows; ++r) k::detail::pack_q_bf16(&qb[r * d], d, &qp[r * kp]);
    for (auto _ : state) {
      k::detail::gemm_bf16(rows, keys, kp, qp.data(), kp, kt.data(), ldk, f.data(), s.data(), lds);
      benchmark::DoNotOptimize(s.data());
    }
#endif
  }
  set_counters(state, 2.0 * rows * keys * d, 0, 1, 0);
}

void register_tiles() {
  for (index_t d : {64, 128}) {
    const std::string tail = "/d:" + std::to_string(d);
    benchmark::RegisterBenchmark(("tile/gemm/float" + tail).c_str(),
                                 [=](benchmark::State& s) { run_tile(s, false, d); });
#ifdef SSMAX_HAVE_AVX512BF16
    benchmark::RegisterBenchmark(("tile/gemm/bf16" + tail).c_str(),
                                 [=](benchmark::State& s) { run_tile(s, true, d); });
#endif
  }
}

void register_all() {
  ssmax::bench::register_fma_peak();
  ssmax::bench::register_bf16_peak();
  ssmax::bench::register_memory_copy();
  ssmax::bench::register_memory_read();
  register_tiles();
  for (bool decode : {false, true})
    for (index_t d : {64, 128}) {
      const std::vector<index_t> sizes = decode ? std::vector<index_t>{4096, 32768, 131072}
                                                : std::vector<index_t>{128, 512, 1024, 4096, 16384};
      for (index_t n : sizes)
        for (int threads : {1, 2}) {
          const std::string tail = "/d:" + std::to_string(d) + "/n:" + std::to_string(n) +
                                   "/threads:" + std::to_string(threads);
          const std::string kind = decode ? "decode" : "prefill";
          for (bool ss : {false, true}) {
            const std::string pol = ss ? "ssmax" : "softmax";
            for (auto path : {ssmax::attention_path::fused, ssmax::attention_path::materialised}) {
              const std::string impl =
                  path == ssmax::attention_path::fused ? "fused" : "materialised";
              benchmark::RegisterBenchmark(
                  (kind + "/" + impl + "/" + pol + tail).c_str(),
                  [=](benchmark::State& s) {
                    if (ss)
                      run_ssmax<ssmax::ssmax_policy>(s, decode, path, n, d, threads);
                    else
                      run_ssmax<ssmax::softmax_policy>(s, decode, path, n, d, threads);
                  })
                  ->Unit(benchmark::kMillisecond)
                  ->UseRealTime();
            }
            if (n <= 16384)
              benchmark::RegisterBenchmark(
                  (kind + "/eigen/" + pol + tail).c_str(),
                  [=](benchmark::State& s) { run_eigen(s, decode, ss, n, d, threads); })
                  ->Unit(benchmark::kMillisecond)
                  ->UseRealTime();
          }
        }
    }
  // The logit soft-cap's cost (Gemma 2's c = 50): compare prefill/fused/softmax/softcap/...
  // with prefill/fused/softmax/... of the same run.
  for (index_t n : {1024, 4096})
    for (int threads : {1, 2})
      benchmark::RegisterBenchmark(("prefill/fused/softmax/softcap/d:128/n:" + std::to_string(n) +
                                    "/threads:" + std::to_string(threads))
                                       .c_str(),
                                   [=](benchmark::State& s) {
                                     run_ssmax<ssmax::softmax_policy>(
                                         s, false, ssmax::attention_path::fused, n, 128, threads,
                                         kHeads, 50.0);
                                   })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
  // Grouped-query decode: 8 query heads over 2 key/value heads, each read once per group.
  for (int threads : {1, 2})
    for (bool ss : {false, true})
      benchmark::RegisterBenchmark(
          (std::string("decode/fused/") + (ss ? "ssmax" : "softmax") +
           "/kv:2/d:128/n:32768/threads:" + std::to_string(threads))
              .c_str(),
          [=](benchmark::State& s) {
            const auto path = ssmax::attention_path::fused;
            if (ss)
              run_ssmax<ssmax::ssmax_policy>(s, true, path, 32768, 128, threads, 2);
            else
              run_ssmax<ssmax::softmax_policy>(s, true, path, 32768, 128, threads, 2);
          })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  register_16bit();
  register_8bit();
  // of_peak (and of_bf16_peak, of_copy) from the peak runs, then the ratio tables: SSMax
  // against Softmax (time; target <= 1.02), 2 threads against 1 (speedup; prefill
  // target >= 1.8), 16-bit storage against float (speedup), 8-bit K/V against bf16 and
  // float (speedup) and paged Q8_0 against contiguous (time), medians with
  // --benchmark_repetitions.
  using reporter = ssmax::bench::fraction_reporter<ssmax::bench::ratio_reporter>;
  return ssmax::bench::run_with<reporter>(
      argc, argv,
      std::vector<ssmax::bench::comparison>{
          {2, "softmax", "ssmax / softmax (time)", false},
          {5, "threads:1", "threads:2 / threads:1 (speedup)", true},
          {3, "", "float / 16-bit (speedup)", true, {"bf16", "bf16w", "f16"}},
          {3, "bf16", "bf16 / 8-bit (speedup)", true, kEightBitFormats},
          {3, "", "float / 8-bit (speedup)", true, kEightBitFormats},
          {1, "fused", "paged / contiguous (time)", false, {"paged"}}});
}
