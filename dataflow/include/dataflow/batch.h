// What a sink receives: the rows of one micro-batch grouped by source partition (order within a
// partition is the source's order), the dead letters the batch produced, and the batch's identity.
#pragma once

#include <cstdint>
#include <climits>
#include <map>
#include <ranges>
#include <string>
#include <vector>

#include "dataflow/offsets.h"

namespace dataflow {

struct StateChanges;  // state.h

// A record that could not be processed, with everything needed to inspect or replay it. Where
// the failing record came straight from a source that knows positions (see SourcePosition),
// topic, partition, offset, key and payload are those of the source record.
struct DeadLetter {
  std::string topic;
  int32_t partition = -1;
  int64_t offset = -1;
  std::string key;      // raw key bytes; empty when the record had none
  bool hasKey = false;  // distinguishes an empty key from no key
  std::string payload;  // raw value bytes, exactly as received
  bool hasPayload = false;
  std::string errorKind;
  std::string errorMessage;
};

// One micro-batch of rows of type T. A Batch owns its rows. Thread-safety: none; the engine hands
// a sink a const Batch and never touches it concurrently.
template <class T>
class Batch {
 public:
  struct Partition {
    PartitionId id;
    std::vector<T> rows;
    // Where each row came from, when an operator downstream asked for it (a stream-stream join
    // through an exchange tells a replayed row from a new one by it): the source offset of the
    // record the row was made from, parallel to `rows`. Empty when nobody asked; rows of record
    // types that carry their own offset (SourcePosition) leave it empty too.
    std::vector<int64_t> origins;
  };

  std::vector<Partition>& partitions() { return partitions_; }
  const std::vector<Partition>& partitions() const { return partitions_; }
  std::vector<DeadLetter>& deadLetters() { return deadLetters_; }
  const std::vector<DeadLetter>& deadLetters() const { return deadLetters_; }

  // Number of rows over all partitions.
  size_t numRows() const {
    size_t n = 0;
    for (const auto& p : partitions_) n += p.rows.size();
    return n;
  }
  bool empty() const { return numRows() == 0; }

  // Every row, partition by partition, each partition in source order.
  auto rows() const {
    return partitions_ | std::views::transform([](const Partition& p) -> const std::vector<T>& {
             return p.rows;
           }) |
           std::views::join;
  }

  // All rows copied into one vector (tests and small sinks).
  std::vector<T> collect() const {
    std::vector<T> out;
    out.reserve(numRows());
    for (const auto& p : partitions_) out.insert(out.end(), p.rows.begin(), p.rows.end());
    return out;
  }

 private:
  std::vector<Partition> partitions_;
  std::vector<DeadLetter> deadLetters_;
};

// One source's range in a batch.
struct SourceRange {
  std::string description;
  Offsets start;
  Offsets end;
};

// The identity of the batch a sink is asked to write. The same batch replayed after a restart has
// the same batchId and the same ranges, which is what lets a sink write idempotently.
struct BatchInfo {
  int64_t batchId = 0;
  std::string queryId;
  std::string runId;
  std::string queryName;
  int64_t batchTimestampMs = 0;
  std::vector<SourceRange> sources;
  // Scale-out only (sources assigned by a consumer group): per source, the lease epoch of every
  // partition this instance reads. A store commits a partition's offset only with its newest
  // lease (CheckpointStore::commitPartitions). Empty otherwise.
  std::vector<std::map<PartitionId, int64_t>> leaseEpochs;
  // Event time: the watermark this batch runs with, and the one the next batch will run with
  // (both INT64_MIN, i.e. kNoWatermark, before any event time was seen).
  int64_t batchWatermarkMs = INT64_MIN;
  int64_t nextBatchWatermarkMs = INT64_MIN;
  // The state changes of stateful operators in this batch (null without any), for a store that
  // writes them in the sink's own transaction. Valid during the sink's addBatch.
  const StateChanges* stateChanges = nullptr;
  // Where the time of a batch goes inside the sink: a sink may add the microseconds of its own
  // phases here (e.g. "stage", "merge", "commit"); they join the progress record's durationMs, in
  // ms. Null outside addBatch.
  std::map<std::string, int64_t>* sinkPhasesMicros = nullptr;
};

}  // namespace dataflow
