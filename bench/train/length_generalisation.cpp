// Length generalisation of a small trained attention model: Softmax against SSMax with a
// learnable s, and SSMax with a learnable s and bias b (../shared/PAPER.md sections 1, 4
// and 5), trained at one context length and evaluated at 1x .. 32x that length.
//
// Task (synthetic key-value retrieval, one "needle"): a context of L tokens, each a pair
// (key, value) with key in [0, K) and value in [0, V), followed by one query token that
// names a key q. Exactly one context token (the needle, at a uniformly random position)
// has key q; every other token has a key != q. The target is the needle's value. There are
// no positional encodings: the task is invariant to the order of the context, so the
// only thing that changes with L is how many distractors the query's attention is spread
// over, which is the effect the paper is about.
//
// Model (float, Eigen for the dense layers, ssmax::attention / attention_backward for the
// attention, Adam):
//   x_t = E_key[k_t] + E_val[v_t]  (context),   x_q = E_key[q] + e_query  (query token)
//   one attention layer, H heads of dimension dh, the query row attending to all L + 1
//   tokens (so n = L + 1 for SSMax):  y = x_q + Attn(x_q, x) W_o
//   an MLP with a residual: y2 = y + relu(y W_1 + b_1) W_2 + b_2,  logits = y2 W_out + b_out
//   cross-entropy on the needle's value.
// Policies: softmax; SSMax with per-head s (learned, started at 1 / log(L_train + 1), where
// SSMax equals Softmax at the training length); SSMax with per-head s and b (b started at 0).
// s and b are unconstrained: the library accepts any finite s and b (a negative b, and so a
// multiplier below 0 on short rows, included), so Adam updates them like every other weight.
//
// Training speed: the first step at which the running loss (an exponential average,
// weight 0.02) falls below 0.1.
// Output: a table (accuracy and the attention weight on the needle, averaged over test
// sequences, of the head that weighs it most), and the same as CSV (--csv PATH) for
// bench/train/length_generalisation.gp. Deterministic for a given --seed: single-threaded
// training, the library's results do not depend on the thread count.
//
//   ssmax_length_generalisation [--seed 1] [--steps 2000] [--train-length 64]
//                               [--eval 512] [--csv length_generalisation.csv]

#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <ssmax/attention.hpp>
#include <ssmax/attention_backward.hpp>
#include <string>
#include <vector>
#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace {

using ssmax::index_t;
using Mat = ssmax::row_matrix<float>;
using Vec = Eigen::RowVectorXf;

struct config {
  unsigned seed = 1;
  int steps = 2000;
  index_t train_length = 64;
  int eval_sequences = 512;
  std::string csv = "length_generalisation.csv";
  // Model and task sizes.
  index_t keys = 32, values = 16, d_model = 32, heads = 2, d_head = 16, d_ff = 64, batch = 32;
  float lr = 3e-3f;
};

enum class variant { softmax, ssmax_s, ssmax_sb };
const char* name_of(variant v) {
  return v == variant::softmax ? "softmax" : (v == variant::ssmax_s ? "ssmax(s)" : "ssmax(s,b)");
}

/// A batch of sequences: keys and values of the L context tokens, the query key, the
/// needle's position and the target value.
struct batch_data {
  index_t L = 0;
  std::vector<int> key, value;  // [B, L]
  std::vector<int> query, needle, target;
};

batch_data make_batch(const config& c, index_t L, index_t B, std::mt19937& rng) {
  batch_data d;
  d.L = L;
  d.key.resize(static_cast<size_t>(B * L));
  d.value.resize(d.key.size());
  std::uniform_int_distribution<int> key_of(0, static_cast<int>(c.keys) - 1);
  std::uniform_int_distribution<int> other_key(0, static_cast<int>(c.keys) - 2);
  std::uniform_int_distribution<int> value_of(0, static_cast<int>(c.values) - 1);
  std::uniform_int_distribution<index_t> position(0, L - 1);
  for (index_t b = 0; b < B; ++b) {
    const int q = key_of(rng);
    const index_t at = position(rng);
    for (index_t t = 0; t < L; ++t) {
      int k = other_key(rng);
      if (k >= q) ++k;  // every key but q
      d.key[static_cast<size_t>(b * L + t)] = t == at ? q : k;
      d.value[static_cast<size_t>(b * L + t)] = value_of(rng);
    }
    d.query.push_back(q);
    d.needle.push_back(static_cast<int>(at));
    d.target.push_back(d.value[static_cast<size_t>(b * L + at)]);
  }
  return d;
}

