// Writing micro-batches into the PostgreSQL warehouse: set-based upserts under a per-key version
// guard, soft deletes, the dead-letter table, and the batch's commit record, in one transaction.
//
//   postgres::Warehouse warehouse({.connection = ConnectionConfig::fromEnvironment()}, store);
//   const postgres::UpsertTable customers({.table = "public.dim_customers", .keyColumns = {"customer_id"},
//       .valueColumns = {"email", "country"}, .softDeleteColumn = "is_deleted",
//       .insertOnlyColumns = {"first_seen_at"}, .touchColumns = {"last_seen_at"}});
//   ...foreachBatch([&](const Batch<Change>& batch, const BatchInfo& info) {
//     warehouse.writeBatch(info, [&](postgres::WarehouseTransaction& tx) {
//       tx.upsert(customers, rows);              // newest change per key wins, by version
//       tx.deadLetters(batch.deadLetters(), info);
//     });                                        // + commit record, one transaction
//   })
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/postgres/checkpoint_store.h"
#include "dataflow/postgres/connection.h"

namespace dataflow::postgres {

namespace detail {
class CopyWriter;  // warehouse.cc
}

struct UpsertTableOptions {
  // Target table, "schema.table" or "table"; each part is quoted. Required.
  std::string table;
  // Primary-key columns (the ON CONFLICT target). Required.
  std::vector<std::string> keyColumns;
  // Columns copied from the change. For a delete they keep their stored values.
  std::vector<std::string> valueColumns;
  // Per-key version guard: a change applies only if its version is greater than the stored one,
  // so replays and older changes never overwrite newer rows. Default: "source_lsn".
  std::string versionColumn = "source_lsn";
  // A change whose version equals the stored one applies too. For rows recomputed without a new
  // version of their own: a table join's row when only the other table changed (the join gives
  // it its left row's version, TableChange::version). Only where one writer at a time writes a
  // key at a given version, and batches are not replayed after their commit (the exactly-once
  // checkpoint). Default: false.
  bool equalVersionReplaces = false;
  // Set true by a delete, false by any other change; empty: deletes are ignored (unless
  // hardDelete). Default: empty.
  std::string softDeleteColumn;
  // Value columns that describe the change rather than the row, such as the source commit time
  // (event_time): a soft delete sets them from the delete, while the other value columns keep the
  // row's last known values. Without it a row deleted long after its last update would still show
  // that update's time. Each must be a value column. Default: empty.
  std::vector<std::string> changeColumns;
  // A delete removes the row (when its version is newer than the stored one) instead of marking
  // it. The key's version goes with the row, so an older change replayed afterwards inserts it
  // again: use it where batches are not replayed after their commit (the exactly-once
  // checkpoint, and tables such as aggregates whose rows are versioned by batch). Excludes
  // softDeleteColumn. Default: false.
  bool hardDelete = false;
  // Set to now() when the row is first inserted and never changed (e.g. first_seen_at).
  std::vector<std::string> insertOnlyColumns;
  // Set to now() by every applied change (e.g. last_seen_at).
  std::vector<std::string> touchColumns;
  // Value columns that hold numeric partial results which add up: the table then takes partial
  // rows, and a row's values in these columns are added to the stored ones (rows of one key in one
  // call are summed first); the other value columns take the greatest incoming value (they are the
  // same in every partial row, e.g. a window's end), the version column keeps the greatest
  // version, and no version guard applies. For aggregates whose partial results come from several
  // source partitions or processes (windows closed per partition, scaled out), each partial row
  // written exactly once, in its batch's transaction. Excludes deletes, soft or hard, and
  // UpsertRow::keepStored. Default: empty (rows replace rows, under the version guard).
  std::vector<std::string> accumulateColumns;
  // A batch none of whose keys is stored yet (a backfill, a fresh table, new ids past the stored
  // ones) is copied straight into the target, without the staging table and the merge. Decided
  // per call by one query: a range probe on the key index (every key past the greatest stored
  // one), else a probe of each key; a key stored meanwhile by another writer undoes the copy and
  // the merge runs instead. The rows written are the merge's, column for column. Not for tables
  // that accumulate. Default: true.
  bool directInsert = true;
  // COPY rows in PostgreSQL's binary format when every column written has a type the encoder
  // knows (integers, floats, numeric, text types, json, jsonb, bool, date, timestamps, uuid): the
  // server then skips its text parsers, which took a fifth of its time in a drain. The types are
  // read from the catalog once per connection. A value whose text the encoder does not take as the
  // server would (a timestamp without a zone, a number with an exponent) aborts the batch, which
  // is retried, and the table is written as text while the connection lasts. Default: true.
  bool binaryCopy = true;
};

// One change for an UpsertTable, in text form (as COPY takes it). `values` holds the key columns
// then the value columns, in the table's declared order; nullopt is NULL.
struct UpsertRow {
  std::vector<std::optional<std::string>> values;
  int64_t version = 0;
  bool deleted = false;
  // Bit i: values[i] was not sent with the change (an unchanged TOASTed column, see
  // debezium::ChangeEvent::unavailable): the stored value is kept, or, within one batch, the
  // value of the key's previous change. Bits of key columns and past the 64th are ignored.
  uint64_t keepStored = 0;
};

// The values of an UpsertRow, each moved into place: a braced list would copy every string once
// more (its elements are const), which a drain pays for each column of each event.
template <class... Values>
std::vector<std::optional<std::string>> upsertValues(Values&&... values) {
  std::vector<std::optional<std::string>> out;
  out.reserve(sizeof...(Values));
  (out.emplace_back(std::forward<Values>(values)), ...);
  return out;
}

// A validated upsert target; the SQL is built once, from configuration only (never from data),
// with every identifier quoted.
class UpsertTable {
 public:
  explicit UpsertTable(UpsertTableOptions options);
  const UpsertTableOptions& options() const { return options_; }
  size_t width() const { return options_.keyColumns.size() + options_.valueColumns.size(); }

