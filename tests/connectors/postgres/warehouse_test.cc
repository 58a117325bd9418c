// The warehouse sink, the dead-letter table and the checkpoint store against a real PostgreSQL
// (label: postgres).
#include <dataflow/dataflow.h>
#include <dataflow/postgres/checkpoint_store.h>
#include <dataflow/postgres/warehouse.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <thread>

#include "testing/postgres.h"

namespace dataflow::postgres {
namespace {

using testing_util::freshDatabase;

ConnectionConfig configFor(const std::string& url) {
  ConnectionConfig c;
  c.conninfo = url;
  return c;
}

const UpsertTableOptions kCustomers{.table = "public.dim_customers",
                                    .keyColumns = {"customer_id"},
                                    .valueColumns = {"email", "country"},
                                    .softDeleteColumn = "is_deleted",
                                    .insertOnlyColumns = {"first_seen_at"},
                                    .touchColumns = {"last_seen_at"}};

UpsertRow row(int64_t id, std::optional<std::string> email, std::optional<std::string> country, int64_t lsn,
              bool deleted = false) {
  return UpsertRow{{std::to_string(id), std::move(email), std::move(country)}, lsn, deleted};
}

BatchInfo info(int64_t batchId, const std::string& query = "test") {
  BatchInfo i;
  i.batchId = batchId;
  i.queryName = query;
  return i;
}

struct Customer {
  std::optional<std::string> email, country;
  bool deleted;
  int64_t lsn;
  bool operator==(const Customer&) const = default;
};

std::map<int64_t, Customer> readCustomers(Connection& c) {
  std::map<int64_t, Customer> out;
  auto r = c.exec("SELECT customer_id, email, country, is_deleted, source_lsn FROM dim_customers");
  for (int i = 0; i < r.rows(); ++i) {
    out[r.int64(i, 0)] = {r.optionalValue(i, 1), r.optionalValue(i, 2), r.value(i, 3) == "t", r.int64(i, 4)};
  }
  return out;
}

class WarehouseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_POSTGRES();
    url_ = freshDatabase("wh_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()).substr(0, 40));
    check_.emplace(Connection::open(configFor(url_)));
  }
  void write(Warehouse& w, int64_t batch, std::vector<UpsertRow> rows) {
    UpsertTable table(kCustomers);
    w.writeBatch(info(batch), [&](WarehouseTransaction& tx) { tx.upsert(table, rows); });
  }
  std::string url_;
  std::optional<Connection> check_;
};

TEST_F(WarehouseTest, InsertUpdateAndSoftDelete) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(1, "a@x", "US", 100), row(2, "b@x", "DE", 101)});
  write(w, 1, {row(1, "a@x", "CA", 200)});
  write(w, 2, {row(2, std::nullopt, std::nullopt, 300, true)});
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows[1], (Customer{"a@x", "CA", false, 200}));
  EXPECT_EQ(rows[2], (Customer{"b@x", "DE", true, 300})) << "a delete keeps the last known values";
  auto seen = check_->exec("SELECT first_seen_at < last_seen_at FROM dim_customers WHERE customer_id = 1");
  EXPECT_EQ(seen.value(0, 0), "t") << "first_seen_at is kept, last_seen_at refreshed";
}

TEST_F(WarehouseTest, SeveralChangesToOneKeyInABatchKeepTheNewest) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(1, "a@x", "US", 100), row(1, "a@x", "FR", 300), row(1, "a@x", "DE", 200)});
  EXPECT_EQ(readCustomers(*check_)[1].country, "FR");
}

TEST_F(WarehouseTest, OutOfOrderAndReplayedChangesNeverOverwriteNewerRows) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(1, "a@x", "CA", 500)});
  write(w, 1, {row(1, "a@x", "US", 400)});  // older
  write(w, 2, {row(1, "a@x", "MX", 500)});  // same version: a replay
  EXPECT_EQ(readCustomers(*check_)[1], (Customer{"a@x", "CA", false, 500}));
  write(w, 3, {row(1, std::nullopt, std::nullopt, 600, true)});
  write(w, 4, {row(1, "a@x", "US", 550)});  // an older insert must not resurrect the row
  EXPECT_TRUE(readCustomers(*check_)[1].deleted);
}

