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
#include "testing/state_store_contract.h"

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

TEST_F(WarehouseTest, TheBatchReportsWhereItsTimeWent) {
  Warehouse w({.connection = configFor(url_)});
  UpsertTable table(kCustomers);
  std::map<std::string, int64_t> phases;
  BatchInfo i = info(0);
  i.sinkPhasesMicros = &phases;
  w.writeBatch(i, [&](WarehouseTransaction& tx) {
    tx.upsert(table, std::vector<UpsertRow>{row(1, "a@x", "US", 100)});  // a new key: copied in
    tx.upsert(table, std::vector<UpsertRow>{row(1, "a@x", "CA", 200)});  // a stored one: merged
    tx.deadLetters(std::vector<DeadLetter>{{.topic = "t", .offset = 1, .key = "", .payload = "x", .errorKind = "k", .errorMessage = "m"}}, i);
  });
  for (const char* phase : {"copy", "stage", "merge", "deadLetters", "commit"}) {
    ASSERT_TRUE(phases.contains(phase)) << phase;
    EXPECT_GT(phases[phase], 0) << phase;
  }
}

TEST_F(WarehouseTest, HardDeletesRemoveRowsUnderTheVersionGuard) {
  Warehouse w({.connection = configFor(url_)});
  UpsertTableOptions options = kCustomers;
  options.softDeleteColumn.clear();
  options.hardDelete = true;
  UpsertTable table(options);
  auto put = [&](int64_t batch, std::vector<UpsertRow> rows) {
    w.writeBatch(info(batch), [&](WarehouseTransaction& tx) { tx.upsert(table, rows); });
  };
  put(0, {row(1, "a@x", "US", 100), row(2, "b@x", "DE", 101), row(3, "c@x", "FR", 102)});
  put(1, {row(1, std::nullopt, std::nullopt, 200, true),   // removed
          row(2, std::nullopt, std::nullopt, 50, true),    // older than the stored row: kept
          row(3, std::nullopt, std::nullopt, 300, true), row(3, "c@x", "NL", 400),  // deleted, then back
          row(4, std::nullopt, std::nullopt, 500, true)});  // never stored: nothing to remove
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows.size(), 2u);
  EXPECT_FALSE(rows.contains(1));
  EXPECT_EQ(rows[2], (Customer{"b@x", "DE", false, 101}));
  EXPECT_EQ(rows[3], (Customer{"c@x", "NL", false, 400}));
  options.softDeleteColumn = "is_deleted";
  EXPECT_THROW(UpsertTable{options}, ConfigurationError) << "hard and soft deletes exclude each other";
}

// Partial aggregates from several partitions or processes add up; each is written once, in its
// batch's transaction, so no version guard applies.
TEST_F(WarehouseTest, AccumulatingTablesAddPartialResultsUp) {
  check_->exec("CREATE TABLE partial_counts (day TEXT, status TEXT, n BIGINT NOT NULL, revenue NUMERIC(16,2) NOT NULL, "
               "batch_version BIGINT NOT NULL, updated_at TIMESTAMPTZ, PRIMARY KEY (day, status))");
  Warehouse w({.connection = configFor(url_)});
  UpsertTable table({.table = "partial_counts", .keyColumns = {"day", "status"}, .valueColumns = {"n", "revenue"},
                     .versionColumn = "batch_version", .touchColumns = {"updated_at"}, .accumulateColumns = {"n", "revenue"}});
  auto put = [&](int64_t batch, std::vector<UpsertRow> rows) {
    w.writeBatch(info(batch), [&](WarehouseTransaction& tx) { tx.upsert(table, rows); });
  };
  put(0, {{{"d1", "new", "2", "10.50"}, 7}, {{"d1", "new", "3", "0.25"}, 5}, {{"d1", "paid", "1", "1.00"}, 7}});
  put(1, {{{"d1", "new", "1", "1.25"}, 2}});  // a process further behind: smaller version, still added
  auto r = check_->exec("SELECT day, status, n, revenue, batch_version FROM partial_counts ORDER BY 1, 2");
  ASSERT_EQ(r.rows(), 2);
  EXPECT_EQ(r.value(0, 2), "6");
  EXPECT_EQ(r.value(0, 3), "12.00");
  EXPECT_EQ(r.value(0, 4), "7") << "the greatest version stays";
  EXPECT_EQ(r.value(1, 2), "1");
  EXPECT_THROW(put(2, {{{"d1", "new", std::nullopt, std::nullopt}, 9, true}}), ConfigurationError) << "no deletes";
  EXPECT_THROW(UpsertTable({.table = "partial_counts", .keyColumns = {"day"}, .valueColumns = {"n"},
                            .hardDelete = true, .accumulateColumns = {"n"}}),
               ConfigurationError);
  EXPECT_THROW(UpsertTable({.table = "partial_counts", .keyColumns = {"day"}, .valueColumns = {"n"},
                            .accumulateColumns = {"revenue"}}),
               ConfigurationError) << "only value columns accumulate";
}

TEST_F(WarehouseTest, SeveralChangesToOneKeyInABatchKeepTheNewest) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(1, "a@x", "US", 100), row(1, "a@x", "FR", 300), row(1, "a@x", "DE", 200)});
  EXPECT_EQ(readCustomers(*check_)[1].country, "FR");
}

