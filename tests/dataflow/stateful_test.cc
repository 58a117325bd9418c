// Stateful operators: aggregations (update, complete, append), event-time windows and
// watermarks, deduplication; their state across restarts; refused combinations; and a
// differential harness that injects a crash at every step of a batch and compares the output with
// a run without failures and with a brute-force oracle.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include "testing/run_query.h"
#include "testing/state_store_contract.h"
#include "testing/stateful_workloads.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <tuple>

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using namespace stateful_testing;


std::filesystem::path freshDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-stateful-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}


template <class F>
void expectRefused(F&& start, const std::string& expected);


template <class Row>
std::vector<Row> sorted(std::vector<Row> rows) {
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    return std::tie(a.key, a.value) < std::tie(b.key, b.value);
  });
  return rows;
}

TEST(StatefulAggregation, UpdateModeEmitsChangedKeysWithRunningCounts) {
  Session session({.workerThreads = 2});
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto sink = std::make_shared<BatchLogSink<KeyCount>>();
  auto query = session.readStream(in)
                   .groupByKey([](const Event& e) { return e.key; })
                   .count()
                   .writeStream()
                   .outputMode(OutputMode::kUpdate)
                   .sink(sink)
                   .start();
  in->addData({{1, 0, 0}, {2, 0, 0}, {1, 0, 0}});
  query.processAllAvailable();
  in->addData({{1, 0, 0}, {3, 0, 0}});
  query.processAllAvailable();
  query.stop();
  auto batches = sink->batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(sorted(batches[0]), (std::vector<KeyCount>{{1, 2}, {2, 1}}));
  EXPECT_EQ(sorted(batches[1]), (std::vector<KeyCount>{{1, 3}, {3, 1}}));  // key 2 unchanged: not emitted
  auto progress = query.lastProgress();
  ASSERT_TRUE(progress);
  ASSERT_EQ(progress->stateOperators.size(), 1u);
  EXPECT_EQ(progress->stateOperators[0].operatorName, "stateStoreSave");
  EXPECT_EQ(progress->stateOperators[0].numRowsTotal, 3);
  EXPECT_EQ(progress->stateOperators[0].numRowsUpdated, 2);
  EXPECT_GT(progress->stateOperators[0].memoryUsedBytes, 0);
  EXPECT_NE(progress->toJson().find("\"stateOperators\":[{\"operatorName\":\"stateStoreSave\""), std::string::npos);
}

TEST(StatefulAggregation, CompleteModeEmitsEveryKeyEachBatchWithSeveralAggregates) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  using Row = KeyValue<int64_t, std::tuple<int64_t, int64_t, int64_t, int64_t, double>>;
  auto sink = std::make_shared<BatchLogSink<Row>>();
  auto query = session.readStream(in)
                   .groupByKey(&Event::key)
                   .agg(count(), sum(&Event::value), min(&Event::value), max(&Event::value), avg(&Event::value))
                   .writeStream()
                   .outputMode(OutputMode::kComplete)
                   .sink(sink)
                   .start();
  in->addData({{1, 0, 10}, {2, 0, 5}, {1, 0, 30}});
  query.processAllAvailable();
  in->addData({{2, 0, 7}});
  query.processAllAvailable();
  query.stop();
  auto batches = sink->batches();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(sorted(batches[1]), (std::vector<Row>{{1, {2, 40, 10, 30, 20.0}}, {2, {2, 12, 5, 7, 6.0}}}));
}

TEST(StatefulAggregation, StateSurvivesARestartFromTheCheckpoint) {
  auto dir = freshDir("restart");
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.partitions = 2});
  auto run = [&](std::shared_ptr<BatchLogSink<KeyCount>> sink) {
    Session session;
    auto query = session.readStream(in)
                     .groupByKey(&Event::key)
                     .count()
                     .writeStream()
                     .outputMode(OutputMode::kUpdate)
                     .checkpointLocation(dir)
                     .trigger(Trigger::availableNow())
                     .sink(sink)
                     .start();
    query.awaitTermination();
  };
  in->addData({{1}, {2}, {1}}, 0);
  in->addData({{5}, {5}}, 1);
  auto first = std::make_shared<BatchLogSink<KeyCount>>();
  run(first);
  in->addData({{1}, {2}}, 0);
  in->addData({{5}}, 1);
  auto second = std::make_shared<BatchLogSink<KeyCount>>();
  run(second);
  EXPECT_EQ(sorted(second->all()), (std::vector<KeyCount>{{1, 3}, {2, 2}, {5, 3}}));
  // Spark's layout: state/<operator>/<partition>/<version>.delta
  EXPECT_TRUE(std::filesystem::exists(dir / "state/0/events-0/0.delta"));
  EXPECT_TRUE(std::filesystem::exists(dir / "state/0/events-1/1.delta"));
  std::filesystem::remove_all(dir);
}

