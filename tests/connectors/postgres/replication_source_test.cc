// The direct replication source against a real PostgreSQL 15 with wal_level=logical (label:
// postgres): its events against the ones Debezium 3.6.1 wrote for the same statements (the golden
// files), the seam between the snapshot and the stream under concurrent writes, restarts that
// confirm only what was committed, a terminated walsender, a dropped slot, a large transaction.
#include <dataflow/dataflow.h>
#include <dataflow/debezium/change_event.h>
#include <dataflow/postgres/replication_source.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "testing/postgres.h"

namespace dataflow::postgres {
namespace {

using testing_util::freshDatabase;

// A record as a test keeps it (the source's topic views do not outlive it).
struct Event {
  std::string topic, key, value;
  int32_t partition;
  int64_t offset;
};

ConnectionConfig configFor(const std::string& url) {
  ConnectionConfig c;
  c.conninfo = url;
  return c;
}

// A fresh database; slots left in it by an earlier run are dropped first (they block DROP DATABASE).
std::string freshSourceDatabase(const std::string& name) {
  auto admin = Connection::open(configFor(testing_util::adminUrl()));
  admin.execParams("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active", {name});
  for (int i = 0; i < 50; ++i) {
    if (admin.execParams("SELECT 1 FROM pg_replication_slots WHERE database = $1 AND active", {name}).rows() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  admin.execParams("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1", {name});
  return freshDatabase(name);
}

// A compact record (ReplicationSourceOptions::compactValues) reads as the JSON it renders.
void expectEnvelopeOfItsJson(const LogRecord& r, const std::string& json) {
  const auto* codec = dynamic_cast<const debezium::EventCodec*>(r.codec);
  ASSERT_NE(codec, nullptr);
  auto compact = codec->envelope(r);
  auto parsed = debezium::detail::parseEnvelope(json);
  ASSERT_TRUE(compact.ok() && parsed.ok()) << json;
  EXPECT_EQ(compact.value().op, parsed.value().op);
  EXPECT_EQ(compact.value().source.lsn, parsed.value().source.lsn);
  EXPECT_EQ(compact.value().source.table, parsed.value().source.table);
  ASSERT_EQ(compact.value().after == nullptr, parsed.value().after == nullptr);
  if (compact.value().after) {
    EXPECT_EQ(compact.value().after->fields.size(), parsed.value().after->fields.size());
  }
}

class ReplicationSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_POSTGRES();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string name = std::string("repl_") + info->name();
    for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    url_ = freshSourceDatabase(name);
    slot_ = name.substr(0, 63);  // slot names are the cluster's, not the database's
    db_.emplace(Connection::open(configFor(url_)));
    dir_ = std::filesystem::temp_directory_path() / ("dataflow-" + name + "-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
    // A slot keeps WAL and takes one of max_replication_slots: none outlives its test.
    if (db_) db_->execParams("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", {slot_});
  }

  ReplicationSourceOptions options(std::vector<std::string> tables) {
    ReplicationSourceOptions o;
    o.connection = configFor(url_);
    o.tables = std::move(tables);
    o.slotName = slot_;
    o.readTimeout = std::chrono::milliseconds(30000);
    return o;
  }

  // Runs the source in a query until it has read what exists now (Trigger.AvailableNow), with a
  // directory checkpoint that persists between calls; returns the events in order.
  std::vector<Event> drain(const ReplicationSourceOptions& o, std::vector<int64_t>* batchSizes = nullptr) {
    Session session({.workerThreads = 2});
    std::vector<Event> events;
    auto q = session.readStream(std::make_shared<ReplicationSource>(o))
                 .writeStream()
                 .queryName("replication-test")
                 .checkpoint(directoryCheckpoint(dir_))
                 .trigger(Trigger::availableNow())
                 .foreachBatch([&](const Batch<LogRecord>& batch, const BatchInfo&) {
                   for (const auto& r : batch.rows()) {
                     events.push_back({std::string(r.topic), r.key, r.valueBytes(), r.partition, r.offset});
                     if (r.codec) expectEnvelopeOfItsJson(r, events.back().value);
                   }
                   if (batchSizes) batchSizes->push_back(static_cast<int64_t>(batch.numRows()));
                 })
                 .start();
    q.awaitTermination();
    return events;
  }

  void expectGoldenEvents(bool compact);

  uint64_t confirmedFlush() {
    auto r = db_->execParams("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", {slot_});
    return r.rows() ? parseLsn(r.value(0, 0)) : 0;
  }

  std::string url_, slot_;
  std::optional<Connection> db_;
  std::filesystem::path dir_;
};

boost::json::object payloadOf(const std::string& value) { return boost::json::parse(value).as_object(); }

// The same statements as tests/stack/capture_golden.sh, whose Debezium events (string decimals,
// schemas off) are in tests/data/debezium/plain-golden_types.jsonl.
// Runs tests/stack/capture_golden.sh's statements through the source (as JSON or in the compact
// form) and compares its events with Debezium's.
void ReplicationSourceTest::expectGoldenEvents(bool compact) {
  db_->exec("CREATE TABLE public.golden_types (id bigint PRIMARY KEY, flag boolean, small smallint, big bigint, "
            "ratio double precision, price numeric(12,2), exact numeric(20,4), anyscale numeric, day date, at_time time, "
            "ts timestamp, ts_ms timestamp(3), tstz timestamptz, payload jsonb, uid uuid, raw bytea, note text)");
  db_->exec("INSERT INTO public.golden_types VALUES (1, true, 7, 9007199254740993, 0.25, 30.50, 22.2200, 3.14159, "
            "'2024-02-29', '13:45:30.123456', '2024-02-29 13:45:30.123456', '2024-02-29 13:45:30.123', "
            "'2024-02-29 13:45:30.123456+02', '{\"a\": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
            "'\\xdeadbeef', 'snapshot row')");
  auto o = options({"public.golden_types"});
  o.topicPrefix = "gplain";
  o.compactValues = compact;
  auto events = drain(o);
  db_->exec("INSERT INTO public.golden_types VALUES (2, false, -7, -1, -0.5, -1.10, 0, 0, '1970-01-01', '00:00:00', "
            "'1970-01-01 00:00:00', '1970-01-01 00:00:00', 'infinity', 'null', NULL, '', repeat('x', 3000))");
  db_->exec("UPDATE public.golden_types SET note = 'updated', price = 1234567890.12 WHERE id = 1");
  db_->exec("DELETE FROM public.golden_types WHERE id = 2");
  auto more = drain(o);
  events.insert(events.end(), more.begin(), more.end());

  std::ifstream golden(std::string(DATAFLOW_TEST_DATA) + "/debezium/plain-golden_types.jsonl");
  std::vector<boost::json::object> expected;
  for (std::string line; std::getline(golden, line);) {
    auto record = boost::json::parse(line).as_object();
    if (record["payload"].is_null()) continue;  // Debezium's tombstone: the direct source sends none
    expected.push_back(record);
  }
  ASSERT_EQ(events.size(), expected.size());
  for (size_t i = 0; i < events.size(); ++i) {
    SCOPED_TRACE("event " + std::to_string(i));
    auto want = boost::json::parse(expected[i]["payload"].as_string()).as_object();
    auto got = payloadOf(events[i].value);
    EXPECT_EQ(events[i].topic, expected[i]["topic"].as_string());
    EXPECT_EQ(boost::json::parse(events[i].key), boost::json::parse(expected[i]["key"].as_string()));
    EXPECT_EQ(got["op"], want["op"]);
    EXPECT_EQ(got["before"], want["before"]) << events[i].value;
    EXPECT_EQ(got["after"], want["after"]) << events[i].value;
    EXPECT_EQ(got["source"].as_object()["table"], want["source"].as_object()["table"]);
  }
}

TEST_F(ReplicationSourceTest, EventsMatchWhatDebeziumWroteForTheSameStatements) { expectGoldenEvents(false); }

// The compact form renders the same events, and reads as them without JSON.
TEST_F(ReplicationSourceTest, CompactEventsMatchWhatDebeziumWroteForTheSameStatements) { expectGoldenEvents(true); }

// Folds events as the warehouse does: per key, the newest source.lsn wins (a later event on a tie).
std::map<int64_t, std::optional<int64_t>> fold(const std::vector<Event>& events) {
  std::map<int64_t, std::pair<int64_t, std::optional<int64_t>>> rows;  // id -> (lsn, value or deleted)
  for (const auto& e : events) {
    auto v = payloadOf(e.value);
    int64_t lsn = v["source"].as_object()["lsn"].as_int64();
    std::string op(v["op"].as_string());
    const auto& image = (op == "d" ? v["before"] : v["after"]).as_object();
    int64_t id = image.at("id").as_int64();
    std::optional<int64_t> value;
    if (op != "d") value = image.at("val").as_int64();
    auto it = rows.find(id);
    if (it == rows.end() || it->second.first <= lsn) rows[id] = {lsn, value};
  }
  std::map<int64_t, std::optional<int64_t>> out;
  for (const auto& [id, row] : rows) {
    if (row.second) out[id] = row.second;
  }
  return out;
}

TEST_F(ReplicationSourceTest, SnapshotAndStreamMeetWithoutAGapUnderConcurrentWrites) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 20000) g");
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    auto c = Connection::open(configFor(url_));
    std::mt19937_64 rng(7);
    int64_t next = 20001;
    while (!stop) {
      int64_t id = static_cast<int64_t>(rng() % 20000) + 1;
      switch (rng() % 3) {
        case 0: c.exec("UPDATE public.items SET val = val + 1000000 WHERE id = " + std::to_string(id)); break;
        case 1: c.exec("DELETE FROM public.items WHERE id = " + std::to_string(id)); break;
        default: c.exec("INSERT INTO public.items VALUES (" + std::to_string(next) + ", " + std::to_string(next) + ")"); ++next;
      }
    }
  });
  auto o = options({"public.items"});
  o.snapshotFetchRows = 1000;  // many snapshot batches while the writer runs
  o.maxRecordsPerBatch = 2000;
  std::vector<Event> events;
  try {
    events = drain(o);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  } catch (...) {
    stop = true;
    writer.join();
    throw;
  }
  stop = true;
  writer.join();
  auto more = drain(o);
  events.insert(events.end(), more.begin(), more.end());

  std::map<int64_t, std::optional<int64_t>> source;
  auto r = db_->exec("SELECT id, val FROM public.items");
  for (int i = 0; i < r.rows(); ++i) source[r.int64(i, 0)] = r.int64(i, 1);
  auto folded = fold(events);
  EXPECT_EQ(folded.size(), source.size());
  EXPECT_TRUE(folded == source);
  // Every snapshot row once.
  std::set<std::string> readKeys;
  int64_t reads = 0;
  for (const auto& e : events) {
    if (payloadOf(e.value)["op"] != "r") continue;
    ++reads;
    readKeys.insert(e.key);
  }
  EXPECT_EQ(reads, static_cast<int64_t>(readKeys.size()));
  EXPECT_GT(reads, 10000);
}

