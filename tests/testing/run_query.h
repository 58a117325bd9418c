// Test helper: runs a stream to completion with the AvailableNow trigger and returns its rows.
#pragma once

#include <dataflow/dataflow.h>

#include <vector>

namespace dataflow::testing_util {

template <class T, class S>
std::vector<T> runToCompletion(const S& stream) {
  auto sink = std::make_shared<MemorySink<T>>();
  Stream<T> plain = stream;
  auto query = plain.writeStream().trigger(Trigger::availableNow()).sink(sink).start();
  query.awaitTermination();
  return sink->rows();
}

}  // namespace dataflow::testing_util