TEST(StatefulAggregation, SnapshotsAreMadeFromDeltasAndOldFilesRetired) {
  auto dir = freshDir("snapshots");
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  std::vector<Event> events;
  for (int i = 0; i < 40; ++i) events.push_back({i % 7, 0, i});
  in->addData(events);
  auto run = [&] {
    Session session;
    auto sink = std::make_shared<BatchLogSink<KeyValue<int64_t, int64_t>>>();
    auto query = session.readStream(in)
                     .groupByKey(&Event::key)
                     .sum(&Event::value)
                     .writeStream()
                     .outputMode(OutputMode::kComplete)
                     .checkpointLocation(dir)
                     .option("state.minDeltasForSnapshot", "5")
                     .option("state.minVersionsToRetain", "10")
                     .trigger(Trigger::availableNow())
                     .sink(sink)
                     .start();
    query.awaitTermination();
    return sink;
  };
  run();
  std::set<std::string> snapshots, deltas;
  for (const auto& f : std::filesystem::directory_iterator(dir / "state/0/events-0")) {
    (f.path().extension() == ".snapshot" ? snapshots : deltas).insert(f.path().filename().string());
  }
  EXPECT_FALSE(snapshots.empty());
  EXPECT_LT(deltas.size(), 40u) << "old deltas are retired once a snapshot covers them";
  // A restart restores from a snapshot plus deltas: the totals continue.
  in->addData({{0, 0, 1000}});
  auto sink = run();
  std::map<int64_t, int64_t> expected;
  for (int i = 0; i < 40; ++i) expected[i % 7] += i;
  expected[0] += 1000;
  std::map<int64_t, int64_t> got;
  auto batches = sink->batches();
  for (const auto& r : batches.rbegin()->second) got[r.key] = r.value;
  EXPECT_EQ(got, expected);
  std::filesystem::remove_all(dir);
}

TEST(StatefulAggregation, ADamagedStateFileIsRefusedByName) {
  auto dir = freshDir("damaged");
  auto in = std::make_shared<MemoryStream<Event>>("events");
  in->addData({{1}, {2}});
  auto start = [&] {
    Session session;
    return session.readStream(in)
        .groupByKey(&Event::key)
        .count()
        .writeStream()
        .outputMode(OutputMode::kUpdate)
        .checkpointLocation(dir)
        .trigger(Trigger::availableNow())
        .foreachBatch([](const Batch<KeyCount>&, const BatchInfo&) {})
        .start();
  };
  start().awaitTermination();
  auto file = dir / "state/0/events-0/0.delta";
  ASSERT_TRUE(std::filesystem::exists(file));
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 3);
  try {
    start();
    FAIL() << "a truncated state file was accepted";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("0.delta"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

// ------------------------------------------------------------------ the store contract

class StateStoreContract : public ::testing::TestWithParam<std::string> {
 protected:
  testing_util::StoreFactory factory() {
    if (GetParam() == "memory") return [] { return memoryCheckpoint(); };
    return [this] { return directoryCheckpoint(freshDir("contract-" + std::to_string(++n_))); };
  }
  int n_ = 0;
};

TEST_P(StateStoreContract, StateFilesRoundTrip) { testing_util::stateFilesRoundTrip(factory()); }
TEST_P(StateStoreContract, WatermarksRoundTrip) { testing_util::watermarksRoundTrip(factory()); }
TEST_P(StateStoreContract, QueryStateSurvivesARestart) { testing_util::queryStateSurvivesARestart(factory()); }
INSTANTIATE_TEST_SUITE_P(Providers, StateStoreContract, ::testing::Values("memory", "directory"));

// ------------------------------------------------------------------ windows and watermarks

TEST(EventTime, TumblingWindowsAreEmittedOnceWhenTheWatermarkPassesTheirEnd) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto sink = std::make_shared<BatchLogSink<WindowCount>>();
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 5s)
                   .groupByKey(&Event::key)
                   .window(tumbling(10s), &Event::ts)
                   .agg(count(), sum(&Event::value))
                   .writeStream()
                   .outputMode(OutputMode::kAppend)
                   .sink(sink)
                   .start();
  // Window [0, 10s): two events; one event exactly at 10 000 ms belongs to [10s, 20s).
  in->addData({{1, 1000, 1}, {1, 9999, 2}, {1, 10000, 4}});
  query.processAllAvailable();
  EXPECT_TRUE(sink->all().empty()) << "nothing is final yet (watermark 10000 - 5000 = 5000)";
  in->addData({{1, 15000, 8}});  // watermark becomes 10000: [0, 10s) is final
  query.processAllAvailable();
  // A late event for [0, 10s) (already emitted) is dropped and counted.
  in->addData({{1, 3000, 100}, {1, 26000, 16}});  // watermark becomes 21000: [10s, 20s) is final
  query.processAllAvailable();
  query.stop();
  auto rows = sorted(sink->all());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0], (WindowCount{{{0, 10000}, 1}, {2, 3}}));
  EXPECT_EQ(rows[1], (WindowCount{{{10000, 20000}, 1}, {2, 12}}));
  int64_t dropped = 0;
  bool sawEventTime = false;
  for (const auto& p : query.recentProgress()) {
    for (const auto& s : p.stateOperators) dropped += s.numRowsDroppedByWatermark;
    if (p.eventTime.count("watermark") && p.eventTime.count("max")) sawEventTime = true;
  }
  EXPECT_EQ(dropped, 1);
  EXPECT_TRUE(sawEventTime);
  EXPECT_EQ(query.lastProgress()->stateOperators[0].numRowsTotal, 1) << "only [20s, 30s) is left in state";
}

