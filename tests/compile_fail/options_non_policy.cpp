// Must NOT compile: attention_options over a type that is not a length policy
// (tests/CMakeLists.txt expects attention_options' own static_assert message).
#include <ssmax/attention.hpp>

struct not_a_policy {};

int main() {
  ssmax::attention_options<not_a_policy> options;
  (void)options;
}
