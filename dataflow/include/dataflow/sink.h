// The contract of a sink: it receives every batch once per attempt, on the query's driver thread.
// A batch may be offered again after a failure or restart with the same BatchInfo::batchId, so a
// sink that must not duplicate either writes idempotently or remembers committed batch ids.
#pragma once

#include <functional>
#include <span>
#include <string>
#include <utility>

#include "dataflow/batch.h"

namespace dataflow {

template <class T>
class Sink {
 public:
  virtual ~Sink() = default;
  virtual std::string description() const = 0;
  virtual void open() {}
  virtual void close() {}
  // Writes the batch. Throw ConnectorError(retriable=true) to have the engine retry the same
  // batch after a backoff; any other exception stops the query.
  virtual void addBatch(const Batch<T>& batch, const BatchInfo& info) = 0;
};

// Receives the dead letters of a batch before the sink sees the batch, in the same attempt.
using DeadLetterHandler =
    std::function<void(std::span<const DeadLetter> deadLetters, const BatchInfo& info)>;

// Adapts a foreachBatch function to the Sink interface.
template <class T, class F>
class ForeachBatchSink final : public Sink<T> {
 public:
  explicit ForeachBatchSink(F fn) : fn_(std::move(fn)) {}
  std::string description() const override { return "ForeachBatchSink"; }
  void addBatch(const Batch<T>& batch, const BatchInfo& info) override { fn_(batch, info); }

 private:
  F fn_;
};

}  // namespace dataflow