TEST(EventTime, SlidingWindowsCountARecordInEachWindowItFallsIn) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  using Row = KeyValue<Windowed<int64_t>, int64_t>;
  auto sink = std::make_shared<BatchLogSink<Row>>();
  in->addData({{7, 7000}, {7, 12000}});
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 0ms)
                   .groupByKey(&Event::key)
                   .window(sliding(10s, 5s), &Event::ts)
                   .count()
                   .writeStream()
                   .outputMode(OutputMode::kUpdate)
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  auto rows = sorted(sink->all());
  // 7000 is in [0,10) and [5,15); 12000 in [5,15) and [10,20).
  EXPECT_EQ(rows, (std::vector<Row>{{{{0, 10000}, 7}, 1}, {{{5000, 15000}, 7}, 2}, {{{10000, 20000}, 7}, 1}}));
}

TEST(EventTime, OutOfOrderEventsWithinTheDelayAreCounted) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  auto sink = std::make_shared<BatchLogSink<WindowCount>>();
  // 18000 moves the watermark to 8000; 2000 is out of order but its window [0,10s) is still open.
  in->addData({{1, 18000, 1}, {1, 2000, 2}, {1, 31000, 4}});
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 10s)
                   .groupByKey(&Event::key)
                   .window(tumbling(10s), &Event::ts)
                   .agg(count(), sum(&Event::value))
                   .writeStream()
                   .outputMode(OutputMode::kAppend)
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  auto rows = sorted(sink->all());
  // Watermark after all: 21000: [0,10) and [10,20) are final.
  EXPECT_EQ(rows, (std::vector<WindowCount>{{{{0, 10000}, 1}, {1, 2}}, {{{10000, 20000}, 1}, {1, 1}}}));
}

TEST(EventTime, TheWatermarkAndItsWindowsSurviveARestart) {
  auto dir = freshDir("watermark-restart");
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto run = [&] {
    Session session;
    auto sink = std::make_shared<BatchLogSink<WindowCount>>();
    auto query = session.readStream(in)
                     .withWatermark(&Event::ts, 0ms)
                     .groupByKey(&Event::key)
                     .window(tumbling(10s), &Event::ts)
                     .agg(count(), sum(&Event::value))
                     .writeStream()
                     .outputMode(OutputMode::kAppend)
                     .checkpointLocation(dir)
                     .trigger(Trigger::availableNow())
                     .sink(sink)
                     .start();
    query.awaitTermination();
    return sink;
  };
  in->addData({{1, 1000, 1}, {1, 12000, 2}});
  auto first = run();
  EXPECT_EQ(sorted(first->all()), (std::vector<WindowCount>{{{{0, 10000}, 1}, {1, 1}}}));
  // After the restart the watermark is still 12000: an event at 5000 is late, one at 15000 joins
  // the restored window [10s, 20s), which 25000 then closes.
  in->addData({{1, 5000, 100}, {1, 15000, 4}, {1, 25000, 8}});
  auto second = run();
  EXPECT_EQ(sorted(second->all()), (std::vector<WindowCount>{{{{10000, 20000}, 1}, {2, 6}}}));
  std::filesystem::remove_all(dir);
}

TEST(EventTime, SessionWindowsMergeWhenARecordBridgesTwoSessions) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 2});
  // Gap 1 s, watermark delay 5 s. Key 1: sessions [1000, 2000) and [2500, 3500) in the first
  // batch; then 1800 bridges them: one session [1000, 3500) of 3 records. Key 2: alone.
  in->addData({{1, 1000, 1}, {1, 2500, 2}, {1, 1800, 4}, {2, 1200, 8}, {3, 20000, 0}, {3, 20100, 0}});
  auto sink = std::make_shared<BatchLogSink<WindowCount>>();
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 5s)
                   .groupByKey(&Event::key)
                   .window(dataflow::session(1s), &Event::ts)
                   .agg(count(), sum(&Event::value))
                   .writeStream()
                   .outputMode(OutputMode::kAppend)
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  EXPECT_EQ(sorted(sink->all()), (std::vector<WindowCount>{{{{1000, 3500}, 1}, {3, 7}}, {{{1200, 2200}, 2}, {1, 8}}}));
  EXPECT_EQ(query.lastProgress()->stateOperators[0].numRowsTotal, 1) << "key 3's session is still open";
  expectRefused([] { dataflow::session(0ms); }, "gap must be positive");
}

TEST(EventTime, AStatelessQueryWithOverlappedBatchesTracksItsWatermark) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  in->addData({{1, 1000}, {1, 5000}, {1, 9000}});
  auto sink = std::make_shared<BatchLogSink<Event>>();
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 1s)
                   .writeStream()
                   .overlapBatches(true)  // batches prepared ahead fill their event-time figures too
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  auto progress = query.recentProgress();
  ASSERT_EQ(progress.size(), 3u);
  EXPECT_EQ(progress[0].eventTime.count("watermark"), 0u);
  EXPECT_EQ(progress[1].eventTime.at("watermark"), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(progress[2].eventTime.at("watermark"), "1970-01-01T00:00:04.000Z");
  EXPECT_EQ(progress[2].eventTime.at("max"), "1970-01-01T00:00:09.000Z");
}

