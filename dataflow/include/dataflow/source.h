// The contract of a replayable, partitioned source. The engine plans every batch as a range of
// offsets per partition, writes that plan to the checkpoint before reading, and after a restart
// asks the source for exactly the same range again. Nothing here assumes that one process owns
// every partition: a source reports the partitions it currently reads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <concepts>
#include <vector>

#include "dataflow/offsets.h"

namespace dataflow {

// Per-source statistics that appear in the progress record (e.g. Kafka's offsets behind latest).
using SourceMetrics = std::vector<std::pair<std::string, std::string>>;

// Untyped part of a source: offsets and lifecycle. Called from the query's driver thread only,
// except `TypedSource::read`, see there.
class Source {
 public:
  virtual ~Source() = default;

  // A stable description, kept in the checkpoint: a checkpoint written for other sources is
  // refused. Must not contain secrets.
  virtual std::string description() const = 0;

  // Called once before the first batch of a run.
  virtual void open() {}
  // Called after open() when the query resumes from a checkpoint: where the next batch starts.
  // Sources whose availability is computed (the rate source) count from here.
  virtual void resumeFrom(const Offsets& /*next*/) {}
  // Called once when the query ends (also after a failure).
  virtual void close() {}

  // Where a brand-new query starts (no checkpoint): e.g. earliest, latest or given offsets.
  virtual Offsets initialOffsets() = 0;
  // The end of what is available now, per partition.
  virtual Offsets latestOffsets() = 0;
  // The offset a partition that appears after the query started is read from.
  virtual int64_t startOfNewPartition(const PartitionId&) { return 0; }

  // The maximum number of records per batch over all partitions; nullopt means unlimited.
  virtual std::optional<int64_t> maxRecordsPerBatch() const { return std::nullopt; }

  // Where a batch that starts at `start` ends, given the end of what is available (`available`,
  // from latestOffsets) and a cap on its records (`limit`: maxRecordsPerBatch(), nullopt under
  // Trigger.Once or when unlimited). The default reads offsets as record counts, as Kafka's are
  // (limitRecords). A source whose offsets are positions in a log rather than counts (a
  // database's LSNs) overrides it to cut at boundaries it knows. Called on the driver thread
  // when a batch is planned; the plan is logged before it is read, so the answer may depend on
  // what the source has buffered.
  virtual Offsets batchEnd(const Offsets& start, const Offsets& available, std::optional<int64_t> limit) {
    return limitRecords(start, available, limit);
  }

  // True when a range [from, until) holds until - from records (Kafka): the engine sizes its
  // buffers by it. False for offsets that are positions (LSNs).
  virtual bool offsetsCountRecords() const { return true; }

  // Called after a batch ending at `end` is committed: a source may acknowledge upstream (e.g.
  // commit a Kafka consumer group for lag monitoring). Must not throw for a harmless failure.
  virtual void onBatchCommitted(const Offsets& /*end*/) {}

  // True when an outside coordinator (a Kafka consumer group) decides which partitions this
  // instance reads, so that several processes of one query share the work (scale-out). Then
  // latestOffsets() covers only the partitions assigned to this instance now; a partition that
  // disappears from it was revoked, one that appears was assigned. The engine keeps the offsets
  // of such sources per partition in the checkpoint store and leases each partition on
  // assignment. Revocations must only take effect inside latestOffsets(), i.e. between batches,
  // so that an in-flight batch always finishes before its partitions are released.
  virtual bool isCoordinated() const { return false; }
  // Scale-out: the checkpoint store refused this instance's commit for `partitions`, because
  // another instance leased them after a rebalance. The source should stop reporting them until
  // its coordinator confirms the assignment again.
  virtual void onPartitionsFenced(const std::vector<PartitionId>& /*partitions*/) {}

  // True when the query itself writes what this source reads (an exchange's log, exchange.h):
  // Trigger.AvailableNow then reads it to its end as it grows, instead of stopping at the end it
  // had when the query started, so that rows regrouped by the last batch are still aggregated.
  virtual bool fedByQuery() const { return false; }

  // Extra metrics for the progress record, computed after a batch.
  virtual SourceMetrics metrics(const Offsets& /*end*/, const Offsets& /*latest*/) { return {}; }

  // The query is stopping (StreamingQuery::stop, from another thread): a call of this source that
  // waits on an external system (a read of records known to exist while the broker stalls, a
  // metadata request) should give up soon by throwing ReadInterrupted, rather than at its
  // timeout, so that a stop takes moments, not minutes. The batch is then abandoned uncommitted.
  // Calls after this one may throw ReadInterrupted at once, until open() starts a new run. Must
  // be safe to call concurrently with any other method; a source whose calls never wait long
  // need not override it.
  virtual void interrupt() {}
};

// A source of records of type T.
template <class T>
class TypedSource : public Source {
 public:
  using value_type = T;

  // Appends the records of `partition` with offsets in [from, until) to `out`, in offset order.
  // Called concurrently for different partitions of one batch: implementations must be safe for
  // that. With overlapped batches (QueryOptions::overlapBatches) the next batch is read while the
  // driver thread calls the other methods (latestOffsets, onBatchCommitted, metrics): those must
  // be safe to run alongside read. Must return exactly the same records when called again with the same range, or throw
  // (ConnectorError when the data is gone or unreachable).
  virtual void read(const PartitionId& partition, int64_t from, int64_t until,
                    std::vector<T>& out) = 0;
};

// A source record that knows where it came from. A record type that models this lets dead letters
// carry the exact source position and raw bytes. Kafka records model it.
template <class R>
concept SourcePosition = requires(const R& r) {
  { r.topic } -> std::convertible_to<std::string_view>;
  { r.partition } -> std::convertible_to<int32_t>;
  { r.offset } -> std::convertible_to<int64_t>;
};

}  // namespace dataflow