/// One trainable tensor with its Adam moments.
struct param {
  Mat w, g, m, v;
  void init(index_t rows, index_t cols, float stddev, std::mt19937& rng) {
    w = Mat::Zero(rows, cols);
    if (stddev > 0.0f) {
      std::normal_distribution<float> n(0.0f, stddev);
      for (index_t i = 0; i < w.size(); ++i) w.data()[i] = n(rng);
    }
    g = Mat::Zero(rows, cols);
    m = g;
    v = g;
  }
};

struct model {
  param E_key, E_val, e_query, W_q, W_k, W_v, W_o, W_1, b_1, W_2, b_2, W_out, b_out;
  std::vector<double> s, b;            // per-head SSMax parameters
  std::vector<double> ms, vs, mb, vb;  // their Adam moments
  variant kind = variant::softmax;

  std::vector<param*> all() {
    return {&E_key, &E_val, &e_query, &W_q, &W_k,   &W_v,  &W_o,
            &W_1,   &b_1,   &W_2,     &b_2, &W_out, &b_out};
  }
};

model make_model(const config& c, variant kind, std::mt19937& rng) {
  model m;
  m.kind = kind;
  const float in = 1.0f / std::sqrt(static_cast<float>(c.d_model));
  const index_t hd = c.heads * c.d_head;
  m.E_key.init(c.keys, c.d_model, 1.0f, rng);
  m.E_val.init(c.values, c.d_model, 1.0f, rng);
  m.e_query.init(1, c.d_model, 1.0f, rng);
  m.W_q.init(c.d_model, hd, in, rng);
  m.W_k.init(c.d_model, hd, in, rng);
  m.W_v.init(c.d_model, hd, in, rng);
  m.W_o.init(hd, c.d_model, 1.0f / std::sqrt(static_cast<float>(hd)), rng);
  m.W_1.init(c.d_model, c.d_ff, in, rng);
  m.b_1.init(1, c.d_ff, 0.0f, rng);
  m.W_2.init(c.d_ff, c.d_model, 1.0f / std::sqrt(static_cast<float>(c.d_ff)), rng);
  m.b_2.init(1, c.d_model, 0.0f, rng);
  m.W_out.init(c.d_model, c.values, in, rng);
  m.b_out.init(1, c.values, 0.0f, rng);
  const double s0 = 1.0 / std::log(static_cast<double>(c.train_length + 1));
  m.s.assign(static_cast<size_t>(c.heads), s0);
  m.b.assign(static_cast<size_t>(c.heads), 0.0);
  m.ms = m.vs = m.mb = m.vb = std::vector<double>(static_cast<size_t>(c.heads), 0.0);
  return m;
}

/// Activations of one forward pass, kept for the backward, and the attention workspaces
/// (reused, so that steps after the first allocate nothing inside the library).
struct activations {
  Mat X, Xq, K, V, Q, O, Y, A, Hid, Y2, P;  // P: softmax of the logits
  std::vector<float> lse, weights;
  ssmax::attention_workspace forward_ws, backward_ws;
};

/// Runs the attention of the model with its policy (F is a callable taking the options).
template <class F>
void with_policy(const model& m, F&& f) {
  if (m.kind == variant::softmax) {
    ssmax::attention_options<ssmax::softmax_policy> o;
    o.threads = 1;
    f(o);
  } else {
    ssmax::attention_options<ssmax::ssmax_policy> o;
    o.policy = ssmax::ssmax_policy(ssmax::per_head(m.s), ssmax::per_head(m.b));
    o.threads = 1;
    f(o);
  }
}

