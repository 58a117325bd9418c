// The replication source: a thread that keeps one replication connection streaming (decoding
// pgoutput into Debezium-shaped records, a transaction at a time, and reporting the committed
// position), and the driver-side methods that plan batches over what it has received.
//
// Threads. The streaming thread owns the replication connection and the relation cache; the
// driver thread owns the control and snapshot connections; records cross under `mu`. Batches are
// cut at transaction boundaries only, so that a batch's end LSN is a position the slot can be
// confirmed at.
#include "dataflow/postgres/replication_source.h"

#include <libpq-fe.h>
#include <poll.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "debezium_json.h"
#include "dataflow/postgres/pgoutput.h"

namespace dataflow::postgres {
namespace {

using Clock = std::chrono::steady_clock;
using detail::TableShape;

// Text the streaming and snapshot sessions print values in: what debezium_json.cc parses.
constexpr const char* kSessionOptions = "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 -c IntervalStyle=postgres";

int64_t nowUnixMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// PostgreSQL's rule for slot names, checked here so that they can go into commands unquoted-safe.
bool isValidSlotName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

std::pair<std::string, std::string> splitTable(const std::string& qualified) {
  auto dot = qualified.find('.');
  if (dot == std::string::npos) return {"public", qualified};
  return {qualified.substr(0, dot), qualified.substr(dot + 1)};
}

// A transaction received whole, waiting for its batch.
// A transaction received whole, waiting for its batch. Its records move into the batch that reads
// them (no copy); reading the same range again (a retried batch) receives it again from the server.
struct Transaction {
  uint64_t endLsn = 0;
  std::vector<LogRecord> records;
  size_t recordCount = 0;  // records.size() before they moved out
  int64_t bytes = 0;
  bool handedOut = false;
};

// Thrown on the streaming thread to start again from the committed position.
struct Rewind {};
// Thrown on the streaming thread to let go of the server while batches do not take what was
// received (the warehouse is away): a walsender that cannot send holds up the server's shutdown.
struct Stalled {};

}  // namespace

std::string formatLsn(uint64_t lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32), static_cast<unsigned>(lsn & 0xffffffffu));
  return buf;
}

uint64_t parseLsn(std::string_view text) {
  auto slash = text.find('/');
  uint32_t hi = 0, lo = 0;
  bool ok = slash != std::string_view::npos;
  if (ok) {
    auto a = std::from_chars(text.data(), text.data() + slash, hi, 16);
    auto b = std::from_chars(text.data() + slash + 1, text.data() + text.size(), lo, 16);
    ok = a.ec == std::errc() && a.ptr == text.data() + slash && b.ec == std::errc() && b.ptr == text.data() + text.size() &&
         slash > 0 && slash + 1 < text.size();
  }
  if (!ok) throw ConfigurationError("not an LSN: '" + std::string(text) + "' (expected e.g. 16/B374D848)");
  return uint64_t{hi} << 32 | lo;
}

void ReplicationSourceOptions::validate() const {
  if (tables.empty()) throw ConfigurationError("ReplicationSource: no tables to capture (option tables)");
  for (const auto& t : tables) {
    auto [schema, name] = splitTable(t);
    if (schema.empty() || name.empty()) throw ConfigurationError("ReplicationSource: bad table name '" + t + "' (schema.table)");
  }
  if (!isValidSlotName(slotName)) {
    throw ConfigurationError("ReplicationSource: slot name '" + slotName +
                             "' is not valid: 1 to 63 characters of lower-case letters, digits and underscores");
  }
  if (!publicationName.empty() && publicationName.find_first_of("'\"\\") != std::string::npos) {
    throw ConfigurationError("ReplicationSource: publication name '" + publicationName + "' must not contain quotes");
  }
  if (topicPrefix.empty()) throw ConfigurationError("ReplicationSource: topicPrefix is empty");
  if (snapshotFetchRows <= 0) throw ConfigurationError("ReplicationSource: snapshotFetchRows must be > 0");
  if (maxRecordsPerBatch < 0) throw ConfigurationError("ReplicationSource: maxRecordsPerBatch must be >= 0");
  if (maxBytesPerBatch < 0) throw ConfigurationError("ReplicationSource: maxBytesPerBatch must be >= 0");
  if (maxBufferedBytes <= 0) throw ConfigurationError("ReplicationSource: maxBufferedBytes must be > 0");
  if (statusInterval.count() <= 0 || readTimeout.count() <= 0 || idleAdvanceInterval.count() < 0) {
    throw ConfigurationError("ReplicationSource: statusInterval and readTimeout must be > 0, idleAdvanceInterval >= 0");
  }
  if (receiveCoalesce.count() < 0 || receiveCoalesce > std::chrono::milliseconds(100)) {
    throw ConfigurationError("ReplicationSource: receiveCoalesce must be between 0 and 100 ms");
  }
}

struct ReplicationSource::Impl {
  explicit Impl(ReplicationSourceOptions o)
      : options(std::move(o)), stream{options.slotName, 0}, snapshotPart{options.slotName, 1} {
    if (options.publicationName.empty()) options.publicationName = options.slotName;
    for (const auto& t : options.tables) tables.push_back(splitTable(t));
  }

  ReplicationSourceOptions options;
  const PartitionId stream;
  const PartitionId snapshotPart;
  std::vector<std::pair<std::string, std::string>> tables;  // schema, name
  std::string database;

  // Driver thread.
  std::optional<Connection> control;
  uint64_t startLsn = 0;  // where streaming starts: the committed position
  Clock::time_point lastIdleAdvance = Clock::now();