// An update that did not send a column (an unchanged TOASTed value) keeps the stored value, or
// within one batch the value of the key's previous change; a column it did send still applies.
TEST_F(WarehouseTest, ColumnsAChangeDidNotSendKeepTheirValue) {
  Warehouse w({.connection = configFor(url_)});
  auto keeping = [](UpsertRow r, uint64_t bits) {
    r.keepStored = bits;
    return r;
  };
  constexpr uint64_t kEmail = 1 << 1, kCountry = 1 << 2;
  const std::string big(5000, 'x');
  write(w, 0, {row(1, "a@x", big, 100)});
  write(w, 1, {keeping(row(1, "b@x", std::nullopt, 200), kCountry)});
  EXPECT_EQ(readCustomers(*check_)[1], (Customer{"b@x", big, false, 200}));
  // In one batch: an insert, then an update that did not send the country, then one that did
  // not send the email either; the previous change's values carry over.
  write(w, 2, {row(2, "c@x", "NL", 100), keeping(row(2, "d@x", std::nullopt, 200), kCountry),
               keeping(row(2, std::nullopt, std::nullopt, 300), kEmail | kCountry)});
  EXPECT_EQ(readCustomers(*check_)[2], (Customer{"d@x", "NL", false, 300}));
  // Never seen before: nothing to keep, the column stays unknown (NULL).
  write(w, 3, {keeping(row(3, "e@x", std::nullopt, 100), kCountry)});
  EXPECT_EQ(readCustomers(*check_)[3], (Customer{"e@x", std::nullopt, false, 100}));
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

// A joined row recomputed because the other table changed keeps its version: with
// equalVersionReplaces it still replaces the stored row, an older version still does not.
TEST_F(WarehouseTest, AnEqualVersionReplacesWhereTheTableAllowsIt) {
  Warehouse w({.connection = configFor(url_)});
  UpsertTableOptions options = kCustomers;
  options.equalVersionReplaces = true;
  UpsertTable table(options);
  auto put = [&](int64_t batch, std::vector<UpsertRow> rows) {
    w.writeBatch(info(batch), [&](WarehouseTransaction& tx) { tx.upsert(table, rows); });
  };
  put(0, {row(1, "a@x", "CA", 501), row(2, "b@x", "DE", 701)});
  put(1, {row(1, "a@x", "MX", 501)});                          // same version: replaces
  put(2, {row(1, "a@x", "US", 499)});                          // older: kept out
  put(3, {row(2, std::nullopt, std::nullopt, 700, true)});     // a removal below the row: kept out
  put(4, {row(2, std::nullopt, std::nullopt, 701, true)});     // at its version: deletes
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows[1], (Customer{"a@x", "MX", false, 501}));
  EXPECT_EQ(rows[2], (Customer{"b@x", "DE", true, 701}));
  options.softDeleteColumn.clear();
  options.hardDelete = true;
  UpsertTable hard(options);
  w.writeBatch(info(5), [&](WarehouseTransaction& tx) { tx.upsert(hard, std::vector<UpsertRow>{row(1, std::nullopt, std::nullopt, 501, true)}); });
  EXPECT_FALSE(readCustomers(*check_).contains(1)) << "a hard delete at the stored version removes the row";
}

TEST_F(WarehouseTest, DeleteOfAnUnknownKeyAndReinsertAfterDelete) {
  Warehouse w({.connection = configFor(url_)});
  write(w, 0, {row(7, std::nullopt, std::nullopt, 100, true)});
  EXPECT_EQ(readCustomers(*check_)[7], (Customer{std::nullopt, std::nullopt, true, 100}));
  write(w, 1, {row(7, "new@x", "SE", 200)});
  EXPECT_EQ(readCustomers(*check_)[7], (Customer{"new@x", "SE", false, 200}));
}

// A soft delete marks the row and keeps its last known values, but the change columns (the
// source commit time) are the delete's: a row deleted long after its last update shows when.
TEST_F(WarehouseTest, ASoftDeleteSetsTheChangeColumns) {
  UpsertTableOptions options = kCustomers;
  options.valueColumns = {"email", "country", "event_time"};
  options.changeColumns = {"event_time"};
  UpsertTable table(options);
  Warehouse w({.connection = configFor(url_)});
  auto change = [](int64_t id, std::optional<std::string> email, std::string time, int64_t lsn, bool deleted) {
    return UpsertRow{{std::to_string(id), std::move(email), std::nullopt, std::move(time)}, lsn, deleted};
  };
  w.writeBatch(info(0), [&](WarehouseTransaction& tx) { tx.upsert(table, std::vector{change(1, "a@x", "2026-01-01 10:00:00+00", 100, false)}); });
  w.writeBatch(info(1), [&](WarehouseTransaction& tx) { tx.upsert(table, std::vector{change(1, std::nullopt, "2026-01-01 11:00:00+00", 200, true)}); });
  auto r = check_->exec("SELECT email, is_deleted, event_time = '2026-01-01 11:00:00+00' FROM dim_customers WHERE customer_id = 1");
  EXPECT_EQ(r.value(0, 0), "a@x") << "the last known values are kept";
  EXPECT_EQ(r.value(0, 1), "t");
  EXPECT_EQ(r.value(0, 2), "t") << "the delete's commit time";
  options.changeColumns = {"is_deleted"};
  EXPECT_THROW(UpsertTable{options}, ConfigurationError) << "a change column must be a value column";
}