/// Forward pass; returns the mean cross-entropy. weights: also fill a.weights
/// [B, H, 1, L + 1] (materialised path).
float forward(const config& c, const model& m, const batch_data& d, activations& a, bool weights) {
  const index_t B = static_cast<index_t>(d.query.size()), L = d.L, n = L + 1;
  a.X.resize(B * n, c.d_model);
  for (index_t b = 0; b < B; ++b) {
    for (index_t t = 0; t < L; ++t)
      a.X.row(b * n + t) = m.E_key.w.row(d.key[static_cast<size_t>(b * L + t)]) +
                           m.E_val.w.row(d.value[static_cast<size_t>(b * L + t)]);
    a.X.row(b * n + L) = m.E_key.w.row(d.query[static_cast<size_t>(b)]) + m.e_query.w.row(0);
  }
  a.Xq.resize(B, c.d_model);
  for (index_t b = 0; b < B; ++b) a.Xq.row(b) = a.X.row(b * n + L);
  a.K.noalias() = a.X * m.W_k.w;
  a.V.noalias() = a.X * m.W_v.w;
  a.Q.noalias() = a.Xq * m.W_q.w;
  a.O.resize(B, c.heads * c.d_head);
  a.lse.resize(static_cast<size_t>(B * c.heads));
  a.weights.resize(weights ? static_cast<size_t>(B * c.heads * n) : 0);
  with_policy(m, [&](auto o) {
    ssmax::attention_extras<float> x;
    x.lse = a.lse.data();
    if (weights) {
      x.weights = a.weights.data();
      o.path = ssmax::attention_path::materialised;
    }
    const Mat& Q = a.Q;
    const Mat& K = a.K;
    const Mat& V = a.V;
    ssmax::attention(ssmax::bshd_view(Q, B, c.heads), ssmax::bshd_view(K, B, c.heads),
                     ssmax::bshd_view(V, B, c.heads), ssmax::bshd_view(a.O, B, c.heads), o, x,
                     &a.forward_ws);
  });
  a.Y = a.Xq + a.O * m.W_o.w;
  a.A = (a.Y * m.W_1.w).rowwise() + Vec(m.b_1.w.row(0));
  a.Hid = a.A.cwiseMax(0.0f);
  a.Y2 = a.Y + ((a.Hid * m.W_2.w).rowwise() + Vec(m.b_2.w.row(0)));
  a.P = (a.Y2 * m.W_out.w).rowwise() + Vec(m.b_out.w.row(0));
  double loss = 0.0;
  for (index_t b = 0; b < B; ++b) {
    const float mx = a.P.row(b).maxCoeff();
    a.P.row(b) = (a.P.row(b).array() - mx).exp().matrix();
    const float sum = a.P.row(b).sum();
    a.P.row(b) /= sum;
    loss -= std::log(std::max(1e-30f, a.P(b, d.target[static_cast<size_t>(b)])));
  }
  return static_cast<float>(loss / static_cast<double>(B));
}