  // Interned topic names: records keep string_views into them.
  std::mutex topicsMu;
  std::set<std::string, std::less<>> topics;
  std::string_view intern(const std::string& topic) {
    std::lock_guard lock(topicsMu);
    return *topics.insert(topic).first;
  }
  // Table shapes, kept while the source lives: a compact record points at its shape. An equal
  // shape is reused, so reconnecting (which sends every Relation again) adds none.
  std::mutex shapesMu;
  std::deque<TableShape> shapes;
  const TableShape* internShape(TableShape shape) {
    std::lock_guard lock(shapesMu);
    auto sameColumns = [](const std::vector<pgoutput::Column>& a, const std::vector<pgoutput::Column>& b) {
      return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](const auto& x, const auto& y) {
        return x.key == y.key && x.name == y.name && x.typeOid == y.typeOid && x.typeModifier == y.typeModifier;
      });
    };
    for (const TableShape& s : shapes) {
      if (s.topic == shape.topic && sameColumns(s.columns, shape.columns)) return &s;
    }
    shape.internedTopic = intern(shape.topic);
    return &shapes.emplace_back(std::move(shape));
  }
  // Set with the database's name, before the first record (ReplicationSourceOptions::compactValues).
  std::unique_ptr<detail::CompactEventCodec> codec;

  // A change's value: Debezium JSON, or the compact form.
  void appendValue(LogRecord& rec, char op, const TableShape& shape, const detail::Tuple* before,
                   const detail::Tuple* after, const detail::EventSource& source) const {
    if (codec) {
      detail::appendCompactValue(op, shape, before, after, source, rec.value);
      rec.codec = codec.get();
    } else {
      detail::appendValueJson(op, shape, before, after, source, rec.value);
    }
    rec.hasValue = true;
  }

  // What the streaming thread shares with the driver.
  std::mutex mu;
  std::condition_variable changed;
  bool interrupted = false;  // interrupt(): the query is stopping (under mu)
  std::deque<Transaction> transactions;  // received, not yet committed, in commit order
  int64_t bufferedBytes = 0;
  uint64_t dataFrontier = 0;       // end LSN of the last transaction received
  uint64_t keepaliveFrontier = 0;  // the server has sent everything before this (keepalives)
  uint64_t skipBefore = 0;         // transactions ending before it were committed already
  uint64_t confirmed = 0;          // what the slot may confirm: the committed position
  // The server's position when streaming started, until the stream has reached it: what is
  // "available now" (so that an available-now run reads everything committed before it started).
  uint64_t catchUpLsn = 0;
  bool confirmPending = false;
  bool rewindRequested = false;  // a batch needs records that were handed out already
  bool stopping = false;
  std::string lastStreamError;
  std::exception_ptr fatal;  // the stream cannot continue (slot gone, protocol error)
  std::thread thread;

  // Streaming thread only.
  std::unordered_map<uint32_t, const TableShape*> relations;
  pgoutput::Message message;
  std::optional<Transaction> open;
  uint32_t openXid = 0;
  int64_t openCommitMs = 0;
  uint64_t openFinalLsn = 0;
  uint64_t lastChangeLsn = 0;
  int32_t sameLsnIndex = 0;
  std::optional<Clock::time_point> pausedSince;  // reading paused: the buffer is full
  int64_t processedMs = 0;    // the events' ts_ms: when their burst of frames was read
  bool bufferFilled = false;  // a transaction just filled the buffer: look before reading on

  // The snapshot (driver and reading threads, under snapshotMu).
  std::mutex snapshotMu;
  bool snapshotComplete = true;
  std::optional<Connection> snapshotConn;
  bool snapshotOpen = false;         // a REPEATABLE READ transaction holds the snapshot
  size_t snapshotTable = 0;          // the table being read
  bool cursorOpen = false;
  const TableShape* snapshotShape = nullptr;
  uint64_t snapshotVersion = 0;
  int64_t snapshotStartedMs = 0;
  int64_t snapshotBase = 0;          // ordinal of snapshotRows.front()
  int64_t snapshotHandedOut = 0;     // rows before this ordinal moved into a batch
  std::deque<LogRecord> snapshotRows;
  bool snapshotExhausted = false;

  ConnectionConfig sessionConfig(bool replication) const {
    ConnectionConfig c = options.connection;
    c.replication = replication;
    c.serverOptions = kSessionOptions;
    if (c.applicationName == "dataflow") c.applicationName = "dataflow-" + options.slotName;
    c.applicationName.resize(std::min<size_t>(c.applicationName.size(), 63));  // NAMEDATALEN
    return c;
  }

  std::string quotedTableList(Connection& conn) const {
    std::string out;
    for (const auto& [schema, name] : tables) {
      out += (out.empty() ? "" : ", ") + conn.quoteIdentifier(schema) + "." + conn.quoteIdentifier(name);
    }
    return out;
  }

  // --- checks -------------------------------------------------------------------------------

  void checkServer() {
    control = Connection::open(sessionConfig(false));
    Connection& c = *control;
    const std::string target = options.connection.describe();
    std::string walLevel(c.exec("SHOW wal_level").value(0, 0));
    if (walLevel != "logical") {
      throw ConfigurationError("PostgreSQL at " + target + " has wal_level = " + walLevel +
                               "; reading its changes needs wal_level = logical: run ALTER SYSTEM SET wal_level = "
                               "logical; then restart the server");
    }
    auto role = c.exec("SELECT current_user, rolreplication OR rolsuper, current_database() FROM pg_roles WHERE rolname = current_user");
    if (role.rows() != 1 || role.value(0, 1) != "t") {
      std::string user = role.rows() ? std::string(role.value(0, 0)) : "the current role";
      throw ConfigurationError("PostgreSQL role " + user + " at " + target +
                               " may not read the replication stream: ALTER ROLE " + user + " REPLICATION;");
    }
    database = std::string(role.value(0, 2));
    if (options.compactValues && !codec) codec = std::make_unique<detail::CompactEventCodec>(options.topicPrefix, database);
    for (const auto& [schema, name] : tables) {
      auto r = c.execParams("SELECT to_regclass($1) IS NOT NULL", {c.quoteIdentifier(schema) + "." + c.quoteIdentifier(name)});
      if (r.value(0, 0) != "t") throw ConfigurationError("ReplicationSource: table " + schema + "." + name + " does not exist in " + database);
    }
    ensurePublication(c);
  }

  void ensurePublication(Connection& c) {
    const std::string& pub = options.publicationName;
    if (c.execParams("SELECT 1 FROM pg_publication WHERE pubname = $1", {pub}).rows() == 0) {
      try {
        c.exec("CREATE PUBLICATION " + c.quoteIdentifier(pub) + " FOR TABLE " + quotedTableList(c));
        spdlog::info("postgres source: created publication {} for {}", pub, quotedTableList(c));
      } catch (const PostgresError& e) {
        if (e.sqlState() == "42710") return ensurePublication(c);  // created meanwhile by another process
        throw ConfigurationError("cannot create publication " + pub + " (" + e.what() +
                                 "): create it as the tables' owner: CREATE PUBLICATION " + c.quoteIdentifier(pub) +
                                 " FOR TABLE " + quotedTableList(c) + ";");
      }
      return;
    }
    auto r = c.execParams("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", {pub});
    std::set<std::pair<std::string, std::string>> covered;
    for (int i = 0; i < r.rows(); ++i) covered.emplace(r.value(i, 0), r.value(i, 1));
    for (const auto& t : tables) {
      if (!covered.contains(t)) {
        throw ConfigurationError("publication " + pub + " does not include " + t.first + "." + t.second +
                                 ": ALTER PUBLICATION " + c.quoteIdentifier(pub) + " ADD TABLE " +
                                 c.quoteIdentifier(t.first) + "." + c.quoteIdentifier(t.second) + ";");
      }
    }
  }

  struct SlotInfo {
    std::string plugin, database;
    uint64_t confirmedFlush = 0, restart = 0;
    bool active = false;
  };
  std::optional<SlotInfo> slotInfo() {
    auto r = control->execParams(
        "SELECT plugin, database, confirmed_flush_lsn::text, restart_lsn::text, active FROM pg_replication_slots "
        "WHERE slot_name = $1",
        {options.slotName});
    if (r.rows() == 0) return std::nullopt;
    SlotInfo s{std::string(r.value(0, 0)), std::string(r.value(0, 1)), 0, 0, r.value(0, 4) == "t"};
    if (!r.isNull(0, 2)) s.confirmedFlush = parseLsn(r.value(0, 2));
    if (!r.isNull(0, 3)) s.restart = parseLsn(r.value(0, 3));
    if (s.plugin != "pgoutput" || s.database != database) {
      throw ConfigurationError("replication slot " + options.slotName + " belongs to plugin " + s.plugin + " in database " +
                               s.database + ", not pgoutput in " + database + ": choose another slot name");
    }
    return s;
  }

  // --- start ----------------------------------------------------------------------------------

  void startStreaming(uint64_t from) {
    startLsn = from;
    uint64_t serverPosition = parseLsn(control->exec("SELECT pg_current_wal_flush_lsn()::text").value(0, 0));
    {
      std::lock_guard lock(mu);
      dataFrontier = keepaliveFrontier = confirmed = from;
      skipBefore = from + 1;
      catchUpLsn = serverPosition;
    }
    thread = std::thread([this] { streamLoop(); });
  }

  Offsets initial() {
    uint64_t from;
    bool exported = false;
    if (auto slot = slotInfo()) {
      from = slot->confirmedFlush;
      spdlog::info("postgres source: slot {} exists, streaming from its confirmed position {}", options.slotName, formatLsn(from));
    } else {
      from = createSlot(exported);
    }
    std::lock_guard lock(snapshotMu);
    snapshotComplete = !options.snapshot;
    snapshotBase = 0;
    if (options.snapshot && !exported) {
      spdlog::info("postgres source: slot {} existed before this query: the snapshot is read in a new transaction",
                   options.slotName);
    }
    Offsets initial;
    initial.set(stream, static_cast<int64_t>(from) + 1);
    initial.set(snapshotPart, snapshotComplete ? kSnapshotComplete : 0);
    startStreaming(from);
    return initial;
  }

  // Creates the slot; with the snapshot option, imports its exported snapshot into the snapshot
  // connection before the creating connection runs anything else (which would end the export).
  uint64_t createSlot(bool& exported) {
    Connection repl = Connection::open(sessionConfig(true));
    const bool exportSnapshot = options.snapshot;
    pg_result* raw = PQexec(repl.raw(), ("CREATE_REPLICATION_SLOT " + options.slotName + " LOGICAL pgoutput " +
                                         (exportSnapshot ? "EXPORT_SNAPSHOT" : "NOEXPORT_SNAPSHOT")).c_str());
    Result r(raw);
    if (!raw || PQresultStatus(raw) != PGRES_TUPLES_OK) {
      std::string message = raw ? PQresultErrorMessage(raw) : PQerrorMessage(repl.raw());
      const char* state = raw ? PQresultErrorField(raw, PG_DIAG_SQLSTATE) : nullptr;
      if (state && std::string_view(state) == "53400") {
        throw ConfigurationError("cannot create replication slot " + options.slotName + ": all replication slots are in use: "
                                 "raise max_replication_slots or drop an unused slot (" + message + ")");
      }
      throw ConnectorError("cannot create replication slot " + options.slotName + ": " + message, true);
    }
    uint64_t consistent = parseLsn(r.value(0, 1));
    spdlog::info("postgres source: created slot {} (pgoutput), consistent at {}", options.slotName, formatLsn(consistent));
    if (exportSnapshot) {
      std::string name(r.value(0, 2));
      std::lock_guard lock(snapshotMu);
      snapshotConn = Connection::open(sessionConfig(false));
      snapshotConn->exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
      // The name is the server's ("00000003-00000002-1"); checked before it goes into the statement.
      if (name.empty() || name.find_first_not_of("0123456789ABCDEFabcdef-") != std::string::npos) {
        throw ConnectorError("CREATE_REPLICATION_SLOT returned an unexpected snapshot name '" + name + "'", false);
      }
      snapshotConn->exec("SET TRANSACTION SNAPSHOT '" + name + "'");
      beginSnapshot(consistent);
      exported = true;
    }
    return consistent;
  }

  void resume(const Offsets& next) {
    auto slot = slotInfo();
    int64_t streamNext = next.get(stream, -1);
    if (streamNext < 1) throw CheckpointError("postgres source " + options.slotName + ": the checkpoint has no position for " + stream.toString());
    uint64_t committed = static_cast<uint64_t>(streamNext) - 1;
    if (!slot) {
      throw ConnectorError("replication slot " + options.slotName + " does not exist (dropped?): the checkpoint continues at " +
                               formatLsn(committed) + ", and the changes since then are gone with the slot. To start over "
                               "with a new snapshot, delete this query's checkpoint.",
                           false);
    }
    if (slot->confirmedFlush > committed) {
      std::string message = "replication slot " + options.slotName + " has confirmed " + formatLsn(slot->confirmedFlush) +
                            " but the checkpoint committed only " + formatLsn(committed) +
                            ": the changes in between were consumed by someone else and are lost";
      if (options.failOnDataLoss) throw ConnectorError(message + " (failOnDataLoss)", false);
      spdlog::warn("postgres source: {}; continuing (failOnDataLoss=false)", message);
      committed = slot->confirmedFlush;
    }
    int64_t snapshotNext = next.get(snapshotPart, kSnapshotComplete);
    {
      std::lock_guard lock(snapshotMu);
      snapshotComplete = snapshotNext >= kSnapshotComplete;
      snapshotBase = snapshotNext;
      if (!snapshotComplete) {
        spdlog::info("postgres source: the snapshot was interrupted after {} rows: it is read again in a new transaction",
                     snapshotNext);
      }
    }
    startStreaming(committed);
  }

  // --- the snapshot ----------------------------------------------------------------------------

  // Versions the snapshot's rows just below every change the slot can still send (the header).
  void beginSnapshot(uint64_t fallbackVersion) {
    auto r = snapshotConn->execParams("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1", {options.slotName});
    snapshotVersion = (r.rows() && !r.isNull(0, 0)) ? parseLsn(r.value(0, 0)) : fallbackVersion;
    if (snapshotVersion > 0) --snapshotVersion;
    snapshotStartedMs = nowUnixMicros() / 1000;
    snapshotOpen = true;
    snapshotTable = 0;
    cursorOpen = false;
    snapshotExhausted = false;
  }

  void openSnapshotIfNeeded() {
    if (snapshotOpen || snapshotComplete) return;
    snapshotConn = Connection::open(sessionConfig(false));
    snapshotConn->exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY");
    beginSnapshot(startLsn);
  }

  TableShape shapeOf(const Result& r, const std::string& schema, const std::string& name) {
    TableShape shape{schema, name, options.topicPrefix + "." + schema + "." + name, {}, {}};
    shape.internedTopic = intern(shape.topic);
    auto keys = snapshotConn->execParams(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = $1::regclass AND (i.indisprimary OR i.indisreplident)",
        {snapshotConn->quoteIdentifier(schema) + "." + snapshotConn->quoteIdentifier(name)});
    std::set<std::string, std::less<>> keyNames;
    for (int i = 0; i < keys.rows(); ++i) keyNames.emplace(keys.value(i, 0));
    for (int c = 0; c < r.columns(); ++c) {
      pgoutput::Column col;
      col.name = std::string(r.columnName(c));
      col.key = keyNames.contains(col.name);
      col.typeOid = r.columnType(c);
      col.typeModifier = r.columnTypeModifier(c);
      shape.columns.push_back(std::move(col));
    }
    return shape;
  }

  // Fetches the next rows of the snapshot into snapshotRows; sets snapshotExhausted when every
  // table is done.
  void fetchSnapshot() {
    while (snapshotTable < tables.size()) {
      const auto& [schema, name] = tables[snapshotTable];
      Connection& c = *snapshotConn;
      if (!cursorOpen) {
        c.exec("DECLARE dataflow_snapshot NO SCROLL CURSOR FOR SELECT * FROM " + c.quoteIdentifier(schema) + "." +
               c.quoteIdentifier(name));
        cursorOpen = true;
        snapshotShape = nullptr;
      }
      Result r = c.exec("FETCH FORWARD " + std::to_string(options.snapshotFetchRows) + " FROM dataflow_snapshot");
      if (r.rows() == 0) {
        c.exec("CLOSE dataflow_snapshot");
        cursorOpen = false;
        ++snapshotTable;
        continue;
      }
      if (!snapshotShape) snapshotShape = internShape(shapeOf(r, schema, name));
      detail::EventSource source{options.topicPrefix, database, snapshotStartedMs, 0, snapshotVersion, snapshotVersion, "true",
                                 snapshotStartedMs};
      detail::Tuple tuple(r.columns());
      for (int row = 0; row < r.rows(); ++row) {
        for (int col = 0; col < r.columns(); ++col) {
          tuple[col] = r.isNull(row, col) ? pgoutput::Value{pgoutput::Value::Kind::kNull, {}}
                                          : pgoutput::Value{pgoutput::Value::Kind::kText, r.value(row, col)};
        }
        LogRecord rec;
        rec.topic = snapshotShape->internedTopic;
        rec.partition = -1;  // snapshot rows: offset is the row's ordinal in the snapshot
        rec.offset = snapshotBase + static_cast<int64_t>(snapshotRows.size());
        rec.timestamp = snapshotStartedMs;
        rec.timestampType = TimestampType::kCreateTime;
        detail::appendKeyJson(*snapshotShape, tuple, rec.key);
        rec.hasKey = true;
        appendValue(rec, 'r', *snapshotShape, nullptr, &tuple, source);
        snapshotRows.push_back(std::move(rec));
      }
      return;
    }
    if (snapshotConn) {
      snapshotConn->exec("COMMIT");
      snapshotConn.reset();
    }
    snapshotExhausted = true;
  }

  // Drops the snapshot's transaction and the rows not committed: they are read again, in a new
  // snapshot, from the first uncommitted row.
  void resetSnapshot() {
    snapshotConn.reset();
    snapshotOpen = false;
    cursorOpen = false;
    snapshotRows.clear();
    snapshotHandedOut = snapshotBase;
  }

  // Rows of the snapshot from `from` on, at least `want` of them unless the snapshot ends first.
  int64_t snapshotRowsFrom(int64_t from, int64_t want) {
    if (from < snapshotBase) {
      throw InternalError("postgres source: snapshot rows before " + std::to_string(snapshotBase) + " were already dropped");
    }
    try {
      openSnapshotIfNeeded();
      while (snapshotBase + static_cast<int64_t>(snapshotRows.size()) - from < want && !snapshotExhausted) fetchSnapshot();
    } catch (const ConnectorError& e) {
      // The snapshot's transaction is gone with its connection (a restarted server): the rows not
      // committed yet are read again, in a new snapshot, when the batch is retried.
      resetSnapshot();
      throw ConnectorError(std::string("postgres source: the snapshot was interrupted (") + e.what() +
                               "); it continues in a new transaction from row " + std::to_string(snapshotBase),
                           true);
    }
    return std::max<int64_t>(0, snapshotBase + static_cast<int64_t>(snapshotRows.size()) - from);
  }

  // --- the stream (streaming thread) ----------------------------------------------------------

  void streamLoop() {
    int attempt = 0;
    while (true) {
      {
        std::lock_guard lock(mu);
        if (stopping) return;
      }
      std::optional<Connection> repl;
      try {
        repl = Connection::open(sessionConfig(true));
        startReplication(*repl);
        attempt = 0;
        pump(*repl);
        return;  // stopping
      } catch (const Rewind&) {
        open.reset();
        spdlog::info("postgres source: slot {}: a batch is read again; streaming again from {}", options.slotName,
                     formatLsn(dataFrontier));
      } catch (const Stalled&) {
        open.reset();
        repl.reset();
        std::unique_lock lock(mu);
        spdlog::info("postgres source: slot {}: nothing read for {} ms with {} bytes waiting; disconnected until batches "
                     "read again", options.slotName, options.readTimeout.count() / 12, bufferedBytes);
        changed.wait(lock, [&] { return stopping || rewindRequested || bufferedBytes <= options.maxBufferedBytes / 2; });
      } catch (const Error& e) {
        open.reset();
        bool retriable = false;
        if (auto* c = dynamic_cast<const ConnectorError*>(&e)) retriable = c->retriable();
        std::unique_lock lock(mu);
        lastStreamError = e.what();
        if (!retriable) {
          spdlog::error("postgres source: streaming from slot {} stopped: {}", options.slotName, e.what());
          fatal = std::current_exception();
          changed.notify_all();
          return;
        }
        auto backoff = std::chrono::milliseconds(std::min(5000, 200 << std::min(attempt, 5)));
        ++attempt;
        spdlog::warn("postgres source: streaming from slot {} failed ({}); reconnecting in {} ms", options.slotName, e.what(),
                     backoff.count());
        changed.wait_for(lock, backoff, [&] { return stopping; });
      }
    }
  }

  void startReplication(Connection& repl) {
    uint64_t from;
    {
      std::lock_guard lock(mu);
      from = dataFrontier;
    }
    std::string command = "START_REPLICATION SLOT " + options.slotName + " LOGICAL " + formatLsn(from) +
                          " (proto_version '1', publication_names '\"" + options.publicationName + "\"')";
    pg_result* raw = PQexec(repl.raw(), command.c_str());
    Result r(raw);
    if (!raw || PQresultStatus(raw) != PGRES_COPY_BOTH) {
      std::string message = raw ? PQresultErrorMessage(raw) : PQerrorMessage(repl.raw());
      while (!message.empty() && message.back() == '\n') message.pop_back();
      const char* state = raw ? PQresultErrorField(raw, PG_DIAG_SQLSTATE) : nullptr;
      std::string sqlState = state ? state : "";
      if (sqlState == "42704") {
        throw ConnectorError("replication slot " + options.slotName + " does not exist (dropped by an operator?): " + message +
                                 ". The changes after " + formatLsn(from) + " cannot be read; to start over with a new "
                                 "snapshot, delete this query's checkpoint.",
                             false);
      }
      throw ConnectorError("START_REPLICATION on slot " + options.slotName + " failed: " + message, true);
    }
    relations.clear();  // the server sends every Relation again on a new connection
    spdlog::info("postgres source: streaming slot {} from {}", options.slotName, formatLsn(from));
  }

  // Reports what was received (written) and, when a batch committed since the last report, the
  // committed position (flushed: the slot confirms it). Otherwise flushed is left invalid (0),
  // which the server takes as "no new confirmation": it then judges the client by `written`, so a
  // fast shutdown, which waits until every walsender's client has everything the server sent,
  // completes although nothing more can be committed (the warehouse may be that very server).
  void sendStatus(Connection& repl, bool replyRequested = false) {
    uint64_t written, flushed = 0;
    {
      std::lock_guard lock(mu);
      written = std::max({dataFrontier, keepaliveFrontier, confirmed});
      if (confirmPending) flushed = confirmed;
      confirmPending = false;
    }
    std::string update = pgoutput::encodeStatusUpdate(written, flushed, flushed, nowUnixMicros(), replyRequested);
    if (PQputCopyData(repl.raw(), update.data(), static_cast<int>(update.size())) != 1 || PQflush(repl.raw()) != 0) {
      throw ConnectorError(std::string("postgres source: cannot send the standby status: ") + PQerrorMessage(repl.raw()), true);
    }
  }

  // Frames handled between two looks at the shared state: enough to spread the lock and the
  // clock over many changes, few enough that a stop is seen within a fraction of a millisecond.
  static constexpr int kFramesPerBurst = 256;

  void pump(Connection& repl) {
    pg_conn* conn = repl.raw();
    auto nextStatus = Clock::now();
    bool received = false;  // the last burst handled frames: changes are streaming in
    while (true) {
      bool sendNow = false;
      bool full = false;
      {
        std::unique_lock lock(mu);
        // Only between transactions: a transaction is held whole, however large.
        while (!stopping && !open && bufferedBytes > options.maxBufferedBytes && !confirmPending &&
               Clock::now() < nextStatus) {
          if (!pausedSince) pausedSince = Clock::now();
          // A pause longer than a tenth of the read timeout (12 s by default) means the batches are
          // stuck, not slow: let go of the server (a fast shutdown waits for this walsender).
          if (Clock::now() - *pausedSince > options.readTimeout / 12) {
            pausedSince.reset();
            throw Stalled{};
          }
          changed.wait_until(lock, std::min(nextStatus, Clock::now() + std::chrono::milliseconds(500)));
        }
        if (bufferedBytes <= options.maxBufferedBytes) pausedSince.reset();
        if (stopping) {
          lock.unlock();
          finish(repl);
          return;
        }
        if (rewindRequested) {
          // Everything after the committed position is received again, handed-out records too.
          rewindRequested = false;
          transactions.clear();
          bufferedBytes = 0;
          dataFrontier = keepaliveFrontier = confirmed;
          skipBefore = confirmed + 1;
          throw Rewind{};
        }
        sendNow = confirmPending;
        full = !open && bufferedBytes > options.maxBufferedBytes;
      }
      auto now = Clock::now();
      if (sendNow || now >= nextStatus) {
        sendStatus(repl);
        nextStatus = now + options.statusInterval;
      }
      if (full) continue;
      // A burst of frames: the events' processing time is read once for all of them.
      processedMs = nowUnixMicros() / 1000;
      bufferFilled = false;
      bool statusSent = false;
      int n = 0;
      for (int frames = 0; frames < kFramesPerBurst && !bufferFilled; ++frames) {
        char* buffer = nullptr;
        n = PQgetCopyData(conn, &buffer, 1);
        if (n <= 0) break;
        std::unique_ptr<char, decltype(&PQfreemem)> owned(buffer, &PQfreemem);
        statusSent |= handleFrame(repl, std::string_view(buffer, static_cast<size_t>(n)));
        received = true;
      }
      if (statusSent) nextStatus = Clock::now() + options.statusInterval;
      if (n > 0) continue;
      if (n == 0) {
        // While changes stream in, a short wait lets the next ones gather in the socket: one
        // wake-up and one read for many messages instead of one each (the server sends every
        // message on its own).
        if (received && options.receiveCoalesce.count() > 0) std::this_thread::sleep_for(options.receiveCoalesce);
        received = false;
        pollfd fd{PQsocket(conn), POLLIN, 0};
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(nextStatus - Clock::now()).count();
        // Wake up often enough to see a commit confirmed by the driver.
        ::poll(&fd, 1, static_cast<int>(std::clamp<int64_t>(wait, 0, 50)));
        if (PQconsumeInput(conn) != 1) {
          throw ConnectorError(std::string("postgres source: replication connection lost: ") + PQerrorMessage(conn), true);
        }
        continue;
      }
      if (n == -1) {
        pg_result* end = PQgetResult(conn);
        std::string message = end ? PQresultErrorMessage(end) : "";
        if (end) PQclear(end);
        throw ConnectorError("postgres source: the server ended the replication stream" + (message.empty() ? "" : ": " + message), true);
      }
      throw ConnectorError(std::string("postgres source: replication stream failed: ") + PQerrorMessage(conn), true);
    }
  }

  // A clean end: the last committed position reported, then CopyDone. Best effort: the next
  // start confirms it anyway.
  void finish(Connection& repl) {
    try {
      sendStatus(repl);
      PQputCopyEnd(repl.raw(), nullptr);
      PQflush(repl.raw());
    } catch (const Error& e) {
      spdlog::debug("postgres source: final status of slot {} not sent: {}", options.slotName, e.what());
    }
  }

  // Returns true when it sent a status update.
  bool handleFrame(Connection& repl, std::string_view bytes) {
    pgoutput::ServerFrame frame = pgoutput::decodeFrame(bytes);
    if (frame.kind == pgoutput::ServerFrame::Kind::kKeepalive) {
      if (!open) {
        std::lock_guard lock(mu);
        if (frame.walEnd > keepaliveFrontier) {
          keepaliveFrontier = frame.walEnd;
          changed.notify_all();
        }
      }
      if (frame.replyRequested) {
        sendStatus(repl);
        return true;
      }
      return false;
    }
    pgoutput::decodeMessage(frame.data, message);
    using Type = pgoutput::Message::Type;
    switch (message.type) {
      case Type::kBegin:
        open.emplace();
        openXid = message.xid;
        openCommitMs = message.commitTimeMicros / 1000;
        openFinalLsn = message.finalLsn;
        break;
      case Type::kRelation: {
        TableShape shape;
        shape.schema = message.relation.schema.empty() ? "pg_catalog" : message.relation.schema;
        shape.table = message.relation.name;
        shape.topic = options.topicPrefix + "." + shape.schema + "." + shape.table;
        shape.columns = message.relation.columns;
        relations[message.relation.oid] = internShape(std::move(shape));
        break;
      }
      case Type::kInsert:
      case Type::kUpdate:
      case Type::kDelete:
        change(frame.walStart);
        break;
      case Type::kTruncate:
        for (uint32_t oid : message.truncatedRelations) {
          const TableShape& shape = relation(oid);
          LogRecord& rec = newRecord(shape, frame.walStart);
          appendValue(rec, 't', shape, nullptr, nullptr, eventSource(frame.walStart));
          open->bytes += static_cast<int64_t>(rec.value.size());
        }
        break;
      case Type::kCommit: {
        if (!open) throw pgoutput::ProtocolError("pgoutput: Commit without Begin");
        Transaction tx = std::move(*open);
        open.reset();
        tx.endLsn = message.endLsn;
        tx.recordCount = tx.records.size();
        std::lock_guard lock(mu);
        if (tx.endLsn >= skipBefore && !tx.records.empty()) {
          bufferedBytes += tx.bytes;
          transactions.push_back(std::move(tx));
        }
        bufferFilled = bufferedBytes > options.maxBufferedBytes;
        dataFrontier = std::max(dataFrontier, message.endLsn);
        changed.notify_all();
        break;
      }
      case Type::kOrigin:
      case Type::kType:
      case Type::kLogicalMessage:
        break;
    }
    return false;
  }

  const TableShape& relation(uint32_t oid) const {
    auto it = relations.find(oid);
    if (it == relations.end()) throw pgoutput::ProtocolError("pgoutput: change for relation " + std::to_string(oid) + " before its Relation message");
    return *it->second;
  }

  detail::EventSource eventSource(uint64_t lsn) const {
    return {options.topicPrefix, database, openCommitMs, openXid, lsn, openFinalLsn, "false", processedMs};
  }

  LogRecord& newRecord(const TableShape& shape, uint64_t lsn) {
    if (!open) throw pgoutput::ProtocolError("pgoutput: change outside a transaction");
    // Several changes can share an LSN (a multi-row insert is one WAL record, a key change gives
    // two events): the partition number tells them apart, so that (topic, partition, offset)
    // stays unique for the dead-letter table.
    sameLsnIndex = lsn == lastChangeLsn ? sameLsnIndex + 1 : 0;
    lastChangeLsn = lsn;
    LogRecord& rec = open->records.emplace_back();
    rec.topic = shape.internedTopic;
    rec.partition = sameLsnIndex;
    rec.offset = static_cast<int64_t>(lsn);
    rec.timestamp = openCommitMs;
    rec.timestampType = TimestampType::kCreateTime;
    return rec;
  }

  void emit(char op, const TableShape& shape, const detail::Tuple* before, const detail::Tuple* after, uint64_t lsn) {
    LogRecord& rec = newRecord(shape, lsn);
    const detail::Tuple& keyTuple = after ? *after : *before;
    detail::appendKeyJson(shape, keyTuple, rec.key);
    rec.hasKey = true;
    appendValue(rec, op, shape, before, after, eventSource(lsn));
    open->bytes += static_cast<int64_t>(rec.key.size() + rec.value.size() + sizeof(LogRecord));
  }

  void change(uint64_t lsn) {
    const TableShape& shape = relation(message.relationOid);
    if (message.newTuple.size() > shape.columns.size() || message.oldTuple.size() > shape.columns.size()) {
      throw pgoutput::ProtocolError("pgoutput: a change of " + shape.topic + " has more columns than its Relation message");
    }
    using Type = pgoutput::Message::Type;
    if (message.type == Type::kInsert) {
      emit('c', shape, nullptr, &message.newTuple, lsn);
    } else if (message.type == Type::kDelete) {
      emit('d', shape, &message.oldTuple, nullptr, lsn);
    } else if (message.oldKind != 0 && keyChanged(shape)) {
      // A primary-key change: Debezium's delete of the old key, then a create of the new one.
      emit('d', shape, &message.oldTuple, nullptr, lsn);
      emit('c', shape, nullptr, &message.newTuple, lsn);
    } else {
      emit('u', shape, message.oldKind == 'O' ? &message.oldTuple : nullptr, &message.newTuple, lsn);
    }
  }

  bool keyChanged(const TableShape& shape) const {
    if (message.oldKind == 'K') return true;  // pgoutput sends the old key only when it changed
    for (size_t i = 0; i < shape.columns.size() && i < message.oldTuple.size() && i < message.newTuple.size(); ++i) {
      if (!shape.columns[i].key) continue;
      const auto& a = message.oldTuple[i];
      const auto& b = message.newTuple[i];
      if (a.kind != b.kind || a.bytes != b.bytes) return true;
    }
    return false;
  }

  // --- batches (driver and reading threads) ---------------------------------------------------

  void throwIfFatal() {
    if (fatal) std::rethrow_exception(fatal);
  }

  // Waits (under mu) until `ready`, at most readTimeout; then fails retriably saying what it
  // waited for and the stream's last error.
  template <class Ready>
  void awaitStream(std::unique_lock<std::mutex>& lock, Ready ready, const std::string& waitingFor) {
    auto deadline = Clock::now() + options.readTimeout;
    while (!ready()) {
      throwIfFatal();
      if (interrupted) {
        throw ReadInterrupted("postgres source: slot " + options.slotName + ": " + waitingFor +
                              " interrupted: the query is stopping");
      }
      if (changed.wait_until(lock, deadline) == std::cv_status::timeout) {
        throw ConnectorError("postgres source: slot " + options.slotName + ": " + waitingFor + " (waited " +
                                 std::to_string(options.readTimeout.count()) + " ms)" +
                                 (lastStreamError.empty() ? "" : "; last error: " + lastStreamError),
                             true);
      }
    }
  }

  // The stream's position a batch may end at now (under mu): everything received, and, while
  // idle, the server's position from keepalives, every idleAdvanceInterval or when the batch must
  // reach it (the server's position when the query started).
  uint64_t usableFrontier(uint64_t mustReach) {
    uint64_t usable = dataFrontier;
    if (keepaliveFrontier > usable &&
        (Clock::now() - lastIdleAdvance >= options.idleAdvanceInterval || mustReach > dataFrontier)) {
      usable = keepaliveFrontier;
    }
    return usable;
  }
};

