// The RocksDB state backend: the table contract (lookups, atomic changes, scans, keys sharing a
// bucket and values kept apart from it, tables
// kept apart, emptied when reopened or dropped, used from several threads at once), then the
// stateful operators with their state in RocksDB and a cache of a few keys, through the same
// crash-at-every-step workloads and restart contract as the in-memory state, and the operators
// that keep their state in memory refusing the backend at start().
#include <dataflow/dataflow.h>
#include <dataflow/rocksdb/rocksdb_state_backend.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "testing/state_store_contract.h"
#include "testing/stateful_workloads.h"
#include "testing/table_workloads.h"

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using namespace stateful_testing;

std::string delta(const std::vector<std::pair<std::string, std::optional<std::string>>>& entries) {
  StateFileWriter w(StateFileWriter::Kind::kDelta);
  for (const auto& [k, v] : entries) {
    if (v) {
      w.put(k, *v);
    } else {
      w.remove(k);
    }
  }
  return w.finish();
}

void applyDelta(StateTable& table, const std::string& bytes) { table.apply(StateFileReader(bytes, "test delta")); }

std::map<std::string, std::string> contents(StateTable& table) {
  std::map<std::string, std::string> out;
  table.scan([&](std::string_view k, std::string_view v) {
    EXPECT_TRUE(out.emplace(k, v).second) << "scan gives each key once: " << k;
  });
  return out;
}

std::map<size_t, std::string> lookup(StateTable& table, const std::vector<std::string_view>& keys) {
  std::map<size_t, std::string> out;
  table.multiGet(keys, [&](size_t i, std::string_view v) { out.emplace(i, v); });
  return out;
}

TEST(RocksDbStateTable, LooksUpAppliesAndScans) {
  auto backend = rocksdb::stateBackend();
  auto table = backend->openTable("run", 0, {"orders", 0});
  std::string binaryKey("\x00\xff\x01", 3), binaryValue("\x00\x00v\xff", 4);
  applyDelta(*table, delta({{"b", "2"}, {"a", "1"}, {binaryKey, binaryValue}, {"c", "3"}}));
  applyDelta(*table, delta({{"c", std::nullopt}, {"a", "one"}, {"never", std::nullopt}}));
  EXPECT_EQ(contents(*table), (std::map<std::string, std::string>{{"a", "one"}, {"b", "2"}, {binaryKey, binaryValue}}));
  EXPECT_EQ(lookup(*table, {"c", "a", binaryKey, "zz"}), (std::map<size_t, std::string>{{1, "one"}, {2, binaryValue}}));
  EXPECT_TRUE(lookup(*table, {}).empty());
  EXPECT_NE(backend->describe().find("rocksdb("), std::string::npos);
}

// With few buckets every bucket holds many keys: a table of 5 000 keys through four buckets, its
// values small, large (kept apart from their bucket) and changing between the two, some removed,
// some written twice in one delta, against a std::map given the same changes.
TEST(RocksDbStateTable, KeysSharingBucketsAndLargeValuesAgreeWithAMap) {
  rocksdb::RocksDbStateOptions fewBuckets;
  fewBuckets.bucketsPerTable = 4;
  auto backend = rocksdb::stateBackend(fewBuckets);
  auto table = backend->openTable("run", 0, {"orders", 0});
  std::map<std::string, std::string> expected;
  std::mt19937 rng(7);
  for (int batch = 0; batch < 30; ++batch) {
    std::vector<std::pair<std::string, std::optional<std::string>>> entries;
    for (int i = 0; i < 400; ++i) {
      std::string key = "k" + std::to_string(rng() % 5000);
      std::optional<std::string> value;
      switch (rng() % 4) {
        case 0: value = std::nullopt; break;                                          // remove
        case 1: value = std::string(1024 + rng() % 3000, static_cast<char>('a' + batch % 26)); break;  // apart
        default: value = std::to_string(batch) + ":" + std::to_string(i); break;
      }
      entries.emplace_back(key, value);
    }
    for (const auto& [k, v] : entries) {
      if (v) {
        expected[k] = *v;
      } else {
        expected.erase(k);
      }
    }
    applyDelta(*table, delta(entries));
  }
  EXPECT_EQ(contents(*table), expected);
  std::vector<std::string> asked = {"k1", "nope", "k2"};
  for (const auto& [k, v] : expected) {
    if (asked.size() < 400) asked.push_back(k);
  }
  asked.push_back(asked[3]);  // asked twice
  std::vector<std::string_view> views(asked.begin(), asked.end());
  std::map<size_t, std::string> want;
  for (size_t i = 0; i < asked.size(); ++i) {
    if (auto it = expected.find(asked[i]); it != expected.end()) want.emplace(i, it->second);
  }
  EXPECT_EQ(lookup(*table, views), want);
  // Everything removed: nothing is left behind, apart values included.
  std::vector<std::pair<std::string, std::optional<std::string>>> removeAll;
  for (const auto& [k, v] : expected) removeAll.emplace_back(k, std::nullopt);
  applyDelta(*table, delta(removeAll));
  EXPECT_TRUE(contents(*table).empty());
}

