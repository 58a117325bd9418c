// Generates rows at a fixed rate (Spark's "rate" source), for examples and load tests. Row values
// are a pure function of partition and offset, so a replayed range yields the same rows.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "dataflow/source.h"

namespace dataflow {

struct RateRow {
  int64_t timestampMs = 0;  // when the row became due
  int64_t value = 0;        // offset * partitions + partition: unique and dense
};

struct RateSourceOptions {
  // Rows per second over all partitions. Default: 1000.
  int64_t rowsPerSecond = 1000;
  // Default: 1.
  int partitions = 1;
  // Upper bound of rows per batch; 0 means unlimited. Default: 0.
  int64_t maxRecordsPerBatch = 0;
};

class RateSource final : public TypedSource<RateRow> {
 public:
  explicit RateSource(RateSourceOptions options = {});

  std::string description() const override;
  void open() override;
  void resumeFrom(const Offsets& next) override;
  Offsets initialOffsets() override;
  Offsets latestOffsets() override;
  std::optional<int64_t> maxRecordsPerBatch() const override;
  void read(const PartitionId& partition, int64_t from, int64_t until,
            std::vector<RateRow>& out) override;

 private:
  RateSourceOptions options_;
  std::mutex mu_;
  int64_t startMs_ = 0;  // wall-clock time of open(); availability counts from it
  int64_t base_ = 0;     // per-partition offset available at open (the resume point)
};

}  // namespace dataflow