/// Backward pass into every param's g and the policy gradient (ds, db).
void backward(const config& c, model& m, const batch_data& d, activations& a,
              ssmax::policy_gradient& pg) {
  const index_t B = static_cast<index_t>(d.query.size()), L = d.L, n = L + 1;
  Mat dlogits = a.P;
  for (index_t b = 0; b < B; ++b) dlogits(b, d.target[static_cast<size_t>(b)]) -= 1.0f;
  dlogits /= static_cast<float>(B);
  m.W_out.g.noalias() = a.Y2.transpose() * dlogits;
  m.b_out.g = dlogits.colwise().sum();
  const Mat dY2 = dlogits * m.W_out.w.transpose();
  m.W_2.g.noalias() = a.Hid.transpose() * dY2;
  m.b_2.g = dY2.colwise().sum();
  const Mat dA =
      ((dY2 * m.W_2.w.transpose()).array() * (a.A.array() > 0.0f).cast<float>()).matrix();
  m.W_1.g.noalias() = a.Y.transpose() * dA;
  m.b_1.g = dA.colwise().sum();
  const Mat dY = dY2 + dA * m.W_1.w.transpose();
  m.W_o.g.noalias() = a.O.transpose() * dY;
  const Mat dO = dY * m.W_o.w.transpose();

  Mat dQ(a.Q.rows(), a.Q.cols()), dK(a.K.rows(), a.K.cols()), dV(a.V.rows(), a.V.cols());
  pg.zero();
  with_policy(m, [&](auto o) {
    const Mat& Q = a.Q;
    const Mat& K = a.K;
    const Mat& V = a.V;
    const Mat& O = a.O;
    ssmax::attention_gradients<float> g{ssmax::bshd_view(dQ, B, c.heads),
                                        ssmax::bshd_view(dK, B, c.heads),
                                        ssmax::bshd_view(dV, B, c.heads), nullptr, &pg};
    ssmax::attention_backward(ssmax::bshd_view(Q, B, c.heads), ssmax::bshd_view(K, B, c.heads),
                              ssmax::bshd_view(V, B, c.heads), ssmax::bshd_view(O, B, c.heads),
                              ssmax::bshd_view(dO, B, c.heads),
                              static_cast<const float*>(a.lse.data()), g, o, &a.backward_ws);
  });
  m.W_q.g.noalias() = a.Xq.transpose() * dQ;
  m.W_k.g.noalias() = a.X.transpose() * dK;
  m.W_v.g.noalias() = a.X.transpose() * dV;
  Mat dX = dK * m.W_k.w.transpose() + dV * m.W_v.w.transpose();
  const Mat dXq = dY + dQ * m.W_q.w.transpose();
  m.E_key.g.setZero();
  m.E_val.g.setZero();
  m.e_query.g.setZero();
  for (index_t b = 0; b < B; ++b) {
    for (index_t t = 0; t < L; ++t) {
      m.E_key.g.row(d.key[static_cast<size_t>(b * L + t)]) += dX.row(b * n + t);
      m.E_val.g.row(d.value[static_cast<size_t>(b * L + t)]) += dX.row(b * n + t);
    }
    const Vec dq = dX.row(b * n + L) + dXq.row(b);
    m.E_key.g.row(d.query[static_cast<size_t>(b)]) += dq;
    m.e_query.g.row(0) += dq;
  }
}

/// One Adam step (beta1 0.9, beta2 0.999) on every parameter, s and b included.
void adam_step(const config& c, model& m, const ssmax::policy_gradient& pg, int step) {
  const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
  const float c1 = 1.0f - std::pow(b1, static_cast<float>(step));
  const float c2 = 1.0f - std::pow(b2, static_cast<float>(step));
  for (param* p : m.all()) {
    p->m = b1 * p->m + (1.0f - b1) * p->g;
    p->v = b2 * p->v + (1.0f - b2) * p->g.cwiseProduct(p->g);
    p->w.array() -= c.lr * (p->m.array() / c1) / ((p->v.array() / c2).sqrt() + eps);
  }
  if (m.kind == variant::softmax) return;
  auto update = [&](std::vector<double>& x, std::vector<double>& mo, std::vector<double>& ve,
                    const std::vector<double>& g) {
    for (size_t h = 0; h < x.size(); ++h) {
      mo[h] = b1 * mo[h] + (1.0 - b1) * g[h];
      ve[h] = b2 * ve[h] + (1.0 - b2) * g[h] * g[h];
      x[h] -= c.lr * (mo[h] / c1) / (std::sqrt(ve[h] / c2) + eps);
    }
  };
  update(m.s, m.ms, m.vs, pg.s);
  if (m.kind == variant::ssmax_sb) update(m.b, m.mb, m.vb, pg.b);
}

struct result {
  index_t length;
  double accuracy, needle_weight;
};