TEST_F(WarehouseTest, DeleteOfAnUnknownKeyAndReinsertAfterDelete) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(7, std::nullopt, std::nullopt, 100, true)});
  EXPECT_EQ(readCustomers(*check_)[7], (Customer{std::nullopt, std::nullopt, true, 100}));
  write(w, 1, {row(7, "new@x", "SE", 200)});
  EXPECT_EQ(readCustomers(*check_)[7], (Customer{"new@x", "SE", false, 200}));
}

TEST_F(WarehouseTest, HostileValuesAreStoredVerbatim) {
  Warehouse w({.connection = configFor(url_)});
  std::string evil = "\"; DROP TABLE fact_orders; -- 'quoted' \\ back\tslash\nnew line";
  write(w, 0, {row(1, evil, "O'Brien;", 1)});
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows[1].email, evil);
  EXPECT_EQ(rows[1].country, "O'Brien;");
  EXPECT_EQ(check_->exec("SELECT count(*) FROM fact_orders").int64(0, 0), 0);  // still there
}

TEST_F(WarehouseTest, HostileIdentifiersAreQuoted) {
  std::string table = "we\"ird; DROP TABLE dim_customers; --";
  check_->exec("CREATE TABLE " + check_->quoteIdentifier(table) +
               " (id bigint PRIMARY KEY, \"va;lue\" text, source_lsn bigint NOT NULL)");
  Warehouse w({.connection = configFor(url_)});
  UpsertTable t({.table = table, .keyColumns = {"id"}, .valueColumns = {"va;lue"}});
  w.writeBatch(info(0), [&](WarehouseTransaction& tx) { tx.upsert(t, std::vector<UpsertRow>{UpsertRow{{"1", "x"}, 1, false}}); });
  EXPECT_EQ(check_->exec("SELECT \"va;lue\" FROM " + check_->quoteIdentifier(table)).value(0, 0), "x");
  EXPECT_EQ(check_->exec("SELECT to_regclass('dim_customers') IS NOT NULL").value(0, 0), "t");
  EXPECT_THROW(UpsertTable({.table = "t", .keyColumns = {}}), ConfigurationError);
  EXPECT_THROW(UpsertTable({.table = "t", .keyColumns = {"a"}, .valueColumns = {"a"}}), ConfigurationError);
}

TEST_F(WarehouseTest, DeadLettersKeepExactBytesAndAreNotDuplicatedOnReplay) {
  Warehouse w({.connection = configFor(url_)});
  std::string binary("\x00\xff\xfe{not json\x80", 13);
  DeadLetter d{.topic = "dbserver1.public.orders", .partition = 0, .offset = 42, .key = std::string("\x01\x02", 2),
               .hasKey = true, .payload = binary, .hasPayload = true, .errorKind = "invalid_utf8",
               .errorMessage = "bad \xc3 byte"};
  DeadLetter noKey{.topic = "t", .partition = 1, .offset = 7, .payload = "{}", .hasPayload = true,
                   .errorKind = "missing_field", .errorMessage = "op"};
  std::vector<DeadLetter> letters{d, noKey};
  for (int attempt = 0; attempt < 2; ++attempt) {
    w.writeBatch(info(3, "orders-cdc-warehouse"), [&](WarehouseTransaction& tx) { tx.deadLetters(letters, info(3, "orders-cdc-warehouse")); });
  }
  auto r = check_->exec("SELECT encode(raw_payload, 'hex'), encode(record_key, 'hex'), error_kind, error_message, query_name, batch_id "
                        "FROM dlq_events ORDER BY source_offset DESC");
  ASSERT_EQ(r.rows(), 2);
  EXPECT_EQ(r.value(0, 0), "00fffe7b6e6f74206a736f6e80");
  EXPECT_EQ(r.value(0, 1), "0102");
  EXPECT_EQ(r.value(0, 2), "invalid_utf8");
  EXPECT_EQ(r.value(0, 3), "bad ? byte");
  EXPECT_EQ(r.value(0, 4), "orders-cdc-warehouse");
  EXPECT_EQ(r.value(0, 5), "3");
  EXPECT_TRUE(r.isNull(1, 1));
}

