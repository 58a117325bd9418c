// The broker of the local stack for the RealBroker tests (real_broker.sh sets
// DATAFLOW_REAL_KAFKA); under CI=true they fail when it is missing, else they skip.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

inline std::string realBroker() {
  const char* b = std::getenv("DATAFLOW_REAL_KAFKA");
  return b ? b : "";
}

#define REQUIRE_REAL_KAFKA()                                                            \
  do {                                                                                  \
    if (realBroker().empty()) {                                                         \
      const char* ci = std::getenv("CI");                                               \
      if (ci && std::string(ci) == "true") FAIL() << "CI=true but no real Kafka broker"; \
      GTEST_SKIP() << "DATAFLOW_REAL_KAFKA not set";                                    \
    }                                                                                   \
  } while (0)