// Where batches end must not change what is written: a random changelog (inserts, updates,
// columns not sent, soft deletes, deletes of unknown keys, re-inserts) applied one change per
// batch, in random batches and in one batch, merged or copied straight in, ends row for row equal.
TEST_F(WarehouseTest, WhereBatchesEndDoesNotChangeTheRows) {
  UpsertTableOptions options = kCustomers;
  options.valueColumns = {"email", "country", "event_time"};
  options.changeColumns = {"event_time"};
  const std::vector<std::pair<std::string, bool>> targets = {
      {"one_by_one", true}, {"random_batches", true}, {"random_merged", false}, {"one_batch", true}};
  std::vector<UpsertTable> tables;
  for (const auto& [name, direct] : targets) {
    check_->exec("DROP TABLE IF EXISTS " + name);
    check_->exec("CREATE TABLE " + name + " (LIKE dim_customers INCLUDING ALL)");
    options.table = name;
    options.directInsert = direct;
    tables.emplace_back(options);
  }
  std::mt19937_64 rng(11);
  std::vector<UpsertRow> log;
  for (int64_t lsn = 1; lsn <= 600; ++lsn) {
    const int64_t key = 1 + static_cast<int64_t>(rng() % 25);
    const bool deleted = rng() % 4 == 0;
    char time[32];  // the source commit time, a second per change
    std::snprintf(time, sizeof time, "2026-01-01 %02d:%02d:%02d+00", static_cast<int>(lsn / 3600),
                  static_cast<int>(lsn / 60 % 60), static_cast<int>(lsn % 60));
    UpsertRow r{{std::to_string(key), deleted ? std::nullopt : std::optional<std::string>("e" + std::to_string(lsn)),
                 deleted || rng() % 3 == 0 ? std::nullopt : std::optional<std::string>("C" + std::to_string(lsn % 7)),
                 std::string(time)},
                lsn, deleted};
    if (!deleted && rng() % 4 == 0) r.keepStored = uint64_t{1} << (1 + rng() % 2);  // email or country not sent
    log.push_back(std::move(r));
  }
  Warehouse w({.connection = configFor(url_)});
  int64_t batch = 0;
  for (const auto& r : log) {
    w.writeBatch(info(batch++), [&](WarehouseTransaction& tx) { tx.upsert(tables[0], std::span(&r, 1)); });
  }
  for (size_t begin = 0; begin < log.size();) {
    const size_t end = std::min(log.size(), begin + 1 + rng() % 40);
    std::span<const UpsertRow> part(log.data() + begin, end - begin);
    w.writeBatch(info(batch++), [&](WarehouseTransaction& tx) {
      tx.upsert(tables[1], part);
      tx.upsert(tables[2], part);
    });
    begin = end;
  }
  w.writeBatch(info(batch++), [&](WarehouseTransaction& tx) { tx.upsert(tables[3], log); });
  const std::string columns = "customer_id, email, country, event_time, is_deleted, source_lsn";
  for (size_t t = 1; t < targets.size(); ++t) {
    SCOPED_TRACE(targets[t].first);
    const std::string a = targets[0].first, b = targets[t].first;
    auto diff = check_->exec("SELECT count(*) FROM ((SELECT " + columns + " FROM " + a + " EXCEPT ALL SELECT " + columns +
                             " FROM " + b + ") UNION ALL (SELECT " + columns + " FROM " + b + " EXCEPT ALL SELECT " +
                             columns + " FROM " + a + ")) d");
    EXPECT_EQ(diff.int64(0, 0), 0);
  }
  EXPECT_EQ(check_->exec("SELECT count(*) FROM one_by_one").int64(0, 0), 25);
  EXPECT_GT(check_->exec("SELECT count(*) FROM one_by_one WHERE is_deleted AND email IS NOT NULL").int64(0, 0), 0)
      << "the log deletes rows it inserted";
}