 private:
  friend class WarehouseTransaction;
  UpsertTableOptions options_;
  uint64_t changeBits_ = 0;  // the change columns, as bits of UpsertRow::keepStored
};

// The open transaction of one batch.
class WarehouseTransaction {
 public:
  // Keeps the newest change per key (greatest version; the later one on a tie), copies them into a
  // temporary staging table and merges it into the target under the version guard (or, for a
  // table that accumulates, adds every row up). Returns the number of rows inserted or updated.
  int64_t upsert(const UpsertTable& table, std::span<const UpsertRow> rows);
  // Every partition of a batch, without copying its rows (one statement per partition: a key
  // lives in one partition, and statements apply in order).
  int64_t upsert(const UpsertTable& table, const Batch<UpsertRow>& batch) {
    int64_t n = 0;
    for (const auto& p : batch.partitions()) n += upsert(table, std::span<const UpsertRow>(p.rows));
    return n;
  }
  // Inserts dead letters into dlq_events; a (topic, partition, offset) already there is skipped,
  // so a replayed batch adds no duplicates. Payload and key bytes are stored exactly.
  int64_t deadLetters(std::span<const DeadLetter> letters, const BatchInfo& info);
  Connection& connection() { return conn_; }

 private:
  friend class Warehouse;
  // The SQL types of a target's key columns, by quoted target name (kept while a connection lasts).
  using KeyTypes = std::map<std::string, std::vector<std::string>>;
  // The type OID of every column of a target, by quoted target name, for binary COPY; nullopt: the
  // target is written as text (kept while a connection lasts).
  using ColumnTypes = std::map<std::string, std::optional<std::map<std::string, uint32_t>>>;
  WarehouseTransaction(Connection& conn, std::map<std::string, int64_t>* phasesMicros, KeyTypes& keyTypes,
                       ColumnTypes& columnTypes)
      : conn_(conn), phasesMicros_(phasesMicros), keyTypes_(keyTypes), columnTypes_(columnTypes) {}
  // The binary COPY form of each of `columns` of `target` (an index into detail::BinaryType), or
  // an empty vector to COPY as text; `extra` are columns of a staging table and their type OIDs.
  std::vector<uint8_t> binaryColumns(const UpsertTable& table, const std::string& target,
                                     const std::vector<std::string>& columns,
                                     const std::vector<std::pair<std::string, uint32_t>>& extra = {});
  // Abandons a binary COPY over a value the encoder does not take: the target is written as text
  // from now on, and the batch fails retriably.
  [[noreturn]] void refuseBinary(detail::CopyWriter& copy, const UpsertTableOptions& o, const std::string& target,
                                 const std::string& column, std::string_view value);
  int64_t accumulateStaged(const UpsertTable& table, const std::string& target, const std::string& stage);
  // The now() of the transaction when none of the rows' keys is stored in the target, else nullopt.
  std::optional<std::string> noKeyStored(const UpsertTable& table, const std::string& target,
                                         std::span<const UpsertRow* const> rows);
  // COPY of the kept rows straight into the target, as the merge would write them into an empty
  // key range: the rows written, or nullopt (and nothing written) when a key turned out to be
  // stored after all.
  std::optional<int64_t> copyDirect(const UpsertTable& table, const std::string& target,
                                    std::span<const UpsertRow* const> rows, const std::string& now);
  // Adds the time since `since` to phase `name` of the batch (BatchInfo::sinkPhasesMicros).
  void addPhase(const char* name, std::chrono::steady_clock::time_point since);
  Connection& conn_;
  std::map<std::string, int64_t>* phasesMicros_;  // null: not measured
  KeyTypes& keyTypes_;
  ColumnTypes& columnTypes_;
  std::string table_;  // the quoted dead-letter table
};

struct WarehouseOptions {
  ConnectionConfig connection;
  // The dead-letter table. Default: "public.dlq_events".
  std::string deadLetterTable = "public.dlq_events";
};

class Warehouse {
 public:
  // With a store, every batch's commit record is written in the batch's transaction.
  Warehouse(WarehouseOptions options, std::shared_ptr<PostgresCheckpointStore> store = nullptr);

  // Runs `body` and the commit record in one transaction. A lost connection is dropped (the next
  // attempt reconnects) and reported as a retriable ConnectorError, so the engine retries the whole
  // batch; nothing is ever half-applied.
  void writeBatch(const BatchInfo& info, const std::function<void(WarehouseTransaction&)>& body);

 private:
  WarehouseOptions options_;
  std::shared_ptr<PostgresCheckpointStore> store_;
  std::optional<Connection> conn_;
  WarehouseTransaction::KeyTypes keyTypes_;  // of conn_
  WarehouseTransaction::ColumnTypes columnTypes_;  // of conn_
};

}  // namespace dataflow::postgres