TEST_F(WarehouseTest, AFailedBatchLeavesNothingBehind) {
  Warehouse w({.connection = configFor(url_)});
  UpsertTable t(kCustomers);
  EXPECT_THROW(w.writeBatch(info(0), [&](WarehouseTransaction& tx) {
                 tx.upsert(t, std::vector<UpsertRow>{row(1, "a@x", "US", 1)});
                 tx.deadLetters(std::vector<DeadLetter>{{.topic = "t", .offset = 1, .errorKind = "k", .errorMessage = "m"}}, info(0));
                 throw std::runtime_error("crash after the writes, before the commit");
               }),
               std::runtime_error);
  EXPECT_TRUE(readCustomers(*check_).empty());
  EXPECT_EQ(check_->exec("SELECT count(*) FROM dlq_events").int64(0, 0), 0);
  write(w, 1, {row(1, "a@x", "US", 1)});  // the connection is still usable
  EXPECT_EQ(readCustomers(*check_).size(), 1u);
}

TEST_F(WarehouseTest, ALostConnectionIsRetriableAndReconnects) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(1, "a@x", "US", 1)});
  check_->exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
  try {
    write(w, 1, {row(1, "a@x", "CA", 2)});
    FAIL() << "expected a retriable error";
  } catch (const ConnectorError& e) {
    EXPECT_TRUE(e.retriable()) << e.what();
  }
  write(w, 1, {row(1, "a@x", "CA", 2)});
  EXPECT_EQ(readCustomers(*check_)[1].country, "CA");
}

// ---------------------------------------------------------------- checkpoint store, exactly-once

struct Change {
  int64_t id;
  std::string country;
  int64_t lsn;
  bool deleted;
};

class ExactlyOnceTest : public WarehouseTest {
 protected:
  std::shared_ptr<PostgresCheckpointStore> store() {
    return std::make_shared<PostgresCheckpointStore>(PostgresCheckpointOptions{.name = "q", .connection = configFor(url_)});
  }
  // Runs the pipeline once over `input` (AvailableNow), with `inject` called inside the batch's
  // transaction and after it; returns the error that ended the run, if any.
  std::exception_ptr run(std::shared_ptr<MemoryStream<Change>> input, std::function<void(int64_t, int)> inject) {
    auto checkpoint = store();
    auto warehouse = std::make_shared<Warehouse>(WarehouseOptions{.connection = configFor(url_)}, checkpoint);
    UpsertTable table(kCustomers);
    Session session;
    auto q = session.readStream(input)
                 .foreachBatch([&, warehouse](const Batch<Change>& b, const BatchInfo& i) {
                   warehouse->writeBatch(i, [&](WarehouseTransaction& tx) {
                     std::vector<UpsertRow> rows;
                     for (const Change& c : b.rows()) rows.push_back(row(c.id, "e" + std::to_string(c.id), c.country, c.lsn, c.deleted));
                     tx.upsert(table, rows);
                     inject(i.batchId, 0);  // inside the transaction
                   });
                   inject(i.batchId, 1);  // after the transaction committed, before the engine's commit
                 })
                 .checkpoint(checkpoint)
                 .option("retry.initialBackoffMs", "1")
                 .trigger(Trigger::availableNow())
                 .start();
    try {
      q.awaitTermination();
    } catch (...) {
      return std::current_exception();
    }
    return nullptr;
  }
};