std::vector<result> evaluate(const config& c, const model& m, unsigned seed) {
  std::vector<result> out;
  for (int factor : {1, 2, 4, 8, 16, 32}) {
    const index_t L = c.train_length * factor;
    std::mt19937 rng(seed + static_cast<unsigned>(factor));  // same test data for every model
    int correct = 0, total = 0;
    double weight = 0.0;
    activations a;
    for (int done = 0; done < c.eval_sequences; done += static_cast<int>(c.batch)) {
      const batch_data d = make_batch(c, L, c.batch, rng);
      forward(c, m, d, a, true);
      for (index_t b = 0; b < c.batch; ++b) {
        index_t best = 0;
        a.P.row(b).maxCoeff(&best);
        correct += best == d.target[static_cast<size_t>(b)];
        ++total;
        float w = 0.0f;
        for (index_t h = 0; h < c.heads; ++h)
          w = std::max(w, a.weights[static_cast<size_t>((b * c.heads + h) * (L + 1) +
                                                        d.needle[static_cast<size_t>(b)])]);
        weight += w;
      }
    }
    out.push_back({L, static_cast<double>(correct) / total, weight / total});
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  config c;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--seed")
      c.seed = static_cast<unsigned>(std::stoul(value));
    else if (flag == "--steps")
      c.steps = std::stoi(value);
    else if (flag == "--train-length")
      c.train_length = std::stol(value);
    else if (flag == "--eval")
      c.eval_sequences = std::stoi(value);
    else if (flag == "--csv")
      c.csv = value;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  Eigen::setNbThreads(1);
#ifdef __GLIBC__
  // Eigen's temporaries are freed and reallocated every step; without this glibc hands
  // the top of the heap back to the kernel and page-faults it in again each time, which
  // made the first model's training several times slower than the others'.
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
#endif
  std::printf(
      "key-value retrieval: %ld keys, %ld values, train length %ld, %d steps of batch "
      "%ld, seed %u\n\n",
      static_cast<long>(c.keys), static_cast<long>(c.values), static_cast<long>(c.train_length),
      c.steps, static_cast<long>(c.batch), c.seed);
  std::FILE* csv = std::fopen(c.csv.c_str(), "w");
  if (csv == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", c.csv.c_str());
    return 1;
  }
  std::fprintf(csv, "variant,length,factor,accuracy,needle_weight\n");
  std::vector<std::vector<result>> table;
  const variant variants[] = {variant::softmax, variant::ssmax_s, variant::ssmax_sb};
  for (variant v : variants) {
    const auto start = std::chrono::steady_clock::now();
    std::mt19937 rng(c.seed);  // same initial weights and training data for every variant
    model m = make_model(c, v, rng);
    ssmax::policy_gradient pg(c.heads);
    double recent = 0.0;
    int solved_at = 0;  // first step whose running loss is below 0.1 (0: never)
    activations a;
    for (int step = 1; step <= c.steps; ++step) {
      const batch_data d = make_batch(c, c.train_length, c.batch, rng);
      const float loss = forward(c, m, d, a, false);
      backward(c, m, d, a, pg);
      adam_step(c, m, pg, step);
      recent = step == 1 ? loss : 0.98 * recent + 0.02 * loss;
      if (solved_at == 0 && step > 1 && recent < 0.1) solved_at = step;
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%-11s trained in %.1f s, running loss < 0.1 from step %d, final loss %.4f",
                name_of(v), seconds, solved_at, recent);
    if (v != variant::softmax)
      for (ssmax::index_t h = 0; h < c.heads; ++h)
        std::printf(", head %ld: s = %.3f b = %.3f (m at train length %.2f)", static_cast<long>(h),
                    m.s[h], m.b[h],
                    m.s[h] * std::log(static_cast<double>(c.train_length + 1)) + m.b[h]);
    std::printf("\n");
    table.push_back(evaluate(c, m, c.seed * 7919u + 17u));
    for (const auto& r : table.back())
      std::fprintf(csv, "%s,%ld,%ld,%.4f,%.4f\n", name_of(v), static_cast<long>(r.length),
                   static_cast<long>(r.length / c.train_length), r.accuracy, r.needle_weight);
  }
  std::fclose(csv);

  std::printf("\n%8s %6s", "length", "x");
  for (variant v : variants) std::printf(" | %-11s acc  weight", name_of(v));
  std::printf("\n");
  for (size_t i = 0; i < table[0].size(); ++i) {
    std::printf("%8ld %6ld", static_cast<long>(table[0][i].length),
                static_cast<long>(table[0][i].length / c.train_length));
    for (const auto& t : table) std::printf(" | %15.3f %7.3f", t[i].accuracy, t[i].needle_weight);
    std::printf("\n");
  }
  std::printf("\n(acc: retrieval accuracy; weight: attention on the needle, best head; CSV: %s)\n",
              c.csv.c_str());
  return 0;
}
