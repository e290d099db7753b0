// The program every consumer test builds: it includes the umbrella header (so every
// installed header must compile for a consumer), runs one operation, checks it against
// the closed form, and checks that the dependencies came through (Eigen, xsimd, OpenMP).
#include <Eigen/Core>
#include <cmath>
#include <cstdio>
#include <ssmax/ssmax.hpp>

int main() {
  // softmax(log 1, log 2, log 3) = (1, 2, 3) / 6 exactly in real arithmetic.
  Eigen::VectorXf x(3), y(3);
  x << 0.0f, std::log(2.0f), std::log(3.0f);
  ssmax::softmax(x.data(), y.data(), x.size());
  bool ok = true;
  for (int i = 0; i < 3; ++i) ok = ok && std::abs(y[i] - (i + 1) / 6.0f) <= 1e-6f;

#ifdef _OPENMP
  const bool openmp = true;
#else
  const bool openmp = false;
#endif
#ifdef SSMAX_EXPECT_OPENMP  // set by the consumer build when ssmax was built with OpenMP
  ok = ok && openmp;
#endif
  std::printf("ssmax %s (xsimd %d.%d, Eigen %d.%d.%d, SIMD %s, OpenMP %s): softmax %s\n",
              ssmax::version, XSIMD_VERSION_MAJOR, XSIMD_VERSION_MINOR, EIGEN_WORLD_VERSION,
              EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, ssmax::default_arch::name(),
              openmp ? "on" : "off", ok ? "OK" : "WRONG");
  return ok ? 0 : 1;
}
