#include "dataflow/sources/rate_source.h"

#include "dataflow/error.h"
#include "../time_util.h"

namespace dataflow {

RateSource::RateSource(RateSourceOptions options) : options_(options) {
  if (options_.rowsPerSecond <= 0) throw ConfigurationError("RateSource.rowsPerSecond must be > 0");
  if (options_.partitions < 1) throw ConfigurationError("RateSource.partitions must be >= 1");
  if (options_.maxRecordsPerBatch < 0) throw ConfigurationError("RateSource.maxRecordsPerBatch must be >= 0");
}

std::string RateSource::description() const {
  return "RateSource[rowsPerSecond=" + std::to_string(options_.rowsPerSecond) +
         ", partitions=" + std::to_string(options_.partitions) + "]";
}

void RateSource::open() {
  std::lock_guard lock(mu_);
  startMs_ = nowEpochMs();
}

void RateSource::resumeFrom(const Offsets& next) {
  std::lock_guard lock(mu_);
  int64_t base = 0;
  for (const auto& [p, o] : next.partitions()) base = std::max(base, o);
  base_ = base;
}

Offsets RateSource::initialOffsets() {
  Offsets out;
  for (int p = 0; p < options_.partitions; ++p) out.set({"rate", p}, 0);
  return out;
}

Offsets RateSource::latestOffsets() {
  std::lock_guard lock(mu_);
  int64_t elapsedMs = nowEpochMs() - startMs_;
  int64_t perPartition = elapsedMs * options_.rowsPerSecond / 1000 / options_.partitions;
  Offsets out;
  for (int p = 0; p < options_.partitions; ++p) out.set({"rate", p}, base_ + perPartition);
  return out;
}

std::optional<int64_t> RateSource::maxRecordsPerBatch() const {
  if (options_.maxRecordsPerBatch == 0) return std::nullopt;
  return options_.maxRecordsPerBatch;
}

void RateSource::read(const PartitionId& partition, int64_t from, int64_t until, std::vector<RateRow>& out) {
  int64_t startMs, base;
  {
    std::lock_guard lock(mu_);
    startMs = startMs_;
    base = base_;
  }
  const int64_t parts = options_.partitions;
  for (int64_t offset = from; offset < until; ++offset) {
    int64_t value = offset * parts + partition.partition;
    out.push_back({startMs + (offset - base) * parts * 1000 / options_.rowsPerSecond, value});
  }
}

}  // namespace dataflow