TEST_F(ExactlyOnceTest, CrashesAtEveryPointEndWithTheModelState) {
  auto input = std::make_shared<MemoryStream<Change>>("changes", MemoryStreamOptions{.maxRecordsPerBatch = 7});
  std::mt19937 rng(7);
  std::map<int64_t, Customer> model;
  std::vector<Change> changes;
  for (int64_t lsn = 1; lsn <= 200; ++lsn) {
    int64_t id = rng() % 25;
    bool del = rng() % 5 == 0;
    std::string country = "C" + std::to_string(rng() % 9);
    changes.push_back({id, country, lsn, del});
    auto& m = model[id];
    if (del) {
      m.deleted = true;
      if (!m.email) m.country = std::nullopt;
    } else {
      m = {"e" + std::to_string(id), country, false, 0};
    }
    m.lsn = lsn;
  }
  for (auto& [id, m] : model) {
    if (m.deleted && !m.email) m.email = std::nullopt;
  }
  input->addData(changes);
  int crashes = 0;
  // Crash inside the transaction or after it, alternately, then kill the connection mid-batch.
  for (int round = 0; round < 6; ++round) {
    auto error = run(input, [&, round](int64_t batch, int point) {
      if (batch != round * 4 + 1) return;
      if (round < 5 && round % 2 == 0 && point == 0) throw std::runtime_error("crash before commit");
      if (round < 5 && round % 2 == 1 && point == 1) throw std::runtime_error("crash after commit");
      if (round == 5 && point == 0) {
        static thread_local bool killed = false;
        if (!killed) {
          killed = true;
          check_->exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND state = 'idle in transaction'");
        }
      }
    });
    if (error) ++crashes;
  }
  EXPECT_EQ(crashes, 5);
  ASSERT_EQ(run(input, [](int64_t, int) {}), nullptr);
  auto actual = readCustomers(*check_);
  ASSERT_EQ(actual.size(), model.size());
  for (const auto& [id, m] : model) {
    EXPECT_EQ(actual[id].deleted, m.deleted) << id;
    EXPECT_EQ(actual[id].lsn, m.lsn) << id;
    if (!m.deleted) EXPECT_EQ(actual[id].country, m.country) << id;
  }
  auto commits = check_->exec("SELECT count(*), count(DISTINCT batch_id) FROM dataflow_commits");
  EXPECT_EQ(commits.int64(0, 0), commits.int64(0, 1));
}

TEST_F(ExactlyOnceTest, ASecondInstanceIsRefusedWhileTheFirstRuns) {
  auto first = store();
  QueryMetadata meta{"id-1", {"MemoryStream[x]"}};
  first->writeMetadata(meta);
  first->acquire(meta);
  auto second = store();
  EXPECT_THROW(second->acquire(meta), CheckpointError);
  first.reset();  // its session ends, and the lock with it
  for (int i = 0; i < 50; ++i) {
    try {
      second->acquire(meta);
      return;
    } catch (const CheckpointError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  FAIL() << "the lock was not released";
}

TEST_F(ExactlyOnceTest, AZombieInstanceCannotCommit) {
  auto zombie = store();
  QueryMetadata meta{"id-1", {"MemoryStream[x]"}};
  zombie->writeMetadata(meta);
  zombie->acquire(meta);
  // The zombie's session dies (a long pause); a new instance takes over and bumps the epoch.
  check_->exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
  auto successor = store();
  successor->acquire(meta);
  auto conn = Connection::open(configFor(url_));
  conn.exec("BEGIN");
  EXPECT_THROW(zombie->commitWithin(conn, 5), CheckpointError);
  conn.exec("ROLLBACK");
  conn.exec("BEGIN");
  EXPECT_NO_THROW(successor->commitWithin(conn, 5));
  conn.exec("COMMIT");
}

TEST_F(ExactlyOnceTest, StoreKeepsOffsetsCommitsAndMetadata) {
  auto s = store();
  EXPECT_FALSE(s->readMetadata());
  s->writeMetadata({"qid", {"a", "b"}});
  EXPECT_EQ(s->readMetadata()->id, "qid");
  s->writeOffsets({0, 10, {{"a", Offsets({{{"t", 0}, 0}}), Offsets({{{"t", 0}, 5}})}}});
  s->writeOffsets({1, 11, {{"a", Offsets({{{"t", 0}, 5}}), Offsets({{{"t", 0}, 9}})}}});
  s->writeCommit({0, 12});
  EXPECT_EQ(s->latestOffsets()->batchId, 1);
  EXPECT_EQ(s->readOffsets(0)->sources[0].end.get({"t", 0}, -1), 5);
  EXPECT_EQ(s->latestCommit()->batchId, 0);
}

}  // namespace
}  // namespace dataflow::postgres