TEST_F(ReplicationSourceTest, RestartsFromTheCommittedPositionAndConfirmsNothingBeyondIt) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.snapshot = false;
  EXPECT_TRUE(drain(o).empty());
  uint64_t afterFirst = confirmedFlush();
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 100) g");
  db_->exec("UPDATE public.items SET val = -val WHERE id <= 10");
  // Nothing read yet: the slot still holds the changes.
  EXPECT_EQ(confirmedFlush(), afterFirst);
  auto events = drain(o);
  EXPECT_EQ(events.size(), 110u);
  uint64_t afterSecond = confirmedFlush();
  for (int i = 0; i < 50 && afterSecond == afterFirst; ++i) {  // the server applies the last status asynchronously
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    afterSecond = confirmedFlush();
  }
  EXPECT_GT(afterSecond, afterFirst);
  // The checkpoint committed at least what the slot confirmed.
  auto offsets = directoryCheckpoint(dir_)->latestOffsets();
  ASSERT_TRUE(offsets.has_value());
  int64_t committed = offsets->sources[0].end.get(PartitionId{slot_, 0}, 0);
  EXPECT_LE(afterSecond, static_cast<uint64_t>(committed - 1));
  // A restart reads nothing again.
  EXPECT_TRUE(drain(o).empty());
  db_->exec("DELETE FROM public.items WHERE id = 1");
  auto last = drain(o);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(payloadOf(last[0].value)["op"], "d");
}

