#include "dataflow/postgres/checkpoint_store.h"

#include "copy_binary.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <thread>

namespace dataflow::postgres {
namespace {

int64_t nowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The advisory lock key: 64 bits from the checkpoint name, computed by the server.
constexpr const char* kLockSql = "SELECT pg_try_advisory_lock(hashtextextended('dataflow:' || $1, 0))";
constexpr const char* kSharedLockSql = "SELECT pg_try_advisory_lock_shared(hashtextextended('dataflow:' || $1, 0))";

// A PostgreSQL array literal of strings: every element quoted, quotes and backslashes escaped.
std::string textArray(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    out += i ? ",\"" : "\"";
    for (char c : items[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

template <class Int>
std::string intArray(const std::vector<Int>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + std::to_string(items[i]);
  return out + "}";
}

// Runs fn(c) in a transaction of its own: committed when fn returns, rolled back when it throws.
template <class F>
void inTransaction(Connection& c, F&& fn) {
  c.exec("BEGIN");
  try {
    fn(c);
    c.exec("COMMIT");
  } catch (...) {
    if (c.isOpen()) c.exec("ROLLBACK");
    throw;
  }
}

// Runs fn(*conn) with `conn` open: opened (and `opened` run on it) when it is closed or was lost.
// A connection found lost after a failure is dropped, to be opened again by the next call. The
// caller holds the mutex that guards `conn`.
template <class Opened, class F>
auto onOpenConnection(std::optional<Connection>& conn, const ConnectionConfig& config, Opened&& opened, F&& fn) {
  if (!conn || !conn->isOpen()) {
    conn.reset();
    conn.emplace(Connection::open(config));
    opened();
  }
  try {
    return fn(*conn);
  } catch (const ConnectorError&) {
    if (!conn->isOpen()) conn.reset();
    throw;
  }
}

// The watermark column: NULL for "no watermark yet".
std::optional<std::string> watermarkParam(int64_t watermarkMs) {
  if (watermarkMs == INT64_MIN) return std::nullopt;
  return std::to_string(watermarkMs);
}

std::string hostAndPid() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  return std::string(host) + ":" + std::to_string(::getpid());
}

}  // namespace

PostgresCheckpointStore::PostgresCheckpointStore(PostgresCheckpointOptions options)
    : options_(std::move(options)), owner_(hostAndPid()) {
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
  return onOpenConnection(
      conn_, options_.connection, [&] { if (acquired_) shared_ ? lockShared() : lockAndBump(); }, std::forward<F>(fn));
}

template <class F>
auto PostgresCheckpointStore::withStateConnection(F&& fn) {
  std::lock_guard lock(stateMu_);
  return onOpenConnection(stateConn_, options_.connection, [] {}, std::forward<F>(fn));
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
        // Instances of a scaled-out query may start together: the first one's identity stays.
        "INSERT INTO public.dataflow_checkpoints (checkpoint_name, query_id, sources) VALUES ($1, $2, $3) "
        "ON CONFLICT (checkpoint_name) DO NOTHING",
        {options_.name, metadata.id, serializeMetadata(metadata)});
  });
}