TEST(RocksDbStateTable, BucketsPerTableMustBeAPowerOfTwo) {
  rocksdb::RocksDbStateOptions options;
  for (uint32_t buckets : {0u, 3u, 1000u}) {
    try {
      options.bucketsPerTable = buckets;
      rocksdb::stateBackend(options);
      FAIL() << "expected ConfigurationError for " << buckets;
    } catch (const ConfigurationError& e) {
      EXPECT_NE(std::string(e.what()).find("bucketsPerTable"), std::string::npos) << e.what();
    }
  }
  options.bucketsPerTable = 1;
  EXPECT_NO_THROW(rocksdb::stateBackend(options));
}

TEST(RocksDbStateTable, TablesAreKeptApartAndEmptiedWhenOpenedAgainOrDropped) {
  auto backend = rocksdb::stateBackend();
  // Names chosen so that one prefix would be a prefix of another without length fields.
  auto a = backend->openTable("run", 0, {"orders", 1});
  auto b = backend->openTable("run", 0, {"orders", 256});
  auto c = backend->openTable("run", 1, {"orders", 1});
  auto d = backend->openTable("run2", 0, {"orders", 1});
  auto e = backend->openTable("run", 0, {"orders1", 1});
  int i = 0;
  for (auto* t : {a.get(), b.get(), c.get(), d.get(), e.get()}) applyDelta(*t, delta({{"k", std::to_string(i++)}}));
  i = 0;
  for (auto* t : {a.get(), b.get(), c.get(), d.get(), e.get()}) {
    EXPECT_EQ(contents(*t), (std::map<std::string, std::string>{{"k", std::to_string(i++)}}));
  }
  auto again = backend->openTable("run", 0, {"orders", 1});
  EXPECT_TRUE(contents(*again).empty()) << "a table opened again starts empty (a restore rebuilds it)";
  applyDelta(*again, delta({{"x", "1"}}));
  again.reset();
  auto third = backend->openTable("run", 0, {"orders", 1});
  EXPECT_TRUE(contents(*third).empty()) << "a dropped table's data is gone";
  EXPECT_EQ(contents(*b).size(), 1u);
}

TEST(RocksDbStateTable, TablesAreUsedFromSeveralThreadsAtOnce) {
  auto backend = rocksdb::stateBackend();
  std::vector<std::thread> threads;
  std::vector<size_t> counts(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto table = backend->openTable("run", 0, {"events", t});
      for (int batch = 0; batch < 20; ++batch) {
        std::vector<std::pair<std::string, std::optional<std::string>>> entries;
        for (int k = 0; k < 100; ++k) entries.emplace_back(std::to_string(batch * 100 + k), std::string(50, 'v'));
        applyDelta(*table, delta(entries));
      }
      counts[static_cast<size_t>(t)] = contents(*table).size();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counts, (std::vector<size_t>{2000, 2000, 2000, 2000}));
}