// Runs the source live until `done` says so (or 30 s pass); returns what it read.
template <class Done>
std::vector<Event> runLive(const ReplicationSourceOptions& o, const std::filesystem::path& dir, Done done) {
  Session session({.workerThreads = 2});
  std::mutex mu;
  std::vector<Event> events;
  auto q = session.readStream(std::make_shared<ReplicationSource>(o))
               .writeStream()
               .queryName("replication-test")
               .checkpoint(directoryCheckpoint(dir))
               .foreachBatch([&](const Batch<LogRecord>& batch, const BatchInfo&) {
                 std::lock_guard lock(mu);
                 for (const auto& r : batch.rows()) {
                   events.push_back({std::string(r.topic), r.key, r.valueBytes(), r.partition, r.offset});
                   if (r.codec) expectEnvelopeOfItsJson(r, events.back().value);
                 }
               })
               .start();
  for (int i = 0; i < 300; ++i) {
    {
      std::lock_guard lock(mu);
      if (done(events)) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  q.stop();
  q.awaitTermination();
  return events;
}

TEST_F(ReplicationSourceTest, ATerminatedWalsenderIsReconnectedWithoutLossOrDuplicates) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.compactValues = true;  // a reconnect sends every Relation again: compact records keep their shapes
  o.snapshot = false;
  drain(o);  // the slot, before the first change
  std::thread writer([&] {
    auto c = Connection::open(configFor(url_));
    for (int i = 0; i < 40; ++i) {
      c.exec("INSERT INTO public.items SELECT g, g FROM generate_series(" + std::to_string(i * 50 + 1) + ", " +
             std::to_string(i * 50 + 50) + ") g");
      if (i % 10 == 5) {
        c.execParams("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                     {o.slotName});
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto events = runLive(o, dir_, [](const std::vector<Event>& e) { return e.size() >= 2000; });
  writer.join();
  std::set<std::string> keys;
  for (const auto& e : events) keys.insert(e.key);
  EXPECT_EQ(events.size(), 2000u);
  EXPECT_EQ(keys.size(), 2000u);
}

// Batches that stop reading (a warehouse away) make the source let go of the server once its
// buffer is full, and take up again where it was when they read again: nothing lost or doubled.
TEST_F(ReplicationSourceTest, AStuckConsumerLetsGoOfTheServerAndResumes) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.snapshot = false;
  o.maxBufferedBytes = 20000;                         // a few dozen changes
  o.readTimeout = std::chrono::milliseconds(2400);  // disconnect after 200 ms stuck
  drain(o);
  Session session({.workerThreads = 2});
  std::mutex mu;
  std::vector<Event> events;
  std::atomic<bool> stuck{true};
  auto q = session.readStream(std::make_shared<ReplicationSource>(o))
               .writeStream()
               .queryName("replication-test")
               .checkpoint(directoryCheckpoint(dir_))
               .foreachBatch([&](const Batch<LogRecord>& batch, const BatchInfo&) {
                 while (stuck && batch.numRows() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
                 std::lock_guard lock(mu);
                 for (const auto& r : batch.rows()) {
                   events.push_back({std::string(r.topic), r.key, r.valueBytes(), r.partition, r.offset});
                   if (r.codec) expectEnvelopeOfItsJson(r, events.back().value);
                 }
               })
               .start();
  for (int i = 0; i < 200; ++i) db_->exec("INSERT INTO public.items VALUES (" + std::to_string(i + 1) + ", 0)");
  bool released = false;
  for (int i = 0; i < 100 && !released; ++i) {  // the walsender is gone while the batch is stuck
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    released = db_->execParams("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active", {slot_}).rows() == 0;
  }
  stuck = false;
  for (int i = 0; i < 300; ++i) {
    {
      std::lock_guard lock(mu);
      if (events.size() >= 200) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  q.stop();
  q.awaitTermination();
  EXPECT_TRUE(released);
  std::set<std::string> keys;
  for (const auto& e : events) keys.insert(e.key);
  EXPECT_EQ(events.size(), 200u);
  EXPECT_EQ(keys.size(), 200u);
}

TEST_F(ReplicationSourceTest, AnIdleSourceStillAdvancesItsSlot) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  db_->exec("CREATE TABLE public.elsewhere (id bigint)");
  auto o = options({"public.items"});
  o.snapshot = false;
  o.idleAdvanceInterval = std::chrono::milliseconds(200);
  drain(o);
  uint64_t before = confirmedFlush();
  // WAL the slot has no interest in: without a confirmation, the server would keep it.
  for (int i = 0; i < 20; ++i) db_->exec("INSERT INTO public.elsewhere SELECT g FROM generate_series(1, 1000) g");
  uint64_t written = parseLsn(db_->exec("SELECT pg_current_wal_lsn()::text").value(0, 0));
  auto events = runLive(o, dir_, [&](const std::vector<Event>&) { return confirmedFlush() >= written; });
  EXPECT_TRUE(events.empty());
  EXPECT_GE(confirmedFlush(), written) << "confirmed " << formatLsn(confirmedFlush()) << ", was " << formatLsn(before);
}

TEST_F(ReplicationSourceTest, AColumnAddedMidStreamAppearsInTheEvents) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.compactValues = true;  // records of three shapes of the table, each rendered with its own
  o.snapshot = false;
  drain(o);
  db_->exec("INSERT INTO public.items VALUES (1, 1)");
  db_->exec("ALTER TABLE public.items ADD COLUMN note text");
  db_->exec("INSERT INTO public.items VALUES (2, 2, 'new column')");
  db_->exec("ALTER TABLE public.items DROP COLUMN val");
  db_->exec("INSERT INTO public.items VALUES (3, 'val dropped')");
  auto events = drain(o);
  ASSERT_EQ(events.size(), 3u);
  auto after = [&](size_t i) { return payloadOf(events[i].value)["after"].as_object(); };
  EXPECT_FALSE(after(0).contains("note"));
  EXPECT_EQ(after(1)["note"], "new column");
  EXPECT_EQ(after(1)["val"], 2);
  EXPECT_FALSE(after(2).contains("val"));
  EXPECT_EQ(after(2)["note"], "val dropped");
}

// Records move into the batch that reads them; a batch that fails and is retried reads its
// snapshot rows and changes again (a new snapshot, the stream from the committed position).
TEST_F(ReplicationSourceTest, ARetriedBatchReadsItsRecordsAgain) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 500) g");
  auto o = options({"public.items"});
  o.snapshotFetchRows = 200;
  o.maxRecordsPerBatch = 200;
  Session session({.workerThreads = 2});
  std::vector<Event> events;
  int failures = 0;
  bool failNext = true;
  auto run = [&] {
    auto q = session.readStream(std::make_shared<ReplicationSource>(o))
                 .writeStream()
                 .queryName("replication-test")
                 .checkpoint(directoryCheckpoint(dir_))
                 .option("retry.initialBackoffMs", "1")
                 .trigger(Trigger::availableNow())
                 .foreachBatch([&](const Batch<LogRecord>& batch, const BatchInfo&) {
                   if (batch.numRows() > 0 && failNext) {
                     failNext = false;  // every other batch with rows fails once
                     ++failures;
                     throw ConnectorError("the warehouse is away", true);
                   }
                   if (batch.numRows() > 0) failNext = true;
                   for (const auto& r : batch.rows()) {
                     events.push_back({std::string(r.topic), r.key, r.valueBytes(), r.partition, r.offset});
                     if (r.codec) expectEnvelopeOfItsJson(r, events.back().value);
                   }
                 })
                 .start();
    q.awaitTermination();
  };
  run();
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(501, 1000) g");
  for (int i = 0; i < 5; ++i) db_->exec("UPDATE public.items SET val = -val WHERE id % 5 = " + std::to_string(i));
  run();
  EXPECT_GE(failures, 4);
  auto folded = fold(events);
  ASSERT_EQ(folded.size(), 1000u);
  for (const auto& [id, val] : folded) EXPECT_EQ(val, -id) << id;
  std::set<std::string> reads;
  int64_t readEvents = 0;
  for (const auto& e : events) {
    if (payloadOf(e.value)["op"] != "r") continue;
    ++readEvents;
    reads.insert(e.key);
  }
  EXPECT_EQ(readEvents, 500);
  EXPECT_EQ(reads.size(), 500u);
  EXPECT_EQ(events.size(), 500u + 500u + 1000u);  // each record in one successful batch
}

// The same at the source's own interface: a range of the stream read twice gives the same
// records, the second time after receiving them again from the server; a range of the snapshot
// gives as many rows again, from a new snapshot (which the LSN guard reconciles with the stream).
TEST_F(ReplicationSourceTest, ARangeReadTwiceGivesTheSameRecords) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 300) g");
  auto o = options({"public.items"});
  ReplicationSource source(o);
  source.open();
  Offsets start = source.initialOffsets();
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(301, 400) g");
  db_->exec("UPDATE public.items SET val = 0 WHERE id <= 10");
  Offsets end;
  for (int i = 0; i < 100; ++i) {  // until both inserts have arrived
    end = source.batchEnd(start, source.latestOffsets(), std::nullopt);
    std::vector<LogRecord> probe;
    if (end.get(source.streamPartition(), 0) > start.get(source.streamPartition(), 0)) {
      if (end.get(source.streamPartition(), 0) - 1 >= static_cast<int64_t>(parseLsn(db_->exec("SELECT pg_current_wal_lsn()::text").value(0, 0))) - 4096)
        break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto readPartition = [&](const PartitionId& p) {
    std::vector<std::string> values;
    std::vector<LogRecord> out;
    source.read(p, start.get(p, 0), end.get(p, 0), out);
    for (auto& r : out) values.push_back(r.key + std::string(payloadOf(r.value)["op"].as_string()) + r.value.substr(0, r.value.find("\"source\"")));
    return values;
  };
  auto readAgain = [&](const PartitionId& p) {
    EXPECT_THROW(readPartition(p), ConnectorError);  // handed out: read again
    for (int i = 0; i < 100; ++i) {
      try {
        return readPartition(p);
      } catch (const ConnectorError&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    }
    return std::vector<std::string>{};
  };
  auto changes = readPartition(source.streamPartition());
  EXPECT_EQ(changes.size(), 100u + 10u);
  EXPECT_EQ(readAgain(source.streamPartition()), changes);
  auto rows = readPartition(source.snapshotPartition());
  EXPECT_EQ(rows.size(), 300u);
  EXPECT_EQ(readAgain(source.snapshotPartition()).size(), 300u);
  source.close();
}

// A batch waiting for changes it knows exist (here a range the stream has not reached) waits up to
// readTimeout; interrupt() (the query is stopping) ends the wait at once with ReadInterrupted.
TEST_F(ReplicationSourceTest, InterruptEndsAReadWaitingForTheStream) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.readTimeout = std::chrono::minutes(10);  // far beyond the bound below: only the interrupt ends the wait
  ReplicationSource source(o);
  source.open();
  Offsets start = source.initialOffsets();
  const PartitionId& p = source.streamPartition();
  const int64_t from = start.get(p, 0);
  const int64_t beyond = from + (int64_t{1} << 30);  // 1 GiB of WAL ahead of the stream
  std::vector<LogRecord> out;
  std::thread interrupter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    source.interrupt();
  });
  auto started = std::chrono::steady_clock::now();
  EXPECT_THROW(source.read(p, from, beyond, out), ReadInterrupted);
  interrupter.join();
  EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(60)) << "the read ran into its timeout";
  EXPECT_TRUE(out.empty());
  source.close();
}

TEST_F(ReplicationSourceTest, ADroppedSlotIsReportedClearly) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  drain(o);
  // The walsender of the run above may take a moment to exit.
  for (int i = 0; i < 100; ++i) {
    if (db_->execParams("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active", {slot_}).rows() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  db_->execParams("SELECT pg_drop_replication_slot($1)", {slot_});
  try {
    drain(o);
    FAIL() << "expected an error";
  } catch (const ConnectorError& e) {
    EXPECT_FALSE(e.retriable());
    EXPECT_NE(std::string(e.what()).find("replication slot " + slot_ + " does not exist"), std::string::npos) << e.what();
  }
}

TEST_F(ReplicationSourceTest, BadSetupFailsFastNamingTheFix) {
  auto o = options({"public.nowhere"});
  try {
    drain(o);
    FAIL() << "expected an error";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("public.nowhere does not exist"), std::string::npos) << e.what();
  }
  // A role without REPLICATION: the fix is named.
  db_->exec("DO $$ BEGIN CREATE ROLE dataflow_norepl LOGIN PASSWORD 'norepl'; EXCEPTION WHEN duplicate_object THEN NULL; END $$");
  db_->exec("GRANT SELECT ON ALL TABLES IN SCHEMA public TO dataflow_norepl");
  auto norepl = options({"public.customers"});
  const auto scheme = url_.find("://") + 3;
  norepl.connection.conninfo = url_.substr(0, scheme) + "dataflow_norepl:norepl@" + url_.substr(url_.find('@') + 1);
  std::filesystem::remove_all(dir_);
  try {
    drain(norepl);
    FAIL() << "expected an error";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("ALTER ROLE dataflow_norepl REPLICATION"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir_);
  db_->exec("CREATE TABLE public.a (id int PRIMARY KEY)");
  db_->exec("CREATE TABLE public.b (id int PRIMARY KEY)");
  db_->exec("CREATE PUBLICATION only_a FOR TABLE public.a");
  o = options({"public.a", "public.b"});
  o.publicationName = "only_a";
  try {
    drain(o);
    FAIL() << "expected an error";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("ALTER PUBLICATION \"only_a\" ADD TABLE \"public\".\"b\""), std::string::npos) << e.what();
  }
}

TEST_F(ReplicationSourceTest, ALargeTransactionIsOneBatchAndNothingIsSplit) {
  db_->exec("CREATE TABLE public.items (id bigint PRIMARY KEY, val bigint NOT NULL)");
  auto o = options({"public.items"});
  o.snapshot = false;
  o.maxRecordsPerBatch = 1000;
  drain(o);
  db_->exec("INSERT INTO public.items SELECT g, g FROM generate_series(1, 100000) g");
  db_->exec("INSERT INTO public.items VALUES (100001, 1)");
  db_->exec("INSERT INTO public.items VALUES (100002, 1)");
  std::vector<int64_t> sizes;
  auto events = drain(o, &sizes);
  EXPECT_EQ(events.size(), 100002u);
  ASSERT_FALSE(sizes.empty());
  EXPECT_EQ(sizes.front(), 100000);  // the transaction whole, over the batch limit
  // Every event has a position of its own (the dead-letter table's key).
  std::set<std::pair<int32_t, int64_t>> positions;
  for (const auto& e : events) positions.emplace(e.partition, e.offset);
  EXPECT_EQ(positions.size(), events.size());
}

// A byte budget ends a batch at whole transactions too: 300 single-row transactions with 2 kB
// values, 64 kB a batch, make batches of at most 32 of them (each a little over 2 kB as an event).
TEST_F(ReplicationSourceTest, MaxBytesPerBatchEndsBatchesAtTheBudget) {
  db_->exec("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text NOT NULL)");
  auto o = options({"public.notes"});
  o.snapshot = false;
  o.maxBytesPerBatch = 64 * 1024;
  drain(o);
  for (int i = 0; i < 300; ++i) db_->exec("INSERT INTO public.notes VALUES (" + std::to_string(i) + ", repeat('x', 2000))");
  std::vector<int64_t> sizes;
  auto events = drain(o, &sizes);
  EXPECT_EQ(events.size(), 300u);
  ASSERT_GE(sizes.size(), 300u / 32);
  // (A batch may hold fewer: it takes what has arrived when it is planned.)
  for (size_t b = 0; b < sizes.size(); ++b) EXPECT_LE(sizes[b], 32) << "batch " << b;
  EXPECT_GE(*std::max_element(sizes.begin(), sizes.end()), 20);
}

}  // namespace
}  // namespace dataflow::postgres
