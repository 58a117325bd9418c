// Event time of a scaled-out query: one watermark per source partition.
//
// A single instance tracks one watermark for the whole query (Spark's rule: the newest event time
// seen anywhere, minus the delay), and a batch that advanced it is followed by a batch without
// data that closes the windows it passed. Scaled out, no process sees every partition, and a
// partition's state must not depend on which process read the others: each partition keeps its
// own clock instead, as Kafka Streams keeps a stream time per task. Its watermark is the newest
// event time read from that partition minus the delay (the minimum over the watermark operators
// that read it), it is stored with the partition's state (so it moves with the partition and is
// committed atomically with its offsets), and a record is late when it is behind its own
// partition's watermark.
//
// There are no batches without data here: a partition's state changes only in a batch that read
// from it (its state version is its offset). So a batch closes, after adding its records, the
// windows its own event times moved the partition's watermark past: what Spark emits in the
// following no-data batch, it emits at once. The rows emitted and the records dropped as late
// are the same; only earlier.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dataflow/offsets.h"
#include "dataflow/detail/stateful.h"

namespace dataflow::detail {

class PartitionWatermarks final : public StatefulOperator {
 public:
  // `delaysMs`: the delay of each watermark operator of the plan, by its index.
  explicit PartitionWatermarks(std::vector<int64_t> delaysMs);

  std::string operatorName() const override { return "eventTimeWatermark"; }
  bool stateFollowsPartitions() const override { return true; }
  bool visibleInProgress() const override { return false; }

  // ---- during a batch (any thread)
  // Watermark operator `index` read records of `partition` with event times up to `maxEventMs`.
  void observe(size_t index, const PartitionId& partition, int64_t maxEventMs);
  // The watermark the batch runs with for `partition` (kNoWatermark before any event time).
  int64_t current(const PartitionId& partition) const;
  // The watermark after the event times observed so far in this batch: what windows of the
  // partition are closed with once its records are in.
  int64_t next(const PartitionId& partition) const;

  // ---- between batches (driver thread)
  // Forgets what a batch that is being prepared again observed.
  void beginBatch();
  // Makes the batch's observations the partitions' clocks (before its state is collected).
  void advance();
  // The lowest current watermark of the partitions this process holds (for progress reports).
  int64_t lowest() const;

  // ---- StatefulOperator
  void clearState() override;
  void restoreFile(const PartitionId& partition, const StateFileReader& file) override;
  void collectChanges(int64_t version, StateChanges& out) override;
  StateOperatorProgress progress() const override;
  void dropPartition(const PartitionId& partition) override;

 private:
  struct Clock {
    int64_t watermarkMs;
    std::vector<int64_t> newestEventMs;  // by watermark operator; kNoWatermark: none read yet
  };
  Clock fresh() const;
  int64_t watermarkOf(const Clock& clock, const std::vector<int64_t>* observed) const;

  std::vector<int64_t> delaysMs_;
  mutable std::mutex mu_;
  std::map<PartitionId, Clock> clocks_;
  std::map<PartitionId, std::vector<int64_t>> observed_;  // this batch, by watermark operator
  std::vector<PartitionId> changed_;                      // since the last collectChanges
};

}  // namespace dataflow::detail
