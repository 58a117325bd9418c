// Where a query keeps what it has done: its identity (metadata), the plan of every batch written
// *before* the batch runs (offsets log) and a record written *after* the sink succeeded (commit
// log). The engine's restart rule: the newest offsets entry without a commit is re-run with the
// same batch id and the same offsets.
//
// Implementations: a directory store with Spark's layout, an in-memory store for tests, and (in
// connectors/postgres) a store in the warehouse that commits in the sink's transaction.
#pragma once

#include <climits>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/state.h"

namespace dataflow {

// The identity of a query, written once when the query first starts.
struct QueryMetadata {
  std::string id;                               // stable across restarts
  std::vector<std::string> sourceDescriptions;  // to refuse a checkpoint of another query
};

// The plan of one batch.
struct OffsetLogEntry {
  int64_t batchId = 0;
  int64_t batchTimestampMs = 0;
  std::vector<SourceRange> sources;  // in the plan's source order
  // The watermark the batch runs with, so that a replay runs with the same one (INT64_MIN, i.e.
  // kNoWatermark, before any event time was seen).
  int64_t batchWatermarkMs = INT64_MIN;
};

// Written after the sink has accepted a batch.
struct CommitLogEntry {
  int64_t batchId = 0;
  int64_t commitTimestampMs = 0;
  // The watermark the next batch runs with (Spark's nextBatchWatermarkMs): after a restart the
  // query continues with it.
  int64_t nextBatchWatermarkMs = INT64_MIN;
};

// Scale-out: a partition's lease, taken by the instance a consumer group assigned it to. Each
// lease gets a higher epoch than the one before; a commit for the partition succeeds only with
// the newest epoch, so an instance that lost a partition (a zombie) cannot commit for it.
struct PartitionLease {
  PartitionId partition;
  int64_t epoch = 0;
  std::optional<int64_t> committed;  // where the partition resumes; nullopt: never committed
};

struct PartitionLeases {
  std::vector<PartitionLease> leases;
  // Whether any partition of this source was ever committed: if not, the query is new and the
  // source's starting offsets apply; otherwise a never-committed partition is read from its start.
  bool sourceHasCommits = false;
};

// Thread-safety: a store is used by one query's driver thread at a time. Every write must be
// durable when it returns. Read errors and damaged entries throw CheckpointError naming the entry.
class CheckpointStore {
 public:
  virtual ~CheckpointStore() = default;

  // Where the store lives, for messages ("dir:/tmp/x", "memory").
  virtual std::string describe() const = 0;

  virtual std::optional<QueryMetadata> readMetadata() = 0;
  virtual void writeMetadata(const QueryMetadata& metadata) = 0;
  // Called once a run has established its metadata, before the first batch: a store that can
  // tell that another instance of the query is running refuses here (CheckpointError).
  virtual void acquire(const QueryMetadata& /*metadata*/) {}

  virtual void writeOffsets(const OffsetLogEntry& entry) = 0;
  virtual std::optional<OffsetLogEntry> latestOffsets() = 0;
  virtual std::optional<OffsetLogEntry> readOffsets(int64_t batchId) = 0;

  virtual void writeCommit(const CommitLogEntry& entry) = 0;
  virtual std::optional<CommitLogEntry> latestCommit() = 0;

  // Scale-out (Source::isCoordinated): several instances of one query share the store. Then the
  // engine calls join() instead of acquire(), leases partitions as they are assigned, and commits
  // each batch with commitPartitions() instead of the offsets and commit logs: the durable state
  // of such a query is the next offset of every partition.
  virtual bool supportsScaleOut() const { return false; }
  // Registers one of several running instances. Refuses (CheckpointError) while a
  // single-instance run holds the checkpoint.
  virtual void join(const QueryMetadata& metadata);
  // Takes the lease of `partitions` of source `source` (its index in the query) and returns
  // where each resumes.
  virtual PartitionLeases leasePartitions(size_t source, const std::vector<PartitionId>& partitions);
  // Records, durably, the end offset of every partition the batch read (BatchInfo::sources),
  // provided every one of them is still leased with BatchInfo::leaseEpochs and continues from its
  // committed offset. Otherwise writes nothing and throws PartitionsFencedError naming the lost
  // partitions. A store whose sink already committed the batch in its own transaction (the
  // PostgreSQL store's commitWithin) makes this a no-op.
  virtual void commitPartitions(const BatchInfo& batch);

  // State of stateful operators (state.h): files named by StateFileId. A store that keeps no
  // state answers false, and a stateful query on it is refused at start().
  virtual bool supportsState() const { return false; }
  // Writes the files durably, each atomically; called with a batch's changes before its commit
  // record, so that a version without a commit is never read (restore stops at the last commit).
  virtual void writeStateFiles(const StateChanges& changes);
  // Every state file of operator `operatorId`, of any partition and version.
  virtual std::vector<StateFileId> listStateFiles(int operatorId);
  // Throws CheckpointError when the file is missing or unreadable.
  virtual std::string readStateFile(const StateFileId& id);
  virtual void deleteStateFiles(const std::vector<StateFileId>& ids);
};

// Options of the directory store.
struct DirectoryCheckpointOptions {
  // Keep at least this many of the newest offsets and commit entries; older ones are deleted
  // after each commit. Like spark.sql.streaming.minBatchesToRetain. Default: 100.
  int retainBatches = 100;
  // fsync files and directories. Turning it off is only for benchmarks. Default: true.
  bool sync = true;
};

// A directory with Spark's layout: `metadata`, `offsets/N`, `commits/N`. Each file is written to a
// temporary name, fsynced, renamed into place, and the directory fsynced, so a crash leaves either
// the old state or the new one.
std::shared_ptr<CheckpointStore> directoryCheckpoint(const std::filesystem::path& dir,
                                                     const DirectoryCheckpointOptions& options = {});

// Kept in memory: for tests and benchmarks. Survives a query restart when the same shared_ptr is
// passed to the new query. Supports scale-out: queries in one process that share it behave like
// instances of one query in several processes.
std::shared_ptr<CheckpointStore> memoryCheckpoint();

// The text forms the directory store writes (also used by other stores for their payloads).
// `parse*` throws CheckpointError naming `origin` when the text is damaged.
std::string serializeOffsetLogEntry(const OffsetLogEntry& entry);
OffsetLogEntry parseOffsetLogEntry(std::string_view text, const std::string& origin);
std::string serializeCommitLogEntry(const CommitLogEntry& entry);
CommitLogEntry parseCommitLogEntry(std::string_view text, const std::string& origin);
std::string serializeMetadata(const QueryMetadata& metadata);
QueryMetadata parseMetadata(std::string_view text, const std::string& origin);

}  // namespace dataflow