ReplicationSource::ReplicationSource(ReplicationSourceOptions options) {
  options.validate();
  impl_ = std::make_unique<Impl>(std::move(options));
}

ReplicationSource::~ReplicationSource() { close(); }

const PartitionId& ReplicationSource::streamPartition() const { return impl_->stream; }
const PartitionId& ReplicationSource::snapshotPartition() const { return impl_->snapshotPart; }

std::string ReplicationSource::description() const {
  std::string tables;
  for (const auto& t : impl_->options.tables) tables += (tables.empty() ? "" : ",") + t;
  return "postgres-replication[slot=" + impl_->options.slotName + ", publication=" + impl_->options.publicationName +
         ", tables=" + tables + "]";
}

void ReplicationSource::open() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->interrupted = false;
  }
  impl_->checkServer();
}

void ReplicationSource::interrupt() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->interrupted = true;
  }
  impl_->changed.notify_all();
}

Offsets ReplicationSource::initialOffsets() { return impl_->initial(); }

void ReplicationSource::resumeFrom(const Offsets& next) { impl_->resume(next); }

void ReplicationSource::close() {
  if (!impl_) return;
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
    impl_->changed.notify_all();
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  std::lock_guard lock(impl_->snapshotMu);
  impl_->snapshotConn.reset();
  impl_->control.reset();
}

