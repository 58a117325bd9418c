// Offsets of a replayable source, per partition. A batch is the half-open range [start, end) of
// every partition; both ends are kept in the checkpoint so that a restart replays exactly the
// same records. The JSON form is Spark's: {"topic":{"0":23,"1":-2}}.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace dataflow {

// One partition of one source: a Kafka topic-partition, or a named in-memory stream's shard.
struct PartitionId {
  std::string topic;
  int32_t partition = 0;

  auto operator<=>(const PartitionId&) const = default;
  bool operator==(const PartitionId&) const = default;
  std::string toString() const { return topic + "-" + std::to_string(partition); }
};

// The next offset to read, per partition. Ordered by partition so that plans, logs and progress
// are deterministic.
class Offsets {
 public:
  using Map = std::map<PartitionId, int64_t>;

  Offsets() = default;
  explicit Offsets(Map offsets) : offsets_(std::move(offsets)) {}

  const Map& partitions() const { return offsets_; }
  Map& partitions() { return offsets_; }
  bool empty() const { return offsets_.empty(); }
  // The offset of `partition`, or `fallback` when the partition is unknown.
  int64_t get(const PartitionId& partition, int64_t fallback) const;
  void set(const PartitionId& partition, int64_t offset) { offsets_[partition] = offset; }
  // Sum over partitions of max(0, other[p] - this[p]), counting partitions missing here from 0.
  int64_t distanceTo(const Offsets& other) const;

  // Spark's JSON form: {"topic":{"partition":offset}}.
  std::string toJson() const;
  // Throws CheckpointError when `json` is not of that form.
  static Offsets fromJson(std::string_view json);

  bool operator==(const Offsets&) const = default;

 private:
  Map offsets_;
};

// The end of a batch from `start` towards `target` with at most `limit` records (nullopt: no
// limit), reading offsets as record counts (Kafka's): the limit is shared among partitions in
// proportion to their backlog, and every batch makes progress.
Offsets limitRecords(const Offsets& start, const Offsets& target, std::optional<int64_t> limit);

// A source's recent record size, for batches bounded by bytes as well as records (a memory
// budget): a source whose offsets count records turns its byte budget into a record limit with it.
// Offsets must be planned before the records are read (they are logged first), so the size is
// the one seen in recent reads; before any, a record is assumed to be kAssumedRecordBytes, and
// the first batches are small anyway (QueryOptions::rampUpBatches). Safe to use from several threads.
class RecordSizeEstimate {
 public:
  static constexpr int64_t kAssumedRecordBytes = 1024;
  // A read of `records` records with `bytes` bytes of keys and values.
  void observe(int64_t records, int64_t bytes);
  // Records of the recent size that fit in `budgetBytes` (at least 1).
  int64_t recordsWithin(int64_t budgetBytes) const;
  // The recent bytes per record: the larger of the last read's average and an average over the
  // last few reads, so that records growing shrink the next batch at once (the budget holds) and
  // records shrinking grow batches over a few reads. kAssumedRecordBytes before any read.
  double bytesPerRecord() const;

 private:
  mutable std::mutex mu_;
  double records_ = 0;  // sums over reads, each read halving the weight of the earlier ones
  double bytes_ = 0;
  double last_ = 0;  // the last read's bytes per record
};

}  // namespace dataflow
