#include "dataflow/postgres/checkpoint_store.h"

#include <spdlog/spdlog.h>

#include <chrono>

namespace dataflow::postgres {
namespace {

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The advisory lock key: 64 bits from the checkpoint name, computed by the server.
constexpr const char* kLockSql = "SELECT pg_try_advisory_lock(hashtextextended('dataflow:' || $1, 0))";

}  // namespace

PostgresCheckpointStore::PostgresCheckpointStore(PostgresCheckpointOptions options) : options_(std::move(options)) {
  if (options_.name.empty()) throw ConfigurationError("PostgresCheckpointOptions.name is required");
  if (options_.retainBatches < 1) throw ConfigurationError("PostgresCheckpointOptions.retainBatches must be >= 1");
}

std::string PostgresCheckpointStore::describe() const {
  return "postgres:" + options_.connection.describe() + "/" + options_.name;
}

// Runs fn on the store's connection, reconnecting when it was lost. After a reconnect the
// session's advisory lock is gone, so it is taken again; if another instance holds it now, this
// one has been replaced and must stop.
template <class F>
auto PostgresCheckpointStore::withConnection(F&& fn) {
  std::lock_guard lock(mu_);
  if (!conn_ || !conn_->isOpen()) {
    conn_.reset();
    conn_.emplace(Connection::open(options_.connection));
    if (acquired_) lockAndBump();
  }
  try {
    return fn(*conn_);
  } catch (const ConnectorError&) {
    if (!conn_->isOpen()) conn_.reset();
    throw;
  }
}

std::optional<QueryMetadata> PostgresCheckpointStore::readMetadata() {
  return withConnection([&](Connection& c) -> std::optional<QueryMetadata> {
    auto r = c.execParams("SELECT sources FROM public.dataflow_checkpoints WHERE checkpoint_name = $1", {options_.name});
    if (r.rows() == 0) return std::nullopt;
    return parseMetadata(r.value(0, 0), describe() + " metadata");
  });
}

void PostgresCheckpointStore::writeMetadata(const QueryMetadata& metadata) {
  withConnection([&](Connection& c) {
    c.execParams(
        "INSERT INTO public.dataflow_checkpoints (checkpoint_name, query_id, sources) VALUES ($1, $2, $3) "
        "ON CONFLICT (checkpoint_name) DO UPDATE SET sources = EXCLUDED.sources, query_id = EXCLUDED.query_id, "
        "updated_at = now()",
        {options_.name, metadata.id, serializeMetadata(metadata)});
  });
}

void PostgresCheckpointStore::lockAndBump() {
  auto locked = conn_->execParams(kLockSql, {options_.name});
  if (locked.value(0, 0) != "t") {
    throw CheckpointError("checkpoint " + describe() + " is in use by another running instance of the query; "
                          "stop it first (only one instance may write)");
  }
  auto r = conn_->execParams(
      "UPDATE public.dataflow_checkpoints SET epoch = epoch + 1, updated_at = now() WHERE checkpoint_name = $1 "
      "RETURNING epoch",
      {options_.name});
  if (r.rows() != 1) throw CheckpointError("checkpoint " + describe() + " has no metadata row");
  epoch_ = r.int64(0, 0);
}

void PostgresCheckpointStore::acquire(const QueryMetadata&) {
  withConnection([&](Connection&) {
    lockAndBump();
    acquired_ = true;
  });
  spdlog::info("checkpoint {}: acquired, epoch {}", describe(), epoch_);
}

void PostgresCheckpointStore::writeOffsets(const OffsetLogEntry& entry) {
  withConnection([&](Connection& c) {
    c.execParams(
        "INSERT INTO public.dataflow_offsets (checkpoint_name, batch_id, entry) VALUES ($1, $2, $3) "
        "ON CONFLICT (checkpoint_name, batch_id) DO UPDATE SET entry = EXCLUDED.entry, created_at = now()",
        {options_.name, std::to_string(entry.batchId), serializeOffsetLogEntry(entry)});
  });
}

std::optional<OffsetLogEntry> PostgresCheckpointStore::latestOffsets() {
  return withConnection([&](Connection& c) -> std::optional<OffsetLogEntry> {
    auto r = c.execParams(
        "SELECT batch_id, entry FROM public.dataflow_offsets WHERE checkpoint_name = $1 ORDER BY batch_id DESC LIMIT 1",
        {options_.name});
    if (r.rows() == 0) return std::nullopt;
    return parseOffsetLogEntry(r.value(0, 1), describe() + " offsets/" + std::string(r.value(0, 0)));
  });
}

std::optional<OffsetLogEntry> PostgresCheckpointStore::readOffsets(int64_t batchId) {
  return withConnection([&](Connection& c) -> std::optional<OffsetLogEntry> {
    auto r = c.execParams("SELECT entry FROM public.dataflow_offsets WHERE checkpoint_name = $1 AND batch_id = $2",
                          {options_.name, std::to_string(batchId)});
    if (r.rows() == 0) return std::nullopt;
    return parseOffsetLogEntry(r.value(0, 0), describe() + " offsets/" + std::to_string(batchId));
  });
}

void PostgresCheckpointStore::commitWithin(Connection& tx, int64_t batchId) {
  auto r = tx.execParams(
      "INSERT INTO public.dataflow_commits (checkpoint_name, batch_id, commit_ts_ms) "
      "SELECT checkpoint_name, $2, $3 FROM public.dataflow_checkpoints WHERE checkpoint_name = $1 AND epoch = $4 "
      "ON CONFLICT (checkpoint_name, batch_id) DO NOTHING RETURNING batch_id",
      {options_.name, std::to_string(batchId), std::to_string(nowMs()), std::to_string(epoch_)});
  if (r.rows() == 0) {
    auto e = tx.execParams("SELECT epoch FROM public.dataflow_checkpoints WHERE checkpoint_name = $1", {options_.name});
    if (e.rows() == 1 && e.int64(0, 0) != epoch_) {
      throw CheckpointError("checkpoint " + describe() + ": fenced: a newer instance (epoch " + std::string(e.value(0, 0)) +
                            ") owns this query; this one (epoch " + std::to_string(epoch_) + ") must stop");
    }
    // Already committed by this instance: the previous attempt's COMMIT reached the server but its
    // answer was lost with the connection. Every write of the batch is idempotent (version guard,
    // DLQ uniqueness), so this attempt is a no-op and may commit.
    spdlog::warn("checkpoint {}: batch {} was already committed (lost COMMIT reply); nothing to redo", describe(), batchId);
  }
  std::lock_guard lock(mu_);
  committedWithin_ = batchId;
}

void PostgresCheckpointStore::writeCommit(const CommitLogEntry& entry) {
  bool alreadyWritten;
  {
    std::lock_guard lock(mu_);
    alreadyWritten = committedWithin_ == entry.batchId;
  }
  if (!alreadyWritten) {
    withConnection([&](Connection& c) {
      c.execParams(
          "INSERT INTO public.dataflow_commits (checkpoint_name, batch_id, commit_ts_ms) VALUES ($1, $2, $3) "
          "ON CONFLICT (checkpoint_name, batch_id) DO NOTHING",
          {options_.name, std::to_string(entry.batchId), std::to_string(entry.commitTimestampMs)});
    });
  }
  if (entry.batchId % 50 == 0 && entry.batchId > options_.retainBatches) {
    withConnection([&](Connection& c) {
      std::string threshold = std::to_string(entry.batchId - options_.retainBatches);
      c.execParams("DELETE FROM public.dataflow_offsets WHERE checkpoint_name = $1 AND batch_id < $2", {options_.name, threshold});
      c.execParams("DELETE FROM public.dataflow_commits WHERE checkpoint_name = $1 AND batch_id < $2", {options_.name, threshold});
    });
  }
}

std::optional<CommitLogEntry> PostgresCheckpointStore::latestCommit() {
  return withConnection([&](Connection& c) -> std::optional<CommitLogEntry> {
    auto r = c.execParams(
        "SELECT batch_id, commit_ts_ms FROM public.dataflow_commits WHERE checkpoint_name = $1 "
        "ORDER BY batch_id DESC LIMIT 1",
        {options_.name});
    if (r.rows() == 0) return std::nullopt;
    return CommitLogEntry{r.int64(0, 0), r.int64(0, 1)};
  });
}

}  // namespace dataflow::postgres