std::optional<int64_t> ReplicationSource::maxRecordsPerBatch() const {
  if (impl_->options.maxRecordsPerBatch == 0) return std::nullopt;
  return impl_->options.maxRecordsPerBatch;
}

Offsets ReplicationSource::latestOffsets() {
  Impl& m = *impl_;
  Offsets latest;
  {
    std::lock_guard lock(m.mu);
    m.throwIfFatal();
    uint64_t usable = m.usableFrontier(0);
    if (std::max(m.dataFrontier, m.keepaliveFrontier) >= m.catchUpLsn) m.catchUpLsn = 0;
    latest.set(m.stream, static_cast<int64_t>(std::max(usable, m.catchUpLsn)) + 1);
  }
  std::lock_guard lock(m.snapshotMu);
  latest.set(m.snapshotPart, kSnapshotComplete);
  return latest;
}

Offsets ReplicationSource::batchEnd(const Offsets& start, const Offsets& available, std::optional<int64_t> limit) {
  Impl& m = *impl_;
  Offsets end = start;
  const int64_t cap = limit.value_or(std::numeric_limits<int64_t>::max());
  int64_t taken = 0;
  // The stream: whole transactions, up to `cap` records (at least one transaction).
  if (int64_t from = start.get(m.stream, 0), target = available.get(m.stream, from); target > from) {
    std::unique_lock lock(m.mu);
    auto mustReach = static_cast<uint64_t>(target - 1);
    // Changes the server has but this process has not received yet (at start, or after a
    // restart): wait for some, so that an available-now run does not end before them.
    m.awaitStream(lock, [&] { return static_cast<int64_t>(m.usableFrontier(mustReach)) + 1 > from; },
                  "no change arrived although the server is at " + formatLsn(mustReach));
    int64_t cut = from;
    bool stopped = false;
    const int64_t byteCap = m.options.maxBytesPerBatch > 0 ? m.options.maxBytesPerBatch : std::numeric_limits<int64_t>::max();
    int64_t takenBytes = 0;
    for (const Transaction& tx : m.transactions) {
      auto txOffset = static_cast<int64_t>(tx.endLsn);
      if (txOffset < from) continue;
      if (txOffset >= target) break;
      auto n = static_cast<int64_t>(tx.recordCount);
      if (taken > 0 && (taken + n > cap || takenBytes + tx.bytes > byteCap)) {
        stopped = true;
        break;
      }
      taken += n;
      takenBytes += tx.bytes;
      cut = txOffset + 1;
    }
    if (!stopped) {
      uint64_t usable = m.usableFrontier(mustReach);
      if (usable > m.dataFrontier) m.lastIdleAdvance = Clock::now();
      cut = std::max(cut, std::min(target, static_cast<int64_t>(usable) + 1));
    }
    end.set(m.stream, cut);
  }
  // The snapshot: rows as fetched, then the jump to kSnapshotComplete in a batch of its own.
  if (int64_t from = start.get(m.snapshotPart, kSnapshotComplete), target = available.get(m.snapshotPart, from);
      from < kSnapshotComplete && target > from) {
    std::lock_guard lock(m.snapshotMu);
    int64_t want = std::max<int64_t>(1, limit ? std::min<int64_t>(cap, m.options.snapshotFetchRows) : m.options.snapshotFetchRows);
    int64_t rows = m.snapshotRowsFrom(from, want);
    if (rows > 0) {
      end.set(m.snapshotPart, std::min(target, from + std::min(rows, want)));
    } else if (m.snapshotExhausted) {
      end.set(m.snapshotPart, std::min(target, kSnapshotComplete));
      spdlog::info("postgres source: snapshot of slot {} read ({} rows)", m.options.slotName, from);
    }
  }
  return end;
}

