// An in-memory, partitioned, replayable source for tests and examples (Spark's MemoryStream).
// Tests append data while a query runs; offsets are positions in each partition.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "dataflow/error.h"
#include "dataflow/source.h"

namespace dataflow {

struct MemoryStreamOptions {
  // Number of partitions. Default: 1.
  int partitions = 1;
  // Upper bound of records per batch over all partitions; 0 means unlimited. Default: 0.
  int64_t maxRecordsPerBatch = 0;
  // A new query starts at the beginning (true) or at the current end (false). Default: true.
  bool startFromEarliest = true;
};

template <class T>
class MemoryStream final : public TypedSource<T> {
 public:
  explicit MemoryStream(std::string name, MemoryStreamOptions options = {})
      : name_(std::move(name)), options_(options) {
    if (options_.partitions < 1) throw ConfigurationError("MemoryStream.partitions must be >= 1");
    if (options_.maxRecordsPerBatch < 0) {
      throw ConfigurationError("MemoryStream.maxRecordsPerBatch must be >= 0");
    }
    data_.resize(static_cast<size_t>(options_.partitions));
  }

  // Appends rows to one partition. Thread-safe.
  void addData(std::vector<T> rows, int partition = 0) {
    std::unique_lock lock(mu_);
    auto& part = data_.at(static_cast<size_t>(partition));
    part.insert(part.end(), std::make_move_iterator(rows.begin()), std::make_move_iterator(rows.end()));
  }

  std::string description() const override { return "MemoryStream[" + name_ + "]"; }

  Offsets initialOffsets() override {
    if (options_.startFromEarliest) {
      Offsets zero;
      for (int p = 0; p < options_.partitions; ++p) zero.set({name_, p}, 0);
      return zero;
    }
    return latestOffsets();
  }

  Offsets latestOffsets() override {
    std::shared_lock lock(mu_);
    Offsets out;
    for (int p = 0; p < options_.partitions; ++p) {
      out.set({name_, p}, static_cast<int64_t>(data_[static_cast<size_t>(p)].size()));
    }
    return out;
  }

  std::optional<int64_t> maxRecordsPerBatch() const override {
    if (options_.maxRecordsPerBatch == 0) return std::nullopt;
    return options_.maxRecordsPerBatch;
  }

  void read(const PartitionId& partition, int64_t from, int64_t until, std::vector<T>& out) override {
    std::shared_lock lock(mu_);
    if (partition.topic != name_ || partition.partition < 0 || partition.partition >= options_.partitions) {
      throw ConnectorError("MemoryStream[" + name_ + "]: unknown partition " + partition.toString(), false);
    }
    const auto& part = data_[static_cast<size_t>(partition.partition)];
    if (from < 0 || until > static_cast<int64_t>(part.size()) || from > until) {
      throw ConnectorError("MemoryStream[" + name_ + "]: range [" + std::to_string(from) + ", " +
                               std::to_string(until) + ") is not available",
                           false);
    }
    out.insert(out.end(), part.begin() + from, part.begin() + until);
  }

 private:
  std::string name_;
  MemoryStreamOptions options_;
  mutable std::shared_mutex mu_;
  std::vector<std::vector<T>> data_;
};

}  // namespace dataflow
