// Example 2: drop-in multi-head attention on Eigen matrices.
//
// The attention of a transformer block, with its projections done in Eigen:
//   Q = X Wq, K = X Wk, V = X Wv      [tokens, heads * d]   (row-major Eigen matrices)
//   O = attention(Q, K, V)            per head, causal, SSMax with a learned s per head
//   Y = O Wo                          [tokens, model width]
// ssmax::attention reads Q, K, V and writes O in place through views
// (ssmax::bshd_view(matrix, batch, heads)): no reshaping, no copies. The program checks O
// against the same attention written out in plain Eigen, in double, and against the
// operator's documented error bound; it exits non-zero if the bound is exceeded.
#include <Eigen/Dense>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <ssmax/ssmax.hpp>
#include <vector>

using Matrix = ssmax::row_matrix<float>;  // Eigen::Matrix<float, Dynamic, Dynamic, RowMajor>

namespace {

/// The block's attention, as model code would write it with ssmax.
Matrix attention_block(const Matrix& X, const Matrix& Wq, const Matrix& Wk, const Matrix& Wv,
                       const Matrix& Wo, ssmax::index_t heads,
                       const ssmax::attention_options<ssmax::ssmax_policy>& options, Matrix& Q,
                       Matrix& K, Matrix& V, Matrix& O) {
  Q.noalias() = X * Wq;
  K.noalias() = X * Wk;
  V.noalias() = X * Wv;
  O.resize(Q.rows(), Q.cols());
  // One sequence (batch 1) of X.rows() tokens; each matrix splits into `heads` heads.
  ssmax::attention(ssmax::bshd_view(Q, 1, heads), ssmax::bshd_view(K, 1, heads),
                   ssmax::bshd_view(V, 1, heads), ssmax::bshd_view(O, 1, heads), options);
  return O * Wo;
}

}  // namespace

int main() {
  const ssmax::index_t tokens = 256, width = 256, heads = 8, d = width / heads;
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto random = [&](ssmax::index_t rows, ssmax::index_t cols, float scale) {
    return Matrix(Matrix::NullaryExpr(rows, cols, [&] { return scale * normal(rng); }));
  };
  const Matrix X = random(tokens, width, 1.0f);
  const float w = 1.0f / std::sqrt(static_cast<float>(width));
  const Matrix Wq = random(width, width, w), Wk = random(width, width, w),
               Wv = random(width, width, w), Wo = random(width, width, w);

  // SSMax with one learned s per head (values a trained model might have), causal.
  std::vector<double> s(static_cast<std::size_t>(heads));
  for (ssmax::index_t h = 0; h < heads; ++h) s[static_cast<std::size_t>(h)] = 0.3 + 0.05 * h;
  ssmax::attention_options<ssmax::ssmax_policy> options;
  options.policy = ssmax::ssmax_policy(s);  // views s: keep the vector alive
  options.mask = ssmax::attention_mask::causal_mask();

  Matrix Q, K, V, O;
  const Matrix Y = attention_block(X, Wq, Wk, Wv, Wo, heads, options, Q, K, V, O);
  std::printf("attention block: X [%td x %td] -> Y [%td x %td], %td heads of d = %td\n", X.rows(),
              X.cols(), Y.rows(), Y.cols(), heads, d);

  // The same attention in plain Eigen, in double: per head, causal row i sees n = i + 1
  // keys and scales its logits by m = s_h log n.
  const Eigen::MatrixXd Qd = Q.cast<double>(), Kd = K.cast<double>(), Vd = V.cast<double>();
  Eigen::MatrixXd expected(tokens, width);
  double Z = 0.0;  // the error bound's largest sum_c |m scale q_c k_jc| over rows and keys
  for (ssmax::index_t h = 0; h < heads; ++h) {
    const auto Qh = Qd.middleCols(h * d, d), Kh = Kd.middleCols(h * d, d),
               Vh = Vd.middleCols(h * d, d);
    const Eigen::MatrixXd scores = (Qh * Kh.transpose()) / std::sqrt(double(d));
    for (ssmax::index_t i = 0; i < tokens; ++i) {
      const double m = s[static_cast<std::size_t>(h)] * std::log(double(i + 1));
      const Eigen::RowVectorXd z = m * scores.row(i).head(i + 1);
      const Eigen::RowVectorXd a = (z.array() - z.maxCoeff()).exp().matrix();
      expected.block(i, h * d, 1, d) = (a / a.sum()) * Vh.topRows(i + 1);
      for (ssmax::index_t j = 0; j <= i; ++j)
        Z = std::max(
            Z, m / std::sqrt(double(d)) * (Qh.row(i).array() * Kh.row(j).array()).abs().sum());
    }
  }

  // The operator's contract (attention.hpp): |out - exact| <= eps max|v| (2 (d + 2) Z + n + 64).
  const double eps = std::numeric_limits<float>::epsilon();
  const double bound = eps * Vd.cwiseAbs().maxCoeff() * (2.0 * (d + 2) * Z + tokens + 64.0);
  const double error = (O.cast<double>() - expected).cwiseAbs().maxCoeff();
  const double y_change = (Y.cast<double>() - expected * Wo.cast<double>()).cwiseAbs().maxCoeff();
  std::printf("max |O - plain Eigen (double)| = %.3e (contract bound %.3e)\n", error, bound);
  std::printf("max |Y - plain Eigen (double)| = %.3e\n", y_change);
  const bool ok = error <= bound;
  std::printf("%s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