void ReplicationSource::read(const PartitionId& partition, int64_t from, int64_t until, std::vector<LogRecord>& out) {
  Impl& m = *impl_;
  if (partition == m.snapshotPart) {
    std::lock_guard lock(m.snapshotMu);
    if (from >= kSnapshotComplete) return;
    int64_t last = until >= kSnapshotComplete ? from : until;  // the jump carries no rows
    if (last <= from) return;
    if (from < m.snapshotHandedOut) {
      // A retried batch: its rows moved into the failed attempt. Read them again, in a new snapshot.
      m.resetSnapshot();
      throw ConnectorError("postgres source: snapshot rows from " + std::to_string(from) + " are read again", true);
    }
    int64_t rows = m.snapshotRowsFrom(from, last - from);
    if (rows < last - from) {
      throw ConnectorError("postgres source: the snapshot of slot " + m.options.slotName + " has only " +
                               std::to_string(from + rows) + " rows, the batch needs " + std::to_string(last),
                           true);
    }
    for (int64_t i = from; i < last; ++i) out.push_back(std::move(m.snapshotRows[static_cast<size_t>(i - m.snapshotBase)]));
    m.snapshotHandedOut = last;
    return;
  }
  if (partition != m.stream) throw InternalError("postgres source: unknown partition " + partition.toString());
  std::unique_lock lock(m.mu);
  // After a restart the planned range is received again: wait for it.
  m.awaitStream(lock, [&] { return static_cast<int64_t>(std::max(m.dataFrontier, m.keepaliveFrontier)) + 1 >= until; },
                "the changes up to " + formatLsn(static_cast<uint64_t>(until - 1)) + " did not arrive");
  for (const Transaction& tx : m.transactions) {
    auto offset = static_cast<int64_t>(tx.endLsn);
    if (offset < from) continue;
    if (offset >= until) break;
    if (tx.handedOut) {
      // A retried batch: its records moved into the failed attempt. Receive them again.
      m.rewindRequested = true;
      m.changed.notify_all();
      throw ConnectorError("postgres source: slot " + m.options.slotName + ": changes up to " +
                               formatLsn(static_cast<uint64_t>(until - 1)) + " are received again for a retried batch",
                           true);
    }
  }
  for (Transaction& tx : m.transactions) {
    auto offset = static_cast<int64_t>(tx.endLsn);
    if (offset < from) continue;
    if (offset >= until) break;
    out.insert(out.end(), std::make_move_iterator(tx.records.begin()), std::make_move_iterator(tx.records.end()));
    tx.records = {};
    tx.handedOut = true;
    m.bufferedBytes -= tx.bytes;
    tx.bytes = 0;
  }
}