TEST(RocksDbStateTable, ADirectoryThatCannotBeMadeIsNamed) {
  try {
    rocksdb::stateBackend({.directory = "/proc/no-such-place/state"});
    FAIL() << "expected ConnectorError";
  } catch (const ConnectorError& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/no-such-place/state"), std::string::npos) << e.what();
  }
}

TEST(RocksDbStateTable, TheDatabaseDirectoryIsRemovedWithTheBackend) {
  auto parent = std::filesystem::temp_directory_path() / ("dataflow-rocksdb-test-" + std::to_string(::getpid()));
  std::filesystem::remove_all(parent);
  {
    auto backend = rocksdb::stateBackend({.directory = parent});
    applyDelta(*backend->openTable("run", 0, {"t", 0}), delta({{"k", "v"}}));
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(parent), {}), 1);
  }
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(parent), {}), 0);
  std::filesystem::remove_all(parent);
}

// ------------------------------------------------------------------ operators on RocksDB

class RocksDbCrashAtEveryStep : public ::testing::TestWithParam<Workload> {};

TEST_P(RocksDbCrashAtEveryStep, OutputEqualsARunWithoutFailures) {
  expectOutputEqualsARunWithoutFailures(GetParam(), rocksdb::stateBackend());
}

INSTANTIATE_TEST_SUITE_P(Workloads, RocksDbCrashAtEveryStep,
                         ::testing::Values(Workload::kUpdateCount, Workload::kCompleteSum, Workload::kAppendWindows,
                                           Workload::kUpdateWindows, Workload::kDedupWithinWatermark,
                                           Workload::kSessionWindows),
                         [](const auto& info) { return workloadName(info.param); });

TEST(RocksDbState, OutputEqualsTheInMemoryRunOnEveryWorkload) {
  for (Workload w : {Workload::kUpdateCount, Workload::kCompleteSum, Workload::kAppendWindows, Workload::kUpdateWindows,
                     Workload::kDedupWithinWatermark, Workload::kSessionWindows}) {
    auto data = randomInput(5 + static_cast<uint32_t>(w), 2, 400);
    auto input = [&] {
      auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.partitions = 2, .maxRecordsPerBatch = 30});
      for (int p = 0; p < 2; ++p) in->addData(data[static_cast<size_t>(p)], p);
      return in;
    };
    int crashes = 0;
    auto inMemory = runWorkload(w, input(), std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes);
    auto onRocksDb = runWorkload(w, input(), std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1,
                                 rocksdb::stateBackend());
    EXPECT_EQ(onRocksDb, inMemory) << "workload " << static_cast<int>(w);
  }
}

class RocksDbStoreContract : public ::testing::TestWithParam<std::string> {};

