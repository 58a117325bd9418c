// Collects every committed row in memory (Spark's memory sink), for tests and examples. A batch
// offered again with an id it has already accepted is ignored, so replays do not duplicate.
#pragma once

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "dataflow/sink.h"

namespace dataflow {

template <class T>
class MemorySink final : public Sink<T> {
 public:
  std::string description() const override { return "MemorySink"; }

  void addBatch(const Batch<T>& batch, const BatchInfo& info) override {
    std::lock_guard lock(mu_);
    if (!batchIds_.insert(info.batchId).second) return;
    for (const auto& p : batch.partitions()) rows_.insert(rows_.end(), p.rows.begin(), p.rows.end());
    deadLetters_.insert(deadLetters_.end(), batch.deadLetters().begin(), batch.deadLetters().end());
    batchSizes_.push_back(static_cast<int64_t>(batch.numRows()));
  }

  // Rows of every accepted batch, in batch order, partitions in order within a batch.
  std::vector<T> rows() const {
    std::lock_guard lock(mu_);
    return rows_;
  }
  std::vector<DeadLetter> deadLetters() const {
    std::lock_guard lock(mu_);
    return deadLetters_;
  }
  std::vector<int64_t> batchIds() const {
    std::lock_guard lock(mu_);
    return {batchIds_.begin(), batchIds_.end()};
  }
  std::vector<int64_t> batchSizes() const {
    std::lock_guard lock(mu_);
    return batchSizes_;
  }

 private:
  mutable std::mutex mu_;
  std::set<int64_t> batchIds_;
  std::vector<T> rows_;
  std::vector<DeadLetter> deadLetters_;
  std::vector<int64_t> batchSizes_;
};

}  // namespace dataflow