// A record that carries its source position and raw bytes, as Kafka records do.
struct RawEvent {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string key;
  std::string payload;
  int64_t ts = 0;
};

TEST(EventTime, LateRecordsCanGoToTheDeadLettersWithTheirRawBytes) {
  Session session;
  auto in = std::make_shared<MemoryStream<RawEvent>>("raw", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  in->addData({{"orders", 3, 70, "k1", "{\"on\":\"time\"}", 50000}, {"orders", 3, 71, "k2", "{\"too\":\"late\"}", 1000}});
  std::vector<DeadLetter> dead;
  auto query = session.readStream(in)
                   .withWatermark(&RawEvent::ts, 5s)
                   .groupByKey(&RawEvent::topic)
                   .window(tumbling(10s), &RawEvent::ts)
                   .count()
                   .deadLetters([&](std::span<const DeadLetter> d, const BatchInfo&) { dead.insert(dead.end(), d.begin(), d.end()); })
                   .writeStream()
                   .outputMode(OutputMode::kUpdate)
                   .lateRecordsToDeadLetters()
                   .trigger(Trigger::availableNow())
                   .foreachBatch([](const auto&, const BatchInfo&) {})
                   .start();
  query.awaitTermination();
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].errorKind, "late_event");
  EXPECT_EQ(dead[0].topic, "orders");
  EXPECT_EQ(dead[0].partition, 3);
  EXPECT_EQ(dead[0].offset, 71);
  EXPECT_EQ(dead[0].key, "k2");
  EXPECT_EQ(dead[0].payload, "{\"too\":\"late\"}");
  EXPECT_NE(dead[0].errorMessage.find("behind the watermark 45000 ms"), std::string::npos) << dead[0].errorMessage;
  // Unrouted, the option is refused at start.
  expectRefused([&] {
    session.readStream(in).withWatermark(&RawEvent::ts, 5s).groupByKey(&RawEvent::topic).window(tumbling(10s), &RawEvent::ts)
        .count().writeStream().outputMode(OutputMode::kUpdate).lateRecordsToDeadLetters()
        .foreachBatch([](const auto&, const BatchInfo&) {}).start();
  }, "late records go to the dead letters");
}

// ------------------------------------------------------------------ deduplication

TEST(Deduplication, DropDuplicatesKeepsTheFirstRecordOfAKeyAcrossBatches) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto sink = std::make_shared<BatchLogSink<Event>>();
  auto query = session.readStream(in)
                   .dropDuplicates(&Event::id)
                   .writeStream()
                   .sink(sink)
                   .start();
  in->addData({{0, 0, 1, 100}, {0, 0, 2, 101}, {0, 0, 3, 100}});
  query.processAllAvailable();
  in->addData({{0, 0, 4, 101}, {0, 0, 5, 102}});
  query.processAllAvailable();
  query.stop();
  std::vector<int64_t> values;
  for (const auto& e : sink->all()) values.push_back(e.value);
  EXPECT_EQ(values, (std::vector<int64_t>{1, 2, 5}));
}

TEST(Deduplication, WithinWatermarkForgetsKeysAndDropsLateRecords) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  auto sink = std::make_shared<BatchLogSink<Event>>();
  in->addData({
      {0, 1000, 1, 7},    // kept; key 7 expires when the watermark reaches 11000
      {0, 5000, 2, 7},    // duplicate
      {0, 30000, 3, 8},   // kept; the watermark becomes 20000: key 7 is forgotten
      {0, 25000, 4, 7},   // kept again: 7 was forgotten, and 25000 is not late
      {0, 15000, 5, 9},   // late (15000 < watermark 20000): dropped
  });
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 10s)
                   .dropDuplicatesWithinWatermark(&Event::id, &Event::ts)
                   .writeStream()
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  std::vector<int64_t> values;
  for (const auto& e : sink->all()) values.push_back(e.value);
  EXPECT_EQ(values, (std::vector<int64_t>{1, 3, 4}));
  int64_t dropped = 0;
  for (const auto& p : query.recentProgress()) {
    for (const auto& s : p.stateOperators) dropped += s.numRowsDroppedByWatermark;
  }
  EXPECT_EQ(dropped, 1);
}

// ------------------------------------------------------------------ refused combinations