void PostgresCheckpointStore::lockAndBump() {
  const auto deadline = std::chrono::steady_clock::now() + options_.lockWait;
  for (bool waited = false; conn_->execParams(kLockSql, {options_.name}).value(0, 0) != "t"; waited = true) {
    if (std::chrono::steady_clock::now() >= deadline) {
      throw CheckpointError("checkpoint " + describe() + " is in use by another running instance of the query" +
                            (waited ? " (waited " + std::to_string(options_.lockWait.count()) + " ms)" : std::string()) +
                            "; stop it first (only one instance may write)");
    }
    if (!waited) {
      spdlog::info("checkpoint {}: held by another session; waiting up to {} ms for it to end (a process killed a "
                   "moment ago keeps its session until the server notices)",
                   describe(), options_.lockWait.count());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto r = conn_->execParams(
      "UPDATE public.dataflow_checkpoints SET epoch = epoch + 1, updated_at = now() WHERE checkpoint_name = $1 "
      "RETURNING epoch",
      {options_.name});
  if (r.rows() != 1) throw CheckpointError("checkpoint " + describe() + " has no metadata row");
  epoch_ = r.int64(0, 0);
}

void PostgresCheckpointStore::acquire(const QueryMetadata& metadata) {
  withConnection([&](Connection& c) {
    lockAndBump();
    acquired_ = true;
    scaleIn(c, metadata);
  });
  spdlog::info("checkpoint {}: acquired, epoch {}", describe(), epoch_);
}

// A query that last ran scaled out has its offsets per partition, and its offsets log stopped
// when it scaled out: resuming from that log would go back in time. The per-partition offsets
// become one committed batch of the log instead, and the single instance continues from there.
// Safe: the exclusive lock is held, so no scaled-out instance runs.
void PostgresCheckpointStore::scaleIn(Connection& c, const QueryMetadata& metadata) {
  auto rows = c.execParams(
      "SELECT source_index, topic, kafka_partition, next_offset FROM public.dataflow_partition_offsets "
      "WHERE checkpoint_name = $1 AND next_offset IS NOT NULL",
      {options_.name});
  if (rows.rows() == 0) return;
  OffsetLogEntry entry;
  entry.batchTimestampMs = nowMs();
  for (const auto& description : metadata.sourceDescriptions) entry.sources.push_back({description, {}, {}});
  for (int r = 0; r < rows.rows(); ++r) {
    auto source = static_cast<size_t>(rows.int64(r, 0));
    if (source >= entry.sources.size()) continue;
    PartitionId p{std::string(rows.value(r, 1)), static_cast<int32_t>(rows.int64(r, 2))};
    entry.sources[source].start.set(p, rows.int64(r, 3));
    entry.sources[source].end.set(p, rows.int64(r, 3));
  }
  inTransaction(c, [&](Connection& tx) {
    auto last = tx.execParams("SELECT coalesce(max(batch_id), -1) FROM public.dataflow_offsets WHERE checkpoint_name = $1",
                              {options_.name});
    entry.batchId = last.int64(0, 0) + 1;
    tx.execParams("INSERT INTO public.dataflow_offsets (checkpoint_name, batch_id, entry) VALUES ($1, $2, $3)",
                  {options_.name, std::to_string(entry.batchId), serializeOffsetLogEntry(entry)});
    tx.execParams("INSERT INTO public.dataflow_commits (checkpoint_name, batch_id, commit_ts_ms) VALUES ($1, $2, $3)",
                  {options_.name, std::to_string(entry.batchId), std::to_string(entry.batchTimestampMs)});
    tx.execParams("DELETE FROM public.dataflow_partition_offsets WHERE checkpoint_name = $1", {options_.name});
  });
  spdlog::info("checkpoint {}: scaled in: continuing from the stored offsets of {} partition(s), as committed batch {}",
               describe(), rows.rows(), entry.batchId);
}

void PostgresCheckpointStore::writeOffsets(const OffsetLogEntry& entry) {
  bool sinkCommitsWithin;
  {
    std::lock_guard lock(mu_);
    sinkCommitsWithin = committedWithin_ >= 0;
  }
  const std::string sql =
      "INSERT INTO public.dataflow_offsets (checkpoint_name, batch_id, entry) VALUES ($1, $2, $3) "
      "ON CONFLICT (checkpoint_name, batch_id) DO UPDATE SET entry = EXCLUDED.entry, created_at = now()";
  const std::vector<std::optional<std::string>> params{options_.name, std::to_string(entry.batchId),
                                                       serializeOffsetLogEntry(entry)};
  withConnection([&](Connection& c) {
    if (!sinkCommitsWithin) {
      c.execParams(sql, params);
      return;
    }
    // The query's batches commit inside the sink's transaction, which writes this entry again
    // (commitWithin): the batch cannot commit without it. So the entry need not wait for its own
    // flush to disk, one fsync per batch off the latency path. A server crash that loses it loses
    // the batch's uncommitted output with it, and the batch is planned afresh; WAL is written in
    // order, so the sink's commit flushes it too. The setting is local to the statement's own
    // transaction (set_config's third argument): one round trip, not BEGIN, SET, INSERT, COMMIT.
    c.execParams(
        "WITH async AS (SELECT set_config('synchronous_commit', 'off', true)) "
        "INSERT INTO public.dataflow_offsets (checkpoint_name, batch_id, entry) SELECT $1, $2, $3 FROM async "
        "ON CONFLICT (checkpoint_name, batch_id) DO UPDATE SET entry = EXCLUDED.entry, created_at = now()",
        params);
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

void PostgresCheckpointStore::lockShared() {
  auto locked = conn_->execParams(kSharedLockSql, {options_.name});
  if (locked.value(0, 0) != "t") {
    throw CheckpointError("checkpoint " + describe() + " is in use by a single-instance run of the query; stop it "
                          "before starting instances in a consumer group");
  }
}

void PostgresCheckpointStore::join(const QueryMetadata&) {
  withConnection([&](Connection&) {
    lockShared();
    shared_ = true;
    acquired_ = true;
  });
  spdlog::info("checkpoint {}: joined as {} (scale-out: offsets per partition)", describe(), owner_);
}

PartitionLeases PostgresCheckpointStore::leasePartitions(size_t source, const std::vector<PartitionId>& partitions) {
  PartitionLeases out;
  withConnection([&](Connection& c) {
    inTransaction(c, [&](Connection& tx) {
      std::string index = std::to_string(source);
      auto started = tx.execParams(
          "SELECT count(*) FROM public.dataflow_partition_offsets "
          "WHERE checkpoint_name = $1 AND source_index = $2 AND next_offset IS NOT NULL",
          {options_.name, index});
      out.sourceHasCommits = started.int64(0, 0) > 0;
      // Scaling out a query that ran as a single instance: a partition leased for the first time
      // continues from the last batch that instance committed. Whichever process leases it first:
      // the processes of a new group may split the partitions from their first assignment on.
      Offsets seed;
      auto last = tx.execParams(
          "SELECT o.batch_id, o.entry FROM public.dataflow_offsets o JOIN public.dataflow_commits m "
          "USING (checkpoint_name, batch_id) WHERE o.checkpoint_name = $1 ORDER BY o.batch_id DESC LIMIT 1",
          {options_.name});
      if (last.rows() == 1) {
        auto entry = parseOffsetLogEntry(last.value(0, 1), describe() + " offsets/" + std::string(last.value(0, 0)));
        if (source < entry.sources.size()) seed = entry.sources[source].end;
        out.sourceHasCommits = true;
      }
      for (const auto& p : partitions) {
        std::optional<std::string> seeded;
        if (int64_t offset = seed.get(p, -1); offset >= 0) seeded = std::to_string(offset);
        auto r = tx.execParams(
            "INSERT INTO public.dataflow_partition_offsets AS t "
            "  (checkpoint_name, source_index, topic, kafka_partition, next_offset, owner) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (checkpoint_name, source_index, topic, kafka_partition) DO UPDATE "
            "  SET lease_epoch = t.lease_epoch + 1, owner = EXCLUDED.owner, leased_at = now() "
            "RETURNING next_offset, lease_epoch",
            {options_.name, index, p.topic, std::to_string(p.partition), seeded, owner_});
        PartitionLease lease{p, r.int64(0, 1), std::nullopt};
        if (!r.isNull(0, 0)) lease.committed = r.int64(0, 0);
        out.leases.push_back(std::move(lease));
      }
    });
  });
  return out;
}

void PostgresCheckpointStore::commitPartitionsWithin(Connection& tx, const BatchInfo& batch) {
  std::vector<int> sources, partitionNumbers;
  std::vector<std::string> topics;
  std::vector<int64_t> starts, ends, epochs;
  std::set<std::pair<int, PartitionId>> pending;
  for (size_t i = 0; i < batch.sources.size(); ++i) {
    for (const auto& [p, end] : batch.sources[i].end.partitions()) {
      int64_t start = batch.sources[i].start.get(p, end);
      if (end <= start) continue;
      int64_t epoch = -1;
      if (i < batch.leaseEpochs.size()) {
        if (auto e = batch.leaseEpochs[i].find(p); e != batch.leaseEpochs[i].end()) epoch = e->second;
      }
      sources.push_back(static_cast<int>(i));
      topics.push_back(p.topic);
      partitionNumbers.push_back(p.partition);
      starts.push_back(start);
      ends.push_back(end);
      epochs.push_back(epoch);
      pending.insert({static_cast<int>(i), p});
    }
  }
  if (pending.empty()) return;
  // One round trip for all partitions. The update takes each row's lock, so a lease taken
  // concurrently waits for this transaction and then sees its offsets.
  auto r = tx.execParams(
      "UPDATE public.dataflow_partition_offsets t SET next_offset = b.end_offset, committed_at = now() "
      "FROM unnest($2::int[], $3::text[], $4::int[], $5::bigint[], $6::bigint[], $7::bigint[]) "
      "  AS b(source_index, topic, kafka_partition, start_offset, end_offset, epoch) "
      "WHERE t.checkpoint_name = $1 AND t.source_index = b.source_index AND t.topic = b.topic "
      "  AND t.kafka_partition = b.kafka_partition AND t.lease_epoch = b.epoch "
      "  AND (t.next_offset IS NULL OR t.next_offset = b.start_offset) "
      "RETURNING t.source_index, t.topic, t.kafka_partition",
      {options_.name, intArray(sources), textArray(topics), intArray(partitionNumbers), intArray(starts), intArray(ends),
       intArray(epochs)});
  for (int row = 0; row < r.rows(); ++row) {
    pending.erase({static_cast<int>(r.int64(row, 0)), PartitionId{std::string(r.value(row, 1)), static_cast<int32_t>(r.int64(row, 2))}});
  }
  if (pending.empty()) return;
  std::vector<PartitionId> lost;
  std::string names;
  for (const auto& [source, p] : pending) {
    lost.push_back(p);
    names += (names.empty() ? "" : ", ") + p.toString();
  }
  throw PartitionsFencedError("checkpoint " + describe() + ": batch " + std::to_string(batch.batchId) +
                                  " was not committed: another instance holds the lease of " + names +
                                  " now (a consumer-group rebalance this instance has not seen yet)",
                              std::move(lost));
}

void PostgresCheckpointStore::commitPartitions(const BatchInfo& batch) {
  {
    std::lock_guard lock(mu_);
    if (committedWithin_ == batch.batchId) return;
  }
  withConnection([&](Connection& c) {
    inTransaction(c, [&](Connection& tx) {
      commitPartitionsWithin(tx, batch);
      if (batch.stateChanges && !batch.stateChanges->empty()) writeStateWithin(tx, *batch.stateChanges);
    });
  });
}

void PostgresCheckpointStore::commitWithin(Connection& tx, const BatchInfo& batch) {
  if (shared_) {
    commitPartitionsWithin(tx, batch);  // throws PartitionsFencedError before any state is written
    if (batch.stateChanges && !batch.stateChanges->empty()) writeStateWithin(tx, *batch.stateChanges);
    std::lock_guard lock(mu_);
    committedWithin_ = batch.batchId;
    stateWrittenWithin_ = batch.stateChanges ? batch.batchId : -1;
    return;
  }
  const int64_t batchId = batch.batchId;
  auto r = tx.execParams(
      "INSERT INTO public.dataflow_commits (checkpoint_name, batch_id, commit_ts_ms, next_watermark_ms) "
      "SELECT checkpoint_name, $2, $3, $5 FROM public.dataflow_checkpoints WHERE checkpoint_name = $1 AND epoch = $4 "
      "ON CONFLICT (checkpoint_name, batch_id) DO NOTHING RETURNING batch_id",
      {options_.name, std::to_string(batchId), std::to_string(nowMs()), std::to_string(epoch_),
       watermarkParam(batch.nextBatchWatermarkMs)});
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
  // The batch's offsets entry, again: it was written ahead of the batch without waiting for its
  // flush (writeOffsets), and a batch must never commit without it (a restart would otherwise
  // plan another batch under this id).
  OffsetLogEntry entry{batchId, batch.batchTimestampMs, batch.sources, batch.batchWatermarkMs};
  tx.execParams(
      "INSERT INTO public.dataflow_offsets (checkpoint_name, batch_id, entry) VALUES ($1, $2, $3) "
      "ON CONFLICT (checkpoint_name, batch_id) DO NOTHING",
      {options_.name, std::to_string(batchId), serializeOffsetLogEntry(entry)});
  // The state a batch produced is written in the same transaction (after the epoch check above:
  // a fenced instance fails before writing any).
  if (batch.stateChanges && !batch.stateChanges->empty()) writeStateWithin(tx, *batch.stateChanges);
  std::lock_guard lock(mu_);
  committedWithin_ = batchId;
  stateWrittenWithin_ = batch.stateChanges ? batchId : -1;
}

namespace {

// State files are sent and read in pieces of this size at most: libpq keeps a connection's
// buffers at the largest message they ever held, so a snapshot of a large state sent as one
// parameter (or read as one value) would stay in memory as long as the connection.
constexpr size_t kStateChunkBytes = size_t{1} << 20;

// Writes a large state file with a binary COPY, the file in pieces (the row it replaces, if
// any, deleted first: a replayed batch writes its files again). Inside the caller's transaction.
void copyStateFile(Connection& tx, const std::string& checkpoint, const StateChanges::File& f) {
  const std::string operatorId = std::to_string(f.id.operatorId), partition = std::to_string(f.id.partition.partition),
                    version = std::to_string(f.id.version);
  tx.execParams(
      "DELETE FROM public.dataflow_state WHERE checkpoint_name = $1 AND operator_id = $2 AND partition_topic = $3 "
      "AND partition_id = $4 AND version = $5 AND is_snapshot = $6",
      {checkpoint, operatorId, f.id.partition.topic, partition, version, f.id.snapshot ? "t" : "f"});
  tx.copyStart(
      "COPY public.dataflow_state (checkpoint_name, operator_id, partition_topic, partition_id, version, is_snapshot, "
      "data) FROM STDIN (FORMAT binary)");
  using detail::BinaryType;
  std::string head;
  detail::appendBinaryCopyHeader(head);
  detail::appendBinaryRowStart(head, 7);
  bool encoded = detail::appendBinaryField(head, BinaryType::kText, checkpoint) &&
                 detail::appendBinaryField(head, BinaryType::kInt4, operatorId) &&
                 detail::appendBinaryField(head, BinaryType::kText, f.id.partition.topic) &&
                 detail::appendBinaryField(head, BinaryType::kInt4, partition) &&
                 detail::appendBinaryField(head, BinaryType::kInt8, version) &&
                 detail::appendBinaryField(head, BinaryType::kBool, f.id.snapshot ? "t" : "f");
  if (!encoded) throw InternalError("state file " + f.id.path() + ": its row could not be encoded for COPY");
  detail::appendBinaryFieldLength(head, f.bytes.size());  // bytea: the bytes themselves, in pieces
  tx.copyData(head);
  for (size_t at = 0; at < f.bytes.size(); at += kStateChunkBytes) {
    tx.copyData(std::string_view(f.bytes).substr(at, kStateChunkBytes));
  }
  std::string trailer;
  detail::appendBinaryCopyTrailer(trailer);
  tx.copyData(trailer);
  tx.copyEnd();
}

}  // namespace

void PostgresCheckpointStore::writeStateWithin(Connection& tx, const StateChanges& changes) {
  for (const auto& f : changes.files) {
    if (f.bytes.size() > kStateChunkBytes) {
      copyStateFile(tx, options_.name, f);
      continue;
    }
    tx.execParamsBinary(
        "INSERT INTO public.dataflow_state (checkpoint_name, operator_id, partition_topic, partition_id, version, "
        "is_snapshot, data) VALUES ($1, $2, $3, $4, $5, $6, $7) "
        "ON CONFLICT (checkpoint_name, operator_id, partition_topic, partition_id, version, is_snapshot) "
        "DO UPDATE SET data = EXCLUDED.data",
        {options_.name, std::to_string(f.id.operatorId), f.id.partition.topic, std::to_string(f.id.partition.partition),
         std::to_string(f.id.version), f.id.snapshot ? "t" : "f", std::string_view(f.bytes)},
        {false, false, false, false, false, false, true});
  }
}

void PostgresCheckpointStore::writeStateFiles(const StateChanges& changes) {
  if (changes.empty()) return;
  {
    std::lock_guard lock(mu_);
    bool allWithin = stateWrittenWithin_ >= 0;
    for (const auto& f : changes.files) allWithin = allWithin && !f.id.snapshot && f.id.version == stateWrittenWithin_;
    if (allWithin) return;
  }
  withStateConnection([&](Connection& c) { inTransaction(c, [&](Connection& tx) { writeStateWithin(tx, changes); }); });
}

std::vector<StateFileId> PostgresCheckpointStore::listStateFiles(int operatorId) {
  return withStateConnection([&](Connection& c) {
    auto r = c.execParams(
        "SELECT partition_topic, partition_id, version, is_snapshot FROM public.dataflow_state "
        "WHERE checkpoint_name = $1 AND operator_id = $2",
        {options_.name, std::to_string(operatorId)});
    std::vector<StateFileId> out;
    for (int i = 0; i < r.rows(); ++i) {
      out.push_back(StateFileId{operatorId, PartitionId{std::string(r.value(i, 0)), static_cast<int32_t>(r.int64(i, 1))},
                                r.int64(i, 2), r.value(i, 3) == "t"});
    }
    return out;
  });
}

std::string PostgresCheckpointStore::readStateFile(const StateFileId& id) {
  return withStateConnection([&](Connection& c) {
    // The bytes in binary format (in hex, libpq would hold twice the file), in pieces of at most
    // kStateChunkBytes: state files of large states are tens of megabytes, and the connection
    // keeps its buffer at the largest piece it read. The column is stored uncompressed (sql/005),
    // so a piece reads only its own part of the value.
    const std::string where =
        " FROM public.dataflow_state WHERE checkpoint_name = $1 AND operator_id = $2 AND partition_topic = $3 AND "
        "partition_id = $4 AND version = $5 AND is_snapshot = $6";
    std::vector<std::optional<std::string_view>> params;
    const std::string operatorId = std::to_string(id.operatorId), partition = std::to_string(id.partition.partition),
                      version = std::to_string(id.version);
    for (std::string_view p : {std::string_view(options_.name), std::string_view(operatorId),
                               std::string_view(id.partition.topic), std::string_view(partition),
                               std::string_view(version), std::string_view(id.snapshot ? "t" : "f")}) {
      params.emplace_back(p);
    }
    // The first piece comes with the file's size.
    const std::string piece = std::to_string(kStateChunkBytes);
    params.emplace_back(piece);
    auto first = c.execParamsBinary("SELECT octet_length(data)::int8, substring(data FROM 1 FOR $7::int)" + where,
                                    params, {}, /*binaryResult=*/true);
    if (first.rows() != 1) throw CheckpointError("state file " + describe() + "/" + id.path() + " is missing");
    std::string_view sizeBytes = first.value(0, 0);
    uint64_t total = 0;
    for (unsigned char b : sizeBytes) total = total << 8 | b;  // int8, big-endian
    std::string out;
    out.reserve(total);
    out.append(first.value(0, 1));
    params.pop_back();
    for (size_t at = out.size(); at < total; at += kStateChunkBytes) {
      const std::string from = std::to_string(at + 1);
      auto r = c.execParamsBinary("SELECT substring(data FROM $7::int FOR $8::int)" + where,
                                  {params[0], params[1], params[2], params[3], params[4], params[5], from, piece}, {},
                                  /*binaryResult=*/true);
      if (r.rows() != 1) throw CheckpointError("state file " + describe() + "/" + id.path() + " is missing");
      out.append(r.value(0, 0));
    }
    if (out.size() != total) {
      throw CheckpointError("state file " + describe() + "/" + id.path() + " changed while it was read");
    }
    return out;
  });
}

void PostgresCheckpointStore::deleteStateFiles(const std::vector<StateFileId>& ids) {
  if (ids.empty()) return;
  withStateConnection([&](Connection& c) {
    inTransaction(c, [&](Connection& tx) {
      for (const auto& id : ids) {
        tx.execParams(
            "DELETE FROM public.dataflow_state WHERE checkpoint_name = $1 AND operator_id = $2 AND partition_topic = $3 "
            "AND partition_id = $4 AND version = $5 AND is_snapshot = $6",
            {options_.name, std::to_string(id.operatorId), id.partition.topic, std::to_string(id.partition.partition),
             std::to_string(id.version), id.snapshot ? "t" : "f"});
      }
    });
  });
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
          "INSERT INTO public.dataflow_commits (checkpoint_name, batch_id, commit_ts_ms, next_watermark_ms) "
          "VALUES ($1, $2, $3, $4) ON CONFLICT (checkpoint_name, batch_id) DO NOTHING",
          {options_.name, std::to_string(entry.batchId), std::to_string(entry.commitTimestampMs),
           watermarkParam(entry.nextBatchWatermarkMs)});
    });
  }
  if (entry.batchId % 50 == 0 && entry.batchId > options_.retainBatches) {
    // Old log entries: a purge lost in a server crash is only done again later, so it does not
    // wait for its flush (two fsyncs every 50 batches off the latency path).
    withConnection([&](Connection& c) {
      inTransaction(c, [&](Connection& tx) {
        std::string threshold = std::to_string(entry.batchId - options_.retainBatches);
        tx.exec("SET LOCAL synchronous_commit TO off");
        tx.execParams("DELETE FROM public.dataflow_offsets WHERE checkpoint_name = $1 AND batch_id < $2", {options_.name, threshold});
        tx.execParams("DELETE FROM public.dataflow_commits WHERE checkpoint_name = $1 AND batch_id < $2", {options_.name, threshold});
      });
    });
  }
}

std::optional<CommitLogEntry> PostgresCheckpointStore::latestCommit() {
  return withConnection([&](Connection& c) -> std::optional<CommitLogEntry> {
    auto r = c.execParams(
        "SELECT batch_id, commit_ts_ms, next_watermark_ms FROM public.dataflow_commits WHERE checkpoint_name = $1 "
        "ORDER BY batch_id DESC LIMIT 1",
        {options_.name});
    if (r.rows() == 0) return std::nullopt;
    return CommitLogEntry{r.int64(0, 0), r.int64(0, 1), r.isNull(0, 2) ? INT64_MIN : r.int64(0, 2)};
  });
}

}  // namespace dataflow::postgres
