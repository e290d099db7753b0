#pragma once
// Checking the API's error contract: a call is rejected with ssmax::argument_error naming
// the offending argument, and the message says which argument it is.

#include <gtest/gtest.h>

#include <ssmax/error.hpp>
#include <string>

namespace ssmax::testing {

/// Expects call() to throw argument_error whose argument() is `argument`.
template <class Call>
void expect_rejects(Call&& call, const std::string& argument) {
  try {
    call();
    ADD_FAILURE() << "no error for bad '" << argument << "'";
  } catch (const argument_error& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    EXPECT_NE(std::string(e.what()).find("'" + argument + "'"), std::string::npos) << e.what();
  }
}

}  // namespace ssmax::testing