template <class F>
void expectRefused(F&& start, const std::string& expected) {
  try {
    start();
    FAIL() << "expected a ConfigurationError containing '" << expected << "'";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}

TEST(StatefulRefusals, CombinationsSparkRefusesAreRefusedAtStart) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto noop = [](const auto&, const BatchInfo&) {};
  expectRefused([&] {
    session.readStream(in).groupByKey(&Event::key).count().writeStream().foreachBatch(noop).start();
  }, "append output mode is not supported for an aggregation without event-time windows");
  expectRefused([&] {
    session.readStream(in).groupByKey(&Event::key).window(tumbling(1s), &Event::ts).count()
        .writeStream().foreachBatch(noop).start();
  }, "needs withWatermark");
  expectRefused([&] {
    session.readStream(in).writeStream().outputMode(OutputMode::kComplete).foreachBatch(noop).start();
  }, "complete output mode needs an aggregation");
  expectRefused([&] {
    session.readStream(in).dropDuplicatesWithinWatermark(&Event::id, &Event::ts).writeStream().foreachBatch(noop).start();
  }, "dropDuplicatesWithinWatermark needs withWatermark");
  expectRefused([&] {
    session.readStream(in).dropDuplicates(&Event::id).writeStream().outputMode(OutputMode::kComplete)
        .foreachBatch(noop).start();
  }, "does not support the complete output mode");
  expectRefused([&] { sliding(10s, 20s); }, "0 < slide <= size");
  expectRefused([&] { tumbling(0s); }, "must be positive");
  expectRefused([&] {
    session.readStream(in).writeStream().option("outputMode", "upsert");
  }, "option 'outputMode'");
}

TEST(StatefulRefusals, ExplainShowsStatefulOperatorsWatermarkAndMode) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto writer = session.readStream(in)
                    .withWatermark(&Event::ts, 30s)
                    .groupByKey(&Event::key)
                    .window(tumbling(60s), &Event::ts)
                    .agg(count(), sum(&Event::value))
                    .writeStream()
                    .outputMode(OutputMode::kAppend);
  writer.foreachBatch([](const Batch<WindowCount>&, const BatchInfo&) {});
  std::string plan = writer.explain();
  EXPECT_NE(plan.find("StateStoreSave [aggregates=count, sum, window=tumbling(60000 ms)"), std::string::npos) << plan;
  EXPECT_NE(plan.find("EventTimeWatermark delay=30000 ms"), std::string::npos) << plan;
  EXPECT_NE(plan.find("outputMode=append"), std::string::npos) << plan;
}

// ------------------------------------------------------------------ transformWithState


TEST(TransformWithState, EventTimeTimersCloseSessionsWithTheirState) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 2});
  in->addData({{1, 1000, 4}, {1, 1500, 5}, {2, 1200, 7}, {1, 2000, 6}, {1, 2500, 9}, {3, 9000, 1}});
  auto sink = std::make_shared<BatchLogSink<std::string>>();
  auto query = session.readStream(in)
                   .withWatermark(&Event::ts, 0ms)
                   .groupByKey(&Event::key)
                   .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
                   .writeStream()
                   .outputMode(OutputMode::kUpdate)
                   .trigger(Trigger::availableNow())
                   .sink(sink)
                   .start();
  query.awaitTermination();
  // Watermark 9000 at the end: key 1 (newest 2500 -> timer 4500) and key 2 (3200) fired; key 3's
  // timer (11000) is still pending.
  auto rows = sink->all();
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<std::string>{"1@4500 n=4 recent=5,6,9, residues=0:2,1:1,2:1,",
                                            "2@3200 n=1 recent=7, residues=1:1,"}));
  EXPECT_EQ(query.lastProgress()->stateOperators[0].operatorName, "transformWithStateExec");
}

TEST(TransformWithState, ProcessingTimeTimersFireInABatchWithoutData) {
  struct Reminder {
    using Output = int64_t;
    ProcessorHandle<int64_t>* handle = nullptr;
    void init(ProcessorHandle<int64_t>& h) { handle = &h; }
    void handleInputRows(const int64_t&, std::span<const Event>, TimerValues t, Collector<Output>&) {
      handle->registerTimer(t.processingTimeMs + 100);
    }
    void handleExpiredTimer(const int64_t& key, ExpiredTimer, TimerValues, Collector<Output>& out) { out.emit(key); }
  };
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto sink = std::make_shared<BatchLogSink<int64_t>>();
  auto query = session.readStream(in)
                   .groupByKey(&Event::key)
                   .transformWithState([] { return Reminder{}; }, TimeMode::kProcessingTime)
                   .writeStream()
                   .outputMode(OutputMode::kUpdate)
                   .sink(sink)
                   .start();
  in->addData({{42, 0, 0}});
  for (int i = 0; i < 300 && sink->all().empty(); ++i) std::this_thread::sleep_for(10ms);
  query.stop();
  EXPECT_EQ(sink->all(), (std::vector<int64_t>{42}));
  auto batches = sink->batches();
  ASSERT_GE(batches.size(), 2u);
  EXPECT_EQ(batches.rbegin()->second, (std::vector<int64_t>{42})) << "fired by a later batch";
  EXPECT_EQ(query.recentProgress().back().numInputRows, 0) << "a batch without data fired it";
}