void ReplicationSource::onBatchCommitted(const Offsets& end) {
  Impl& m = *impl_;
  if (int64_t next = end.get(m.stream, 0); next > 0) {
    std::lock_guard lock(m.mu);
    while (!m.transactions.empty() && static_cast<int64_t>(m.transactions.front().endLsn) < next) {
      m.bufferedBytes -= m.transactions.front().bytes;
      m.transactions.pop_front();
    }
    auto committed = static_cast<uint64_t>(next - 1);
    m.skipBefore = std::max(m.skipBefore, static_cast<uint64_t>(next));
    if (committed > m.confirmed) {
      m.confirmed = committed;
      m.confirmPending = true;
      m.changed.notify_all();
    }
  }
  if (int64_t next = end.get(m.snapshotPart, kSnapshotComplete); next > 0) {
    std::lock_guard lock(m.snapshotMu);
    if (next >= kSnapshotComplete) {
      m.snapshotRows.clear();
      m.snapshotComplete = true;
    } else {
      while (!m.snapshotRows.empty() && m.snapshotBase < next) {
        m.snapshotRows.pop_front();
        ++m.snapshotBase;
      }
    }
  }
}

SourceMetrics ReplicationSource::metrics(const Offsets& /*end*/, const Offsets& /*latest*/) {
  Impl& m = *impl_;
  SourceMetrics out;
  {
    std::lock_guard lock(m.mu);
    out.emplace_back("bufferedTransactions", std::to_string(m.transactions.size()));
    out.emplace_back("bufferedBytes", std::to_string(m.bufferedBytes));
    out.emplace_back("receivedLsn", "\"" + formatLsn(std::max(m.dataFrontier, m.keepaliveFrontier)) + "\"");
    out.emplace_back("confirmedLsn", "\"" + formatLsn(m.confirmed) + "\"");
  }
  std::lock_guard lock(m.snapshotMu);
  out.emplace_back("snapshotComplete", m.snapshotComplete ? "true" : "false");
  return out;
}

}  // namespace dataflow::postgres
