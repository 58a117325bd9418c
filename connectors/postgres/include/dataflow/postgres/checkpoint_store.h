// A CheckpointStore in the warehouse database (sql/003_checkpoint_store.sql). With it a sink can
// write a batch's commit record in the transaction that writes the batch (commitWithin), so that
// after a crash at any point the replayed batch finds everything or nothing: exactly-once effects
// without Kafka transactions.
//
// Stateful queries (sql/005_operator_state.sql): commitWithin() also writes the batch's state changes
// (BatchInfo::stateChanges) in the caller's transaction, so state, output and commit are one
// atomic step; a store-side write of them afterwards is then a no-op.
//
// Only one running instance per checkpoint: acquire() takes a session advisory lock and bumps an
// epoch; commitWithin() checks the epoch inside the batch's transaction, so an instance that lost
// its lock (a zombie after a long pause) cannot commit.
//
// Scale-out (a source in a Kafka consumer group, sql/004_partition_offsets.sql): any number of
// instances join() with a shared advisory lock (which keeps a single-instance run out, and the
// reverse). Scaling out continues from the single instance's last committed batch, and scaling
// back in continues from the per-partition offsets. Each assigned partition is leased with a new epoch; commitWithin() writes the next
// offset of every partition the batch read, only where the lease is still this instance's and the
// batch continues from the stored offset, else the whole transaction fails with
// PartitionsFencedError.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "dataflow/checkpoint.h"
#include "dataflow/postgres/connection.h"

namespace dataflow::postgres {

struct PostgresCheckpointOptions {
  // Identifies the checkpoint, like a checkpoint directory. Required.
  std::string name;
  ConnectionConfig connection;
  // Offsets and commit entries older than this many batches are deleted. Default: 100.
  int retainBatches = 100;
  // How long acquire() waits for the checkpoint's lock when another session holds it before it
  // refuses. A process killed a moment ago keeps its session, and the lock, until the server
  // notices; a restart right after a crash waits for that instead of failing. Default: 15 s.
  std::chrono::milliseconds lockWait{15000};
};

class PostgresCheckpointStore final : public CheckpointStore {
 public:
  explicit PostgresCheckpointStore(PostgresCheckpointOptions options);

  std::string describe() const override;
  std::optional<QueryMetadata> readMetadata() override;
  void writeMetadata(const QueryMetadata& metadata) override;
  // Takes the advisory lock for this checkpoint and bumps its epoch. Throws CheckpointError when
  // another instance holds the lock for longer than lockWait. A query that last ran scaled out continues from its
  // per-partition offsets (they become one committed batch of the offsets log).
  void acquire(const QueryMetadata& metadata) override;
  void writeOffsets(const OffsetLogEntry& entry) override;
  std::optional<OffsetLogEntry> latestOffsets() override;
  std::optional<OffsetLogEntry> readOffsets(int64_t batchId) override;
  // A no-op when commitWithin() already recorded this batch.
  void writeCommit(const CommitLogEntry& entry) override;
  std::optional<CommitLogEntry> latestCommit() override;

  bool supportsScaleOut() const override { return true; }
  // Takes the checkpoint's advisory lock in shared mode. Throws CheckpointError while a
  // single-instance run holds it.
  void join(const QueryMetadata& metadata) override;
  // A partition never committed in scale-out starts from the query's last committed batch when
  // it ran as a single instance before, so a job can be scaled out without reprocessing.
  PartitionLeases leasePartitions(size_t source, const std::vector<PartitionId>& partitions) override;
  // A no-op when commitWithin() already recorded this batch; else commits it in a transaction of
  // its own.
  void commitPartitions(const BatchInfo& batch) override;

  // Records the batch as committed inside the caller's open transaction on `tx`: its commit entry,
  // or in scale-out the next offset of each partition it read. Throws CheckpointError (not
  // retriable) when this instance has been fenced by a newer one; in scale-out,
  // PartitionsFencedError naming the partitions whose lease it lost.
  void commitWithin(Connection& tx, const BatchInfo& batch);

  bool supportsState() const override { return true; }
  // A no-op for a batch whose changes commitWithin() already wrote; else one transaction.
  void writeStateFiles(const StateChanges& changes) override;
  std::vector<StateFileId> listStateFiles(int operatorId) override;
  std::string readStateFile(const StateFileId& id) override;
  void deleteStateFiles(const std::vector<StateFileId>& ids) override;

 private:
  template <class F>
  auto withConnection(F&& fn);
  // State files outside a batch's transaction (the background snapshot fold, a restore) go
  // through a connection of their own: a fold reading and writing megabytes must not hold up the
  // next batch's offsets entry and commit on the query's connection.
  template <class F>
  auto withStateConnection(F&& fn);
  void lockAndBump();
  void lockShared();
  void scaleIn(Connection& c, const QueryMetadata& metadata);
  void commitPartitionsWithin(Connection& tx, const BatchInfo& batch);
  void writeStateWithin(Connection& tx, const StateChanges& changes);

  PostgresCheckpointOptions options_;
  std::string owner_;  // host:pid, recorded with each lease
  std::mutex mu_;
  std::optional<Connection> conn_;
  std::mutex stateMu_;  // guards stateConn_; never held with mu_
  std::optional<Connection> stateConn_;
  bool acquired_ = false;
  bool shared_ = false;  // joined as one of several instances (scale-out)
  int64_t epoch_ = -1;
  int64_t committedWithin_ = -1;
  int64_t stateWrittenWithin_ = -1;  // the batch whose state changes commitWithin() wrote
};

}  // namespace dataflow::postgres