TEST(TransformWithState, TimeToLiveExpiresValuesInProcessingTime) {
  struct Remember {
    using Output = std::string;
    ValueState<int64_t> last;
    void init(ProcessorHandle<int64_t>& h) { last = h.valueState<int64_t>("last", {.ttl = 150ms}); }
    void handleInputRows(const int64_t&, std::span<const Event> rows, TimerValues, Collector<Output>& out) {
      out.emit(last.exists() ? "seen " + std::to_string(*last.get()) : "new");
      last.update(rows.back().value);
    }
  };
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto sink = std::make_shared<BatchLogSink<std::string>>();
  auto query = session.readStream(in)
                   .groupByKey(&Event::key)
                   .transformWithState([] { return Remember{}; })
                   .writeStream()
                   .outputMode(OutputMode::kAppend)
                   .sink(sink)
                   .start();
  in->addData({{1, 0, 10}});
  query.processAllAvailable();
  in->addData({{1, 0, 11}});
  query.processAllAvailable();
  std::this_thread::sleep_for(400ms);
  in->addData({{1, 0, 12}});
  query.processAllAvailable();
  query.stop();
  EXPECT_EQ(sink->all(), (std::vector<std::string>{"new", "seen 10", "new"}));
}

TEST(TransformWithState, StateAndTimersSurviveARestart) {
  auto dir = freshDir("tws-restart");
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.partitions = 2});
  auto run = [&] {
    Session session;
    auto sink = std::make_shared<BatchLogSink<std::string>>();
    auto query = session.readStream(in)
                     .withWatermark(&Event::ts, 0ms)
                     .groupByKey(&Event::key)
                     .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
                     .writeStream()
                     .outputMode(OutputMode::kUpdate)
                     .checkpointLocation(dir)
                     .trigger(Trigger::availableNow())
                     .sink(sink)
                     .start();
    query.awaitTermination();
    auto rows = sink->all();
    std::sort(rows.begin(), rows.end());
    return rows;
  };
  in->addData({{1, 1000, 1}, {1, 1100, 2}}, 0);
  in->addData({{2, 1000, 3}}, 1);
  EXPECT_TRUE(run().empty());
  in->addData({{1, 1200, 4}, {5, 10000, 0}}, 0);  // key 1 continues; watermark 10000 fires it
  in->addData({{2, 10000, 5}}, 1);
  EXPECT_EQ(run(), (std::vector<std::string>{"1@3200 n=3 recent=1,2,4, residues=1:2,2:1,"}));
  std::filesystem::remove_all(dir);
}

TEST(TransformWithState, RefusalsNameTheProblem) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  auto noop = [](const auto&, const BatchInfo&) {};
  expectRefused([&] {
    session.readStream(in).groupByKey(&Event::key)
        .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
        .writeStream().outputMode(OutputMode::kUpdate).foreachBatch(noop).start();
  }, "needs withWatermark");
  expectRefused([&] {
    session.readStream(in).withWatermark(&Event::ts, 0ms).groupByKey(&Event::key)
        .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
        .writeStream().outputMode(OutputMode::kComplete).foreachBatch(noop).start();
  }, "complete output mode");
  // Timers without a time mode: the handler's call fails the query with a message.
  in->addData({{1, 0, 0}});
  auto q = session.readStream(in).groupByKey(&Event::key)
               .transformWithState([] { return SessionProcessor{}; })
               .writeStream().outputMode(OutputMode::kUpdate).trigger(Trigger::availableNow()).foreachBatch(noop).start();
  try {
    q.awaitTermination();
    FAIL() << "registering a timer without a time mode was accepted";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("timers need TimeMode"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------------------ joins

struct Customer {
  int64_t id;
  int64_t tier;
};
using Joined = std::tuple<int64_t, int64_t, int64_t>;  // event value, key, tier (-1: none)

TEST(Joins, StreamStaticInnerAndLeftOuter) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.partitions = 2});
  in->addData({{1, 0, 10}, {2, 0, 20}}, 0);
  in->addData({{3, 0, 30}, {1, 0, 11}}, 1);
  auto table = StaticTable<Customer>::snapshot({{1, 5}, {2, 7}, {2, 8}});
  auto combine = [](const Event& e, const Customer* c) { return Joined{e.value, e.key, c ? c->tier : -1}; };
  auto inner = testing_util::runToCompletion<Joined>(
      session.readStream(in).joinStatic(table, &Event::key, &Customer::id, combine));
  std::sort(inner.begin(), inner.end());
  EXPECT_EQ(inner, (std::vector<Joined>{{10, 1, 5}, {11, 1, 5}, {20, 2, 7}, {20, 2, 8}}));
  auto outer = testing_util::runToCompletion<Joined>(
      session.readStream(in).joinStatic(table, &Event::key, &Customer::id, combine, JoinType::kLeftOuter));
  std::sort(outer.begin(), outer.end());
  EXPECT_EQ(outer, (std::vector<Joined>{{10, 1, 5}, {11, 1, 5}, {20, 2, 7}, {20, 2, 8}, {30, 3, -1}}));
}

