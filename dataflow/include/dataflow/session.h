// The entry point (Spark's SparkSession): owns the oneTBB arena that every query of the session
// runs its batches on, and turns sources into typed streams.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <type_traits>

#include "dataflow/detail/micro_batch_execution.h"
#include "dataflow/detail/plan.h"
#include "dataflow/source.h"
#include "dataflow/stream.h"

namespace dataflow {

struct SessionOptions {
  // For logs and metrics. Default: "dataflow".
  std::string appName = "dataflow";
  // Worker threads of the session's oneTBB arena; 0 means one per core. Default: 0.
  int workerThreads = 0;
  // Records per task when a partition is split for parallel processing. Default: 16384.
  size_t chunkSize = 16384;
};

class Session {
 public:
  explicit Session(const SessionOptions& options = {});

  const SessionOptions& options() const { return options_; }

  // A stream of the records of `source`. The same source object read twice in one query is
  // scanned once per reference but planned once.
  template <class S>
    requires std::is_base_of_v<TypedSource<typename S::value_type>, S>
  Stream<typename S::value_type> readStream(std::shared_ptr<S> source) const {
    using T = typename S::value_type;
    if (!source) throw ConfigurationError("readStream: source is null");
    std::shared_ptr<TypedSource<T>> typed = source;
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kSource, typed->description(), {}, {}, false});
    detail::Producer<T> producer{node, [typed](detail::Planner& planner) {
                                   size_t index = planner.sourceIndex(typed);
                                   return std::unique_ptr<detail::BatchOperator<T>>(
                                       new detail::ScanOperator<T>(typed, index));
                                 }};
    return Stream<T>(state_, std::move(producer), detail::Pipe<T>{}, detail::Routing{});
  }

 private:
  SessionOptions options_;
  std::shared_ptr<detail::SessionState> state_;
};

}  // namespace dataflow
