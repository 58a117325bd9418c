// Wall-clock helpers shared by the driver and progress reporting (internal).
#pragma once

#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>

namespace dataflow {

inline int64_t nowEpochMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// "2026-11-26T05:01:02.345Z"
inline std::string isoTimestamp(int64_t epochMs) {
  std::time_t seconds = static_cast<std::time_t>(epochMs / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03dZ", static_cast<int>(epochMs % 1000));
  return buf;
}

}  // namespace dataflow