TEST_P(RocksDbStoreContract, QueryStateSurvivesARestartIntoANewBackend) {
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-rocksdb-contract-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  testing_util::queryStateSurvivesARestart(
      [&]() -> std::shared_ptr<CheckpointStore> {
        return GetParam() == "memory" ? memoryCheckpoint() : directoryCheckpoint(dir);
      },
      [] { return rocksdb::stateBackend(); });
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(CheckpointStores, RocksDbStoreContract, ::testing::Values("memory", "directory"));

// Many keys through a small cache: every batch reads most of its keys back from RocksDB, and the
// counts, the progress figures and a restart agree with the in-memory state.
TEST(RocksDbState, ManyKeysThroughASmallCacheAgreeWithMemory) {
  struct Click {
    int64_t user = 0;
    int64_t amount = 0;
  };
  std::mt19937 rng(11);
  std::vector<Click> clicks;
  for (int i = 0; i < 60000; ++i) clicks.push_back({static_cast<int64_t>(rng() % 20000), static_cast<int64_t>(rng() % 50)});
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-rocksdb-many-" + std::to_string(::getpid()));
  using Row = KeyValue<int64_t, std::tuple<int64_t, int64_t>>;
  // Reads the first `to` clicks (a restarted query resumes where its checkpoint ends).
  auto run = [&](std::shared_ptr<StateBackend> backend, std::shared_ptr<CheckpointStore> store, size_t to,
                 StateOperatorProgress* progress) {
    auto in = std::make_shared<MemoryStream<Click>>("clicks", MemoryStreamOptions{.partitions = 1, .maxRecordsPerBatch = 5000});
    in->addData(std::vector<Click>(clicks.begin(), clicks.begin() + static_cast<std::ptrdiff_t>(to)));
    std::map<int64_t, std::tuple<int64_t, int64_t>> latest;
    Session session;
    auto query = session.readStream(in)
                     .groupByKey(&Click::user)
                     .agg(count(), sum(&Click::amount))
                     .writeStream()
                     .outputMode(OutputMode::kUpdate)
                     .checkpoint(store)
                     .stateBackend(backend)
                     .option("state.cachedKeysPerPartition", "1000")
                     .trigger(Trigger::availableNow())
                     .foreachBatch([&](const Batch<Row>& b, const BatchInfo&) {
                       for (const auto& r : b.rows()) latest[r.key] = r.value;
                     })
                     .start();
    query.awaitTermination();
    if (progress) *progress = query.lastProgress()->stateOperators.at(0);
    return latest;
  };
  std::filesystem::remove_all(dir);
  auto memoryStore = memoryCheckpoint();
  auto expected = run(nullptr, memoryStore, clicks.size(), nullptr);

  // The first 30 000 clicks in one process, the rest in another with a new backend.
  auto store = directoryCheckpoint(dir);
  StateOperatorProgress p;
  auto first = run(rocksdb::stateBackend(), store, 30000, &p);
  auto second = run(rocksdb::stateBackend(), store, clicks.size(), &p);
  for (const auto& [k, v] : second) first[k] = v;
  EXPECT_EQ(first, expected);
  EXPECT_EQ(p.numRowsTotal, static_cast<int64_t>(expected.size())) << "rows stored, not only cached";
  EXPECT_GT(p.memoryUsedBytes, 0);
  std::filesystem::remove_all(dir);
}

// A table (asTable -> groupBy -> retracting aggregates) with its state in RocksDB and a cache of
// two keys: equal to the recomputation from the final table, also with a crash in a batch.
TEST(RocksDbState, TableAggregationsEqualARecomputation) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    auto changelog = table_testing::randomChangelog(seed, 2, 300);
    int crashes = 0;
    auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
    store->arm(CrashingStore::Step::kAfterState, 5);
    auto got = table_testing::runAggregation(changelog, store, &crashes, -1, rocksdb::stateBackend());
    EXPECT_EQ(got, table_testing::recompute(changelog)) << "seed " << seed;
    EXPECT_EQ(crashes, 1);
  }
}

TEST(RocksDbState, OperatorsThatKeepStateInMemoryRefuseTheBackendAtStart) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto backend = rocksdb::stateBackend();
  auto expectRefused = [](auto&& start, const std::string& expected) {
    try {
      start();
      FAIL() << "expected ConfigurationError containing: " << expected;
    } catch (const ConfigurationError& e) {
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  };
  expectRefused([&] {
    session.readStream(in).withWatermark(&Event::ts, 1s).groupByKey(&Event::key)
        .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
        .writeStream().outputMode(OutputMode::kUpdate).stateBackend(backend)
        .foreachBatch([](const auto&, const BatchInfo&) {}).start();
  }, "cannot use the state backend rocksdb(");
  auto other = std::make_shared<MemoryStream<Event>>("other");
  expectRefused([&] {
    session.readStream(in).withWatermark(&Event::ts, 1s)
        .join(session.readStream(other).withWatermark(&Event::ts, 1s), &Event::key, &Event::key,
              [](const Event& a, const Event* b) { return a.id + b->id; })
        .writeStream().stateBackend(backend).foreachBatch([](const auto&, const BatchInfo&) {}).start();
  }, "symmetricHashJoin keeps its state in memory");
}

}  // namespace
}  // namespace dataflow
