// Offsets of a replayable source, per partition. A batch is the half-open range [start, end) of
// every partition; both ends are kept in the checkpoint so that a restart replays exactly the
// same records. The JSON form is Spark's: {"topic":{"0":23,"1":-2}}.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
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

}  // namespace dataflow
