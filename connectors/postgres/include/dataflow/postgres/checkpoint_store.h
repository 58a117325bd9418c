// A CheckpointStore in the warehouse database (sql/003_checkpoint_store.sql). With it a sink can
// write a batch's commit record in the transaction that writes the batch (commitWithin), so that
// after a crash at any point the replayed batch finds everything or nothing: exactly-once effects
// without Kafka transactions.
//
// Only one running instance per checkpoint: acquire() takes a session advisory lock and bumps an
// epoch; commitWithin() checks the epoch inside the batch's transaction, so an instance that lost
// its lock (a zombie after a long pause) cannot commit.
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
};

class PostgresCheckpointStore final : public CheckpointStore {
 public:
  explicit PostgresCheckpointStore(PostgresCheckpointOptions options);

  std::string describe() const override;
  std::optional<QueryMetadata> readMetadata() override;
  void writeMetadata(const QueryMetadata& metadata) override;
  // Takes the advisory lock for this checkpoint and bumps its epoch. Throws CheckpointError when
  // another instance holds the lock.
  void acquire(const QueryMetadata& metadata) override;
  void writeOffsets(const OffsetLogEntry& entry) override;
  std::optional<OffsetLogEntry> latestOffsets() override;
  std::optional<OffsetLogEntry> readOffsets(int64_t batchId) override;
  // A no-op when commitWithin() already recorded this batch.
  void writeCommit(const CommitLogEntry& entry) override;
  std::optional<CommitLogEntry> latestCommit() override;

  // Records batch `batchId` as committed inside the caller's open transaction on `tx`. Throws
  // CheckpointError (not retriable) when this instance has been fenced by a newer one.
  void commitWithin(Connection& tx, int64_t batchId);

 private:
  template <class F>
  auto withConnection(F&& fn);
  void lockAndBump();

  PostgresCheckpointOptions options_;
  std::mutex mu_;
  std::optional<Connection> conn_;
  bool acquired_ = false;
  int64_t epoch_ = -1;
  int64_t committedWithin_ = -1;
};

}  // namespace dataflow::postgres