TEST(Joins, AStaticTableLoadedPerBatchSeesItsChanges) {
  Session session;
  auto in = std::make_shared<MemoryStream<Event>>("events");
  std::mutex mu;
  std::vector<Customer> customers{{1, 5}};
  auto table = StaticTable<Customer>::perBatch([&] {
    std::lock_guard lock(mu);
    return customers;
  });
  auto sink = std::make_shared<BatchLogSink<Joined>>();
  auto query = session.readStream(in)
                   .joinStatic(table, &Event::key, &Customer::id,
                               [](const Event& e, const Customer* c) { return Joined{e.value, e.key, c ? c->tier : -1}; },
                               JoinType::kLeftOuter)
                   .writeStream().sink(sink).start();
  in->addData({{1, 0, 1}, {2, 0, 2}});
  query.processAllAvailable();
  {
    std::lock_guard lock(mu);
    customers.push_back({2, 9});
  }
  in->addData({{2, 0, 3}});
  query.processAllAvailable();
  query.stop();
  EXPECT_EQ(sink->all(), (std::vector<Joined>{{1, 1, 5}, {2, 2, -1}, {3, 2, 9}}));
}

struct Payment {
  int64_t orderKey;
  int64_t ts;
  int64_t amount;
};

TEST(Joins, StreamStreamInnerJoinMatchesAcrossBatchesInBothOrders) {
  Session session;
  auto orders = std::make_shared<MemoryStream<Event>>("orders");
  auto payments = std::make_shared<MemoryStream<Payment>>("payments");
  using Row = std::pair<int64_t, int64_t>;  // order value, payment amount
  auto sink = std::make_shared<BatchLogSink<Row>>();
  auto query = session.readStream(orders)
                   .join(session.readStream(payments), &Event::key, &Payment::orderKey,
                         [](const Event& o, const Payment* p) { return Row{o.value, p->amount}; })
                   .writeStream().sink(sink).start();
  orders->addData({{1, 0, 100}});
  query.processAllAvailable();
  payments->addData({{1, 0, 5}, {2, 0, 6}});  // matches the order in state; 2 waits
  query.processAllAvailable();
  orders->addData({{2, 0, 200}, {1, 0, 101}});  // 2 meets its payment; a second order 1 meets payment 5
  query.processAllAvailable();
  query.stop();
  auto rows = sink->all();
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<Row>{{100, 5}, {101, 5}, {200, 6}}));
}

TEST(Joins, LeftOuterStreamStreamJoinEmitsUnmatchedRowsWhenTheWatermarkPasses) {
  Session session;
  auto orders = std::make_shared<MemoryStream<Event>>("orders");
  auto payments = std::make_shared<MemoryStream<Payment>>("payments");
  using Row = std::pair<int64_t, int64_t>;
  auto sink = std::make_shared<BatchLogSink<Row>>();
  auto query = session.readStream(orders)
                   .withWatermark(&Event::ts, 0ms)
                   .join(session.readStream(payments).withWatermark(&Payment::ts, 0ms), &Event::key, &Payment::orderKey,
                         [](const Event& o, const Payment* p) { return Row{o.value, p ? p->amount : -1}; },
                         JoinType::kLeftOuter, timeRange(&Event::ts, &Payment::ts, 0ms, 5000ms))
                   .writeStream().sink(sink).start();
  orders->addData({{1, 1000, 100}, {2, 1000, 200}, {3, 1000, 300}});
  payments->addData({{1, 3000, 5}, {3, 9000, 7}});  // order 3's payment is too late (8 s after)
  query.processAllAvailable();
  EXPECT_EQ(sink->all(), (std::vector<Row>{{100, 5}}));
  orders->addData({{9, 20000, 900}});
  payments->addData({{9, 20000, 9}});  // both watermarks reach 20000: orders 2 and 3 are final
  query.processAllAvailable();
  query.stop();
  auto rows = sink->all();
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<Row>{{100, 5}, {200, -1}, {300, -1}, {900, 9}}));
  auto p = query.lastProgress()->stateOperators.at(0);
  EXPECT_EQ(p.operatorName, "symmetricHashJoin");
  EXPECT_LE(p.numRowsTotal, 2) << "evicted rows leave the state";
}

TEST(Joins, RefusalsNameTheProblem) {
  Session session;
  auto a = std::make_shared<MemoryStream<Event>>("a");
  auto b = std::make_shared<MemoryStream<Payment>>("b");
  auto combine = [](const Event& o, const Payment* p) { return o.value + (p ? p->amount : 0); };
  auto noop = [](const auto&, const BatchInfo&) {};
  expectRefused([&] {
    session.readStream(a).join(session.readStream(b), &Event::key, &Payment::orderKey, combine, JoinType::kLeftOuter);
  }, "needs a time range");
  expectRefused([&] {
    session.readStream(a).join(session.readStream(b), &Event::key, &Payment::orderKey, combine, JoinType::kLeftOuter,
                               timeRange(&Event::ts, &Payment::ts, 0ms, 1000ms))
        .writeStream().foreachBatch(noop).start();
  }, "needs withWatermark");
  expectRefused([&] {
    session.readStream(a).join(session.readStream(b), &Event::key, &Payment::orderKey, combine)
        .writeStream().outputMode(OutputMode::kUpdate).foreachBatch(noop).start();
  }, "only the append output mode");
}

// ------------------------------------------------------------------ crashes at every step