// Binary COPY (UpsertTableOptions::binaryCopy) stores what text COPY stores, type by type, on
// both paths (a batch of new keys copied straight in, then updates and deletes merged); a value
// the encoder does not take fails its batch retriably, and the retry writes text.
TEST_F(WarehouseTest, BinaryCopyStoresWhatTextCopyStores) {
  const std::string columns =
      "(k bigint PRIMARY KEY, b boolean, i2 smallint, i4 integer, f4 real, f8 double precision, n numeric, "
      "n2 numeric(12,2), t text, vc varchar(12), d date, ts timestamp, tz timestamptz, j jsonb, u uuid, "
      "source_lsn bigint NOT NULL, is_deleted boolean NOT NULL DEFAULT false)";
  check_->exec("CREATE TABLE typed_bin " + columns);
  check_->exec("CREATE TABLE typed_text " + columns);
  auto options = [](const std::string& table, bool binary) {
    return UpsertTableOptions{.table = table, .keyColumns = {"k"},
                              .valueColumns = {"b", "i2", "i4", "f4", "f8", "n", "n2", "t", "vc", "d", "ts", "tz", "j", "u"},
                              .softDeleteColumn = "is_deleted", .binaryCopy = binary};
  };
  const UpsertTable bin(options("typed_bin", true)), text(options("typed_text", false));
  using V = std::optional<std::string>;
  const std::vector<std::vector<V>> values = {
      {"t", "-32768", "-2147483648", "1.5", "0.1", "0", "1.005", "a\tb\\c\nd", "short", "2024-02-29",
       "2024-02-29 13:45:30.123456", "2024-02-29T11:45:30.123456Z", "{\"a\": [1, 2]}", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
      {"false", "32767", "123", "-0", "-1.7976931348623157e308", "-0.00", "12.3", "ünïcødé 😀", "", "1970-01-01",
       "1969-12-31T23:59:59.999999", "2024-02-29 11:45:30+00", "null", "A0EEBC999C0B4EF8BB6D6BB9BD380A11"},
      {"1", "0", "0", "3.4028235e38", "5e-324", "12.30", "-0.5", std::nullopt, std::nullopt, "0001-01-01",
       "infinity", "2024-02-29 13:45:30.5+02:00", "[]", std::nullopt},
      {"0", std::nullopt, std::nullopt, "NaN", "NaN", ".5", "0", "x", "y", "9999-12-31", "-infinity",
       "2024-02-29 08:15:30-03:30", "{}", std::nullopt},
      {std::nullopt, "7", "7", "Infinity", "1e300", "5.", "99", "", "z", "infinity", "2000-01-01 00:00:00",
       "-infinity", "1", std::nullopt},
      {"f", "-1", "-1", "-Infinity", "-0.0", "-1234567890123456789.0123456789", "1234567890.12", "t", "v",
       "-infinity", "1900-02-28 12:00:00.000001", "1900-01-01T00:00:00Z", "\"s\"", std::nullopt},
      {"t", "1", "1", "1e-45", "2.5e-10", "100000000", "0.01", "t", "v", "2000-02-29", "2100-03-01 00:00:00",
       "infinity", "true", std::nullopt},
      {"t", "1", "1", "1", "1", "0.0001", "0", "t", "v", "2000-01-01", "2000-01-01 00:00:00", "2000-01-01T00:00:00Z",
       "0", std::nullopt},
      {"t", "1", "1", "1", "1", "0.00010", "0", "t", "v", "2000-01-01", "2000-01-01 00:00:00", "2000-01-01T00:00:00Z",
       "0", std::nullopt},
      {"t", "1", "1", "1", "1", "NaN", "0", "t", "v", "2000-01-01", "2000-01-01 00:00:00", "2000-01-01T00:00:00Z",
       "0", std::nullopt},
      {"t", "1", "1", "1", "1", "99999999999999999999999999999999999999.99", "0", "t", "v", "2000-01-01",
       "2000-01-01 00:00:00", "2000-01-01T00:00:00Z", "0", std::nullopt},
  };
  auto rowsOf = [&](int64_t firstKey, int64_t lsn, bool deleteOdd) {
    std::vector<UpsertRow> rows;
    for (size_t i = 0; i < values.size(); ++i) {
      UpsertRow r;
      r.values.push_back(std::to_string(firstKey + static_cast<int64_t>(i)));
      r.values.insert(r.values.end(), values[(i + static_cast<size_t>(lsn)) % values.size()].begin(),
                      values[(i + static_cast<size_t>(lsn)) % values.size()].end());
      r.version = lsn;
      r.deleted = deleteOdd && i % 2 == 1;
      rows.push_back(std::move(r));
    }
    return rows;
  };
  std::optional<Warehouse> w;
  w.emplace(WarehouseOptions{.connection = configFor(url_)});
  int64_t batch = 0;
  auto both = [&](const std::vector<UpsertRow>& rows) {
    w->writeBatch(info(batch++), [&](WarehouseTransaction& tx) {
      tx.upsert(bin, rows);
      tx.upsert(text, rows);
    });
  };
  both(rowsOf(1, 1, false));  // new keys: copied straight into the target
  both(rowsOf(1, 2, false));  // every key stored: staged and merged
  both(rowsOf(6, 3, true));   // half stored, some deleted
  const std::string select = "SELECT k, b, i2, i4, f4, f8, n, n2, t, vc, d, ts, tz, j, u, source_lsn, is_deleted FROM ";
  auto dump = [&](const std::string& table) {
    auto r = check_->exec(select + table + " ORDER BY k");
    std::vector<std::vector<std::optional<std::string>>> out;
    for (int i = 0; i < r.rows(); ++i) {
      out.emplace_back();
      for (int c = 0; c < r.columns(); ++c) out.back().push_back(r.optionalValue(i, c));
    }
    return out;
  };
  auto written = dump("typed_bin");
  EXPECT_EQ(written.size(), values.size() + 5);
  EXPECT_EQ(written, dump("typed_text"));

  // Text the encoder does not take as the server would: a number with an exponent, a timestamp
  // without its zone (the server would read it in the session's time zone). Each on a new
  // connection, which writes binary again.
  int64_t lsn = 4;
  for (auto [column, odd] : {std::pair{size_t{6}, "1e5"}, std::pair{size_t{12}, "2024-02-29 10:00:00"}}) {
    w.emplace(WarehouseOptions{.connection = configFor(url_)});
    auto rows = rowsOf(100, lsn++, false);
    rows[0].values[column] = odd;
    bool refused = false;
    try {
      both(rows);
    } catch (const ConnectorError& e) {
      refused = true;
      EXPECT_TRUE(e.retriable());
      EXPECT_NE(std::string(e.what()).find("retried with the table written as text"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(refused);
    both(rows);  // the retry, as text
    EXPECT_EQ(dump("typed_bin"), dump("typed_text"));
  }
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

// Which way each upsert went, from the phases it reported.
struct Ways {
  bool copied, merged;
};
Ways upsertOnce(Warehouse& w, const UpsertTable& table, std::vector<UpsertRow> rows, int64_t batch) {
  std::map<std::string, int64_t> phases;
  BatchInfo i = info(batch);
  i.sinkPhasesMicros = &phases;
  w.writeBatch(i, [&](WarehouseTransaction& tx) { tx.upsert(table, rows); });
  return {phases.contains("copy"), phases.contains("merge")};
}

// A batch none of whose keys is stored goes straight into the target: keys past the stored ones
// (the range probe), new keys between stored ones (the key probe), multi-column and text keys
// that need quoting in an array. One stored key sends the batch through the merge.
TEST_F(WarehouseTest, ABatchOfNewKeysIsCopiedStraightIn) {
  Warehouse w({.connection = configFor(url_)});
  UpsertTable customers(kCustomers);
  auto ways = upsertOnce(w, customers, {row(10, "a@x", "US", 1), row(30, "b@x", "DE", 1)}, 0);
  EXPECT_TRUE(ways.copied && !ways.merged);
  ways = upsertOnce(w, customers, {row(20, "c@x", "FR", 1), row(40, "d@x", "NL", 1)}, 1);  // between and past
  EXPECT_TRUE(ways.copied && !ways.merged);
  ways = upsertOnce(w, customers, {row(50, "e@x", "SE", 1), row(30, "b@x", "IT", 2)}, 2);
  EXPECT_TRUE(!ways.copied && ways.merged);
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows.size(), 5u);
  EXPECT_EQ(rows[30], (Customer{"b@x", "IT", false, 2}));
  EXPECT_EQ(check_->exec("SELECT count(*) FROM dim_customers WHERE first_seen_at IS NULL OR last_seen_at IS NULL")
                .int64(0, 0), 0);

  check_->exec("CREATE TABLE pairs (region text, code text, v text, source_lsn bigint NOT NULL, PRIMARY KEY (region, code))");
  UpsertTable pairs({.table = "pairs", .keyColumns = {"region", "code"}, .valueColumns = {"v"}});
  const std::string hostile = "a \"quoted\", {braced} \\\\ back\\slash NULL";
  ways = upsertOnce(w, pairs, {UpsertRow{{"eu", hostile, "1"}, 1}, UpsertRow{{"eu", "NULL", "2"}, 1}}, 3);
  EXPECT_TRUE(ways.copied && !ways.merged);
  ways = upsertOnce(w, pairs, {UpsertRow{{"us", hostile, "3"}, 1}}, 4);
  EXPECT_TRUE(ways.copied && !ways.merged);
  ways = upsertOnce(w, pairs, {UpsertRow{{"eu", hostile, "4"}, 2}}, 5);
  EXPECT_TRUE(!ways.copied && ways.merged);
  EXPECT_EQ(check_->exec("SELECT v FROM pairs WHERE region = 'eu' AND code = " + std::string("$q$") + hostile + "$q$").value(0, 0), "4");
  EXPECT_EQ(check_->exec("SELECT count(*) FROM pairs").int64(0, 0), 3);

  // The probe sends its keys as a binary array where the key's type has a binary form (text,
  // uuid, bigint), and as a literal where a key's text is not one the encoder takes ("+7").
  check_->exec("CREATE TABLE by_name (name text PRIMARY KEY, v text, source_lsn bigint NOT NULL)");
  check_->exec("CREATE TABLE by_uuid (id uuid PRIMARY KEY, v text, source_lsn bigint NOT NULL)");
  check_->exec("CREATE TABLE by_number (id bigint PRIMARY KEY, v text, source_lsn bigint NOT NULL)");
  UpsertTable byName({.table = "by_name", .keyColumns = {"name"}, .valueColumns = {"v"}});
  UpsertTable byUuid({.table = "by_uuid", .keyColumns = {"id"}, .valueColumns = {"v"}});
  UpsertTable byNumber({.table = "by_number", .keyColumns = {"id"}, .valueColumns = {"v"}});
  const std::string uuid = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11";
  int64_t batch = 6;
  for (const auto* key : {&hostile, &uuid}) {
    const UpsertTable& t = key == &hostile ? byName : byUuid;
    ways = upsertOnce(w, t, {UpsertRow{{*key, "1"}, 1}}, batch++);
    EXPECT_TRUE(ways.copied && !ways.merged);
    ways = upsertOnce(w, t, {UpsertRow{{*key, "2"}, 2}, UpsertRow{{key == &hostile ? "Ω" : "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "3"}, 1}},
                      batch++);
    EXPECT_TRUE(!ways.copied && ways.merged);
  }
  EXPECT_EQ(check_->exec("SELECT v FROM by_name WHERE name = $q$" + hostile + "$q$").value(0, 0), "2");
  EXPECT_EQ(check_->exec("SELECT string_agg(v, ',' ORDER BY v) FROM by_uuid").value(0, 0), "2,3");
  // (The binary COPY refuses "+7" too: the batch is retried, as the engine does, in text form.)
  EXPECT_THROW(upsertOnce(w, byNumber, {UpsertRow{{"+7", "1"}, 1}, UpsertRow{{"8", "1"}, 1}}, batch), ConnectorError);
  ways = upsertOnce(w, byNumber, {UpsertRow{{"+7", "1"}, 1}, UpsertRow{{"8", "1"}, 1}}, batch++);
  EXPECT_TRUE(ways.copied && !ways.merged);
  ways = upsertOnce(w, byNumber, {UpsertRow{{"7", "2"}, 2}}, batch++);
  EXPECT_TRUE(!ways.copied && ways.merged);
  EXPECT_EQ(check_->exec("SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM by_number").value(0, 0), "7=2,8=1");
}

// The same random batches written once with directInsert and once without, into two copies of
// the table, give the same rows: inserts, soft and hard deletes of keys never stored, columns a
// change did not send, several changes of one key in a batch, older versions.
TEST_F(WarehouseTest, DirectInsertWritesWhatTheMergeWrites) {
  for (bool hard : {false, true}) {
    SCOPED_TRACE(hard ? "hard deletes" : "soft deletes");
    check_->exec("DROP TABLE IF EXISTS direct_t, merge_t");
    check_->exec("CREATE TABLE direct_t (LIKE dim_customers INCLUDING ALL)");
    check_->exec("CREATE TABLE merge_t (LIKE dim_customers INCLUDING ALL)");
    UpsertTableOptions options = kCustomers;
    if (hard) {
      options.softDeleteColumn.clear();
      options.hardDelete = true;
    }
    options.table = "direct_t";
    UpsertTable direct(options);
    options.table = "merge_t";
    options.directInsert = false;
    UpsertTable merge(options);
    Warehouse w({.connection = configFor(url_)});
    std::mt19937_64 rng(hard ? 7 : 3);
    int64_t nextKey = 0, copiedBatches = 0;
    for (int64_t batch = 0; batch < 60; ++batch) {
      std::vector<UpsertRow> rows;
      const int n = 1 + static_cast<int>(rng() % 40);
      const bool onlyNew = rng() % 2 == 0;  // keys past the stored ones, or ones left out earlier
      for (int i = 0; i < n; ++i) {
        int64_t key = i > 0 && rng() % 5 == 0 ? std::stoll(*rows.back().values[0])  // a key changed twice
                      : !onlyNew && rng() % 3 == 0 ? static_cast<int64_t>(rng() % (nextKey + 1))
                                                   : (nextKey += 1 + rng() % 3);
        UpsertRow r = row(key, "e" + std::to_string(rng() % 100), rng() % 5 ? std::optional<std::string>("C") : std::nullopt,
                          static_cast<int64_t>(rng() % 1000), rng() % 6 == 0);
        if (rng() % 5 == 0) r.keepStored = uint64_t{1} << (1 + rng() % 2);
        rows.push_back(std::move(r));
      }
      int64_t a = 0, b = 0;
      std::map<std::string, int64_t> phases;
      BatchInfo i = info(batch);
      i.sinkPhasesMicros = &phases;
      w.writeBatch(i, [&](WarehouseTransaction& tx) {
        a = tx.upsert(direct, rows);
        b = tx.upsert(merge, rows);
      });
      copiedBatches += phases.contains("copy");
      EXPECT_EQ(a, b) << "batch " << batch;
    }
    EXPECT_GT(copiedBatches, 10) << "the direct path was taken";
    const std::string columns = "customer_id, email, country, is_deleted, source_lsn, first_seen_at IS NULL, last_seen_at IS NULL";
    auto diff = check_->exec("SELECT count(*) FROM ((SELECT " + columns + " FROM direct_t EXCEPT ALL SELECT " + columns +
                             " FROM merge_t) UNION ALL (SELECT " + columns + " FROM merge_t EXCEPT ALL SELECT " + columns +
                             " FROM direct_t)) d");
    EXPECT_EQ(diff.int64(0, 0), 0);
    EXPECT_GT(check_->exec("SELECT count(*) FROM direct_t").int64(0, 0), 100);
  }
}

// A key another writer stores after the probe (here: inserted before it, committed after it) makes
// the COPY fail; the batch undoes it to its savepoint and merges under the version guard instead.
TEST_F(WarehouseTest, AKeyStoredByAnotherWriterAfterTheProbeIsMerged) {
  Connection other = Connection::open(configFor(url_));
  other.exec("BEGIN");
  other.exec("INSERT INTO dim_customers (customer_id, email, country, is_deleted, source_lsn) VALUES (5, 'old', 'XX', false, 100)");
  Warehouse w({.connection = configFor(url_)});
  std::thread writer([&] { write(w, 0, {row(4, "a@x", "US", 200), row(5, "b@x", "DE", 200)}); });
  // The writer waits on the other transaction's uncommitted key, then sees it committed.
  bool waiting = false;
  for (int i = 0; i < 200 && !waiting; ++i) {
    waiting = check_->exec("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
                  .int64(0, 0) > 0;
    if (!waiting) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  other.exec("COMMIT");
  writer.join();
  EXPECT_TRUE(waiting) << "the COPY waited on the other writer's key";
  auto rows = readCustomers(*check_);
  EXPECT_EQ(rows[4], (Customer{"a@x", "US", false, 200}));
  EXPECT_EQ(rows[5], (Customer{"b@x", "DE", false, 200})) << "merged over the other writer's older row";
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

// A burst of dead letters in one batch: every byte value in keys and payloads, messages with the
// characters COPY escapes, an empty payload apart from a missing one, in order; a replay adds none.
TEST_F(WarehouseTest, ABurstOfDeadLettersIsStoredExactlyAndInOrder) {
  Warehouse w({.connection = configFor(url_)});
  std::vector<DeadLetter> letters;
  for (int i = 0; i < 3000; ++i) {
    std::string payload;
    for (int b = 0; b < i % 300; ++b) payload += static_cast<char>((i + b) % 256);
    letters.push_back({.topic = "t\tab", .partition = i % 3, .offset = i, .key = std::string(1, static_cast<char>(i % 256)),
                       .hasKey = i % 7 != 0, .payload = payload, .hasPayload = i % 11 != 0, .errorKind = "malformed_json",
                       .errorMessage = "line\nbreak\ttab\\slash " + std::to_string(i)});
  }
  for (int attempt = 0; attempt < 2; ++attempt) {
    w.writeBatch(info(9), [&](WarehouseTransaction& tx) { EXPECT_EQ(tx.deadLetters(letters, info(9)), attempt ? 0 : 3000); });
  }
  auto r = check_->exec("SELECT source_topic, source_partition, source_offset, encode(record_key, 'hex'), encode(raw_payload, 'hex'), "
                        "error_message FROM dlq_events ORDER BY id");
  ASSERT_EQ(r.rows(), 3000);
  auto hex = [](const std::string& bytes) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned char ch : bytes) out += {kHex[ch >> 4], kHex[ch & 15]};
    return out;
  };
  for (int i = 0; i < 3000; ++i) {
    const DeadLetter& d = letters[static_cast<size_t>(i)];
    ASSERT_EQ(r.value(i, 0), "t\tab");
    ASSERT_EQ(r.int64(i, 1), d.partition);
    ASSERT_EQ(r.int64(i, 2), i) << "in order";
    ASSERT_EQ(r.isNull(i, 3), !d.hasKey) << i;
    if (d.hasKey) {
      ASSERT_EQ(r.value(i, 3), hex(d.key)) << i;
    }
    ASSERT_EQ(r.isNull(i, 4), !d.hasPayload) << i;
    if (d.hasPayload) {
      ASSERT_EQ(r.value(i, 4), hex(d.payload)) << i;
    }
    ASSERT_EQ(r.value(i, 5), d.errorMessage);
  }
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
    // No wait for a held lock: the tests that expect a refusal get it at once.
    return std::make_shared<PostgresCheckpointStore>(
        PostgresCheckpointOptions{.name = "q", .connection = configFor(url_), .lockWait = std::chrono::milliseconds(0)});
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
    if (!m.deleted) {
      EXPECT_EQ(actual[id].country, m.country) << id;
    }
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

// A restart right after a crash finds the dead process's session still holding the lock, until
// the server notices: acquire() waits for it (lockWait) instead of refusing.
TEST_F(ExactlyOnceTest, ARestartWaitsForTheSessionOfAProcessThatJustDied) {
  auto dead = store();
  QueryMetadata meta{"id-1", {"MemoryStream[x]"}};
  dead->writeMetadata(meta);
  dead->acquire(meta);
  auto restarted = std::make_shared<PostgresCheckpointStore>(
      PostgresCheckpointOptions{.name = "q", .connection = configFor(url_), .lockWait = std::chrono::milliseconds(10000)});
  std::thread ending([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    dead.reset();  // the server ends the session
  });
  auto start = std::chrono::steady_clock::now();
  EXPECT_NO_THROW(restarted->acquire(meta));
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(400));
  ending.join();
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
  EXPECT_THROW(zombie->commitWithin(conn, info(5)), CheckpointError);
  conn.exec("ROLLBACK");
  conn.exec("BEGIN");
  EXPECT_NO_THROW(successor->commitWithin(conn, info(5)));
  conn.exec("COMMIT");
}

// The offsets entry written ahead of a batch does not wait for its flush once batches commit in
// the sink's transaction; that transaction writes the entry too, so a batch is never committed
// without it (here: the write-ahead entry lost, as in a server crash before its flush).
TEST_F(ExactlyOnceTest, ABatchCommittedInTheSinksTransactionCarriesItsOffsetsEntry) {
  auto s = store();
  QueryMetadata meta{"id-1", {"MemoryStream[x]"}};
  s->writeMetadata(meta);
  s->acquire(meta);
  auto batch = [](int64_t id) {
    BatchInfo b = info(id);
    b.batchTimestampMs = 1000 + id;
    b.sources.push_back({"MemoryStream[x]", Offsets({{{"x", 0}, id * 10}}), Offsets({{{"x", 0}, id * 10 + 10}})});
    return b;
  };
  auto commit = [&](int64_t id) {
    auto conn = Connection::open(configFor(url_));
    conn.exec("BEGIN");
    s->commitWithin(conn, batch(id));
    conn.exec("COMMIT");
  };
  auto entryOf = [&](const BatchInfo& b) { return OffsetLogEntry{b.batchId, b.batchTimestampMs, b.sources, b.batchWatermarkMs}; };
  s->writeOffsets(entryOf(batch(0)));  // before any batch committed within: flushed as it is written
  commit(0);
  s->writeOffsets(entryOf(batch(1)));  // now without waiting for the flush
  check_->exec("DELETE FROM public.dataflow_offsets WHERE batch_id = 1");
  commit(1);
  auto latest = s->latestOffsets();
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->batchId, 1);
  EXPECT_EQ(latest->sources.at(0).end.get({"x", 0}, -1), 20);
  EXPECT_EQ(s->latestCommit()->batchId, 1);
}

// A batch of a scaled-out query: ranges per partition of source 0, with this instance's leases.
BatchInfo scaledBatch(int64_t batchId, std::map<int32_t, std::pair<int64_t, int64_t>> ranges,
                      const PartitionLeases& leases) {
  BatchInfo b = info(batchId);
  SourceRange range{"KafkaV2[Subscribe[t]]", {}, {}};
  for (const auto& [p, r] : ranges) {
    range.start.set({"t", p}, r.first);
    range.end.set({"t", p}, r.second);
  }
  b.sources.push_back(range);
  b.leaseEpochs.resize(1);
  for (const auto& l : leases.leases) b.leaseEpochs[0][l.partition] = l.epoch;
  return b;
}

TEST_F(ExactlyOnceTest, ScaleOutLeasesPartitionsAndFencesAnInstanceThatLostOne) {
  QueryMetadata meta{"id-1", {"KafkaV2[Subscribe[t]]"}};
  auto a = store();
  auto b = store();
  a->writeMetadata(meta);
  a->join(meta);
  b->join(meta);
  // A single-instance run is kept out while instances are joined.
  EXPECT_THROW(store()->acquire(meta), CheckpointError);

  PartitionLeases leasedByA = a->leasePartitions(0, {{"t", 0}, {"t", 1}});
  ASSERT_EQ(leasedByA.leases.size(), 2u);
  EXPECT_FALSE(leasedByA.sourceHasCommits);
  EXPECT_FALSE(leasedByA.leases[0].committed);
  auto warehouse = Warehouse(WarehouseOptions{.connection = configFor(url_)}, a);
  warehouse.writeBatch(scaledBatch(0, {{0, {0, 5}}, {1, {0, 3}}}, leasedByA), [](WarehouseTransaction&) {});

  // A rebalance moves partition 1 to B, which resumes where A committed.
  PartitionLeases leasedByB = b->leasePartitions(0, {{"t", 1}});
  EXPECT_TRUE(leasedByB.sourceHasCommits);
  ASSERT_EQ(leasedByB.leases.size(), 1u);
  EXPECT_EQ(leasedByB.leases[0].committed, 3);
  EXPECT_GT(leasedByB.leases[0].epoch, leasedByA.leases[1].epoch);

  // A has not heard of the rebalance: its next batch covers both partitions and is refused as a
  // whole, naming the lost one; its rows roll back with it.
  UpsertTable table(kCustomers);
  try {
    warehouse.writeBatch(scaledBatch(1, {{0, {5, 9}}, {1, {3, 6}}}, leasedByA), [&](WarehouseTransaction& tx) {
      tx.upsert(table, std::vector<UpsertRow>{row(1, "zombie@x", "XX", 10)});
    });
    FAIL() << "a zombie committed";
  } catch (const PartitionsFencedError& e) {
    EXPECT_EQ(e.partitions(), (std::vector<PartitionId>{{"t", 1}}));
    EXPECT_NE(std::string(e.what()).find("t-1"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(readCustomers(*check_).empty());
  auto offsets = [&] {
    std::map<int32_t, int64_t> out;
    auto r = check_->exec("SELECT kafka_partition, next_offset FROM dataflow_partition_offsets WHERE checkpoint_name = 'q'");
    for (int i = 0; i < r.rows(); ++i) out[static_cast<int32_t>(r.int64(i, 0))] = r.int64(i, 1);
    return out;
  };
  EXPECT_EQ(offsets(), (std::map<int32_t, int64_t>{{0, 5}, {1, 3}}));

  // B continues partition 1; A continues partition 0 alone; a batch that does not start at the
  // committed offset (a gap or an overlap) is refused too.
  auto warehouseB = Warehouse(WarehouseOptions{.connection = configFor(url_)}, b);
  warehouseB.writeBatch(scaledBatch(0, {{1, {3, 6}}}, leasedByB), [](WarehouseTransaction&) {});
  warehouse.writeBatch(scaledBatch(2, {{0, {5, 9}}}, leasedByA), [](WarehouseTransaction&) {});
  EXPECT_THROW(warehouseB.writeBatch(scaledBatch(1, {{1, {4, 8}}}, leasedByB), [](WarehouseTransaction&) {}),
               PartitionsFencedError);
  EXPECT_EQ(offsets(), (std::map<int32_t, int64_t>{{0, 9}, {1, 6}}));
  // Without the sink's transaction, commitPartitions commits on its own.
  b->commitPartitions(scaledBatch(2, {{1, {6, 7}}}, leasedByB));
  EXPECT_EQ(offsets(), (std::map<int32_t, int64_t>{{0, 9}, {1, 7}}));

  // Scaling back in: a single instance continues from the per-partition offsets, as a committed
  // batch of its offsets log (its old log stopped when it scaled out).
  check_->exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
  std::shared_ptr<PostgresCheckpointStore> single;
  for (int i = 0; i < 50 && !single; ++i) {
    auto candidate = store();
    try {
      candidate->acquire(meta);
      single = candidate;
    } catch (const CheckpointError&) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the terminated sessions wind down
    }
  }
  ASSERT_TRUE(single);
  auto resumed = single->latestOffsets();
  ASSERT_TRUE(resumed);
  ASSERT_TRUE(single->latestCommit());
  EXPECT_EQ(single->latestCommit()->batchId, resumed->batchId);
  ASSERT_EQ(resumed->sources.size(), 1u);
  EXPECT_EQ(resumed->sources[0].end, Offsets({{{"t", 0}, 9}, {{"t", 1}, 7}}));
  EXPECT_TRUE(offsets().empty());
}

TEST_F(ExactlyOnceTest, ScalingOutContinuesFromTheSingleInstanceCheckpoint) {
  QueryMetadata meta{"id-1", {"KafkaV2[Subscribe[t]]"}};
  {
    auto single = store();
    single->writeMetadata(meta);
    single->acquire(meta);
    single->writeOffsets({0, 1, {{"KafkaV2[Subscribe[t]]", Offsets({{{"t", 0}, 0}, {{"t", 1}, 0}}),
                                  Offsets({{{"t", 0}, 7}, {{"t", 1}, 4}})}}});
    single->writeCommit({0, 2});
    single->writeOffsets({1, 3, {{"KafkaV2[Subscribe[t]]", Offsets({{{"t", 0}, 7}, {{"t", 1}, 4}}),
                                  Offsets({{{"t", 0}, 9}, {{"t", 1}, 6}})}}});
    // Batch 1 never committed: scale-out must not skip it.
  }
  // Two processes split the partitions from their first assignment on; both continue.
  auto scaled = store();
  auto other = store();
  scaled->join(meta);
  other->join(meta);
  PartitionLeases leases = scaled->leasePartitions(0, {{"t", 1}, {"t", 2}});
  EXPECT_TRUE(leases.sourceHasCommits);
  ASSERT_EQ(leases.leases.size(), 2u);
  EXPECT_EQ(leases.leases[0].committed, 4);
  EXPECT_FALSE(leases.leases[1].committed);  // a partition the single instance never saw
  PartitionLeases second = other->leasePartitions(0, {{"t", 0}});
  ASSERT_EQ(second.leases.size(), 1u);
  EXPECT_EQ(second.leases[0].committed, 7);
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

// ------------------------------------------------------------------ operator state

class PostgresStateStore : public WarehouseTest {
 protected:
  testing_util::StoreFactory factory() {
    return [this] {
      return std::make_shared<PostgresCheckpointStore>(
          PostgresCheckpointOptions{.name = "state-" + std::to_string(++n_), .connection = configFor(url_)});
    };
  }
  int n_ = 0;
};

TEST_F(PostgresStateStore, StateFilesRoundTrip) { testing_util::stateFilesRoundTrip(factory()); }
TEST_F(PostgresStateStore, WatermarksRoundTrip) { testing_util::watermarksRoundTrip(factory()); }
TEST_F(PostgresStateStore, QueryStateSurvivesARestart) { testing_util::queryStateSurvivesARestart(factory()); }

// A running count per key, written into the warehouse by the stateful query: the state changes
// are written in the warehouse transaction, so crashes inside it and after it (before the engine's
// own commit) end with exactly the counts of a run without failures.
TEST_F(PostgresStateStore, StateOutputAndCommitAreOneTransaction) {
  auto input = std::make_shared<MemoryStream<int64_t>>("keys", MemoryStreamOptions{.maxRecordsPerBatch = 9});
  std::mt19937 rng(11);
  std::vector<int64_t> keys;
  std::map<int64_t, int64_t> model;
  for (int i = 0; i < 150; ++i) {
    keys.push_back(rng() % 12);
    ++model[keys.back()];
  }
  input->addData(keys);
  auto run = [&](std::function<void(int64_t, int)> inject) -> std::exception_ptr {
    auto checkpoint = std::make_shared<PostgresCheckpointStore>(PostgresCheckpointOptions{.name = "counts", .connection = configFor(url_)});
    auto warehouse = std::make_shared<Warehouse>(WarehouseOptions{.connection = configFor(url_)}, checkpoint);
    UpsertTable table(kCustomers);
    Session session;
    auto q = session.readStream(input)
                 .groupByKey([](int64_t k) { return k; })
                 .count()
                 .writeStream()
                 .outputMode(OutputMode::kUpdate)
                 .checkpoint(checkpoint)
                 .option("state.minDeltasForSnapshot", "3")
                 .trigger(Trigger::availableNow())
                 .foreachBatch([&, warehouse](const Batch<KeyValue<int64_t, int64_t>>& b, const BatchInfo& i) {
                   EXPECT_NE(i.stateChanges, nullptr);
                   warehouse->writeBatch(i, [&](WarehouseTransaction& tx) {
                     std::vector<UpsertRow> rows;
                     for (const auto& kv : b.rows()) rows.push_back(row(kv.key, std::to_string(kv.value), "count", i.batchId + 1));
                     tx.upsert(table, rows);
                     inject(i.batchId, 0);
                   });
                   inject(i.batchId, 1);
                 })
                 .start();
    try {
      q.awaitTermination();
    } catch (...) {
      return std::current_exception();
    }
    return nullptr;
  };
  int crashes = 0;
  for (int round = 0; round < 6; ++round) {
    auto error = run([&, round](int64_t batch, int point) {
      if (batch == round * 3 + 1 && point == round % 2) throw std::runtime_error("crash");
    });
    if (error) ++crashes;
  }
  EXPECT_EQ(crashes, 6);
  ASSERT_EQ(run([](int64_t, int) {}), nullptr);
  auto r = check_->exec("SELECT customer_id, email FROM dim_customers ORDER BY customer_id");
  std::map<int64_t, int64_t> actual;
  for (int i = 0; i < r.rows(); ++i) actual[r.int64(i, 0)] = std::stoll(std::string(r.value(i, 1)));
  EXPECT_EQ(actual, model);
  auto files = check_->exec("SELECT count(*) FILTER (WHERE is_snapshot), count(*) FROM dataflow_state WHERE checkpoint_name = 'counts'");
  EXPECT_GT(files.int64(0, 0), 0) << "snapshots were made";
}

}  // namespace
}  // namespace dataflow::postgres