class CrashAtEveryStep : public ::testing::TestWithParam<Workload> {};

TEST_P(CrashAtEveryStep, OutputEqualsARunWithoutFailures) {
  stateful_testing::expectOutputEqualsARunWithoutFailures(GetParam());
}

INSTANTIATE_TEST_SUITE_P(Workloads, CrashAtEveryStep,
                         ::testing::Values(Workload::kUpdateCount, Workload::kCompleteSum, Workload::kAppendWindows,
                                           Workload::kUpdateWindows, Workload::kDedupWithinWatermark, Workload::kSessions,
                                           Workload::kOuterJoin, Workload::kSessionWindows),
                         [](const auto& info) { return workloadName(info.param); });

// The same, with batches overlapped: the next batch runs through the stateful operators while
// the current one is written, and the output must not change.
class CrashAtEveryStepOverlapped : public ::testing::TestWithParam<Workload> {};

TEST_P(CrashAtEveryStepOverlapped, OutputEqualsARunWithoutFailures) {
  stateful_testing::expectOutputEqualsARunWithoutFailures(GetParam(), nullptr, true);
}

INSTANTIATE_TEST_SUITE_P(Workloads, CrashAtEveryStepOverlapped,
                         ::testing::Values(Workload::kUpdateCount, Workload::kCompleteSum, Workload::kAppendWindows,
                                           Workload::kUpdateWindows, Workload::kDedupWithinWatermark, Workload::kSessions,
                                           Workload::kOuterJoin, Workload::kSessionWindows),
                         [](const auto& info) { return workloadName(info.param); });

// A batch processed ahead fails after its aggregation changed the state (here: in a map after
// it): the batch is prepared again from the state of the last commit, so nothing counts twice.
TEST(OverlappedBatches, AFailedRunAheadIsUndoneBeforeTheBatchRunsAgain) {
  auto run = [](bool failOnce) {
    Session session({.workerThreads = 2});
    auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = 5});
    std::vector<Event> events;
    for (int64_t i = 0; i < 40; ++i) events.push_back({i % 3, i, 1, i});
    in->addData(events);
    auto sink = std::make_shared<BatchLogSink<KeyCount>>();
    // Batch 0 is prepared in line; every later one ahead, while the previous one is written.
    auto thrown = std::make_shared<bool>(!failOnce);
    auto query = session.readStream(in)
                     .groupByKey(&Event::key)
                     .count()
                     .map([thrown](const KeyCount& r) {
                       if (!*thrown && r.value == 4) {
                         *thrown = true;
                         throw std::runtime_error("failed while running ahead");
                       }
                       return r;
                     })
                     .writeStream().outputMode(OutputMode::kUpdate).overlapBatches(true)
                     .trigger(Trigger::availableNow()).sink(sink).start();
    query.awaitTermination();
    EXPECT_TRUE(*thrown);
    auto batches = sink->batches();
    for (auto& [id, rows] : batches) rows = sorted(rows);
    return batches;
  };
  EXPECT_EQ(run(true), run(false));
}

// The brute-force oracle for append-mode tumbling windows over one partition: replays the batch
// boundaries and the watermark rule, and recomputes every window from the whole input.
TEST(EventTimeOracle, AppendWindowsEqualABruteForceRecomputation) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    auto data = randomInput(seed, 1, 400)[0];
    const int64_t batchSize = 25, delay = 2000, size = 3000;
    auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.maxRecordsPerBatch = batchSize});
    in->addData(data);
    int crashes = 0;
    Output got = runWorkload(Workload::kAppendWindows, in, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes);
    std::set<std::string> emitted;
    for (const auto& [id, rows] : got) {
      for (const auto& r : rows) EXPECT_TRUE(emitted.insert(r).second) << "window emitted twice: " << r;
    }
    // Oracle.
    int64_t watermark = kNoWatermark, maxSeen = kNoWatermark;
    std::map<std::pair<int64_t, int64_t>, std::pair<int64_t, int64_t>> windows;  // (start, key) -> (count, sum)
    for (size_t b = 0; b < data.size(); b += batchSize) {
      for (size_t i = b; i < std::min(data.size(), b + batchSize); ++i) {
        const Event& e = data[i];
        int64_t start = e.ts - e.ts % size;
        if (watermark != kNoWatermark && start + size <= watermark) continue;  // late
        auto& w = windows[{start, e.key}];
        ++w.first;
        w.second += e.value;
        maxSeen = std::max(maxSeen, e.ts);
      }
      for (size_t i = b; i < std::min(data.size(), b + batchSize); ++i) maxSeen = std::max(maxSeen, data[i].ts);
      watermark = std::max(watermark, maxSeen - delay);
    }
    std::set<std::string> expected;
    for (const auto& [k, v] : windows) {
      if (k.first + size > watermark) continue;  // not final at the end
      expected.insert(str(Windowed<int64_t>{{k.first, k.first + size}, k.second}) + "=" + std::to_string(v.first) + "," +
                      std::to_string(v.second));
    }
    EXPECT_EQ(emitted, expected) << "seed " << seed;
  }
}

}  // namespace
}  // namespace dataflow
