// Tables over changelogs (table.h): the current row per key with before/after images, version
// order (replays and late older events change nothing), and aggregations that retract updated and
// deleted rows, checked against a recomputation from the final table for random changelogs, with
// crashes injected at every step of a batch.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <tuple>

#include "testing/table_workloads.h"

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using namespace table_testing;

using OrderChange = TableChange<int64_t, Order>;

TEST(Table, ChangesCarryTheValueBeforeAndAfterAndOlderVersionsAreIgnored) {
  Session session;
  auto in = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto sink = std::make_shared<BatchLogSink<OrderChange>>();
  auto query = session.readStream(in).asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf).toChangelog()
                   .writeStream().sink(sink).start();
  in->addData({{1, 10, false, {7, 100}}, {2, 11, false, {8, 50}}});
  query.processAllAvailable();
  in->addData({{1, 12, false, {7, 120}},     // update: before from state (no before image needed)
               {2, 9, false, {8, 999}},      // older than what is kept: ignored
               {3, 13, false, {9, 5}},       // inserted and deleted in one batch: no change
               {3, 14, true, {}},
               {1, 12, false, {7, 120}}});   // a replay of the same version: ignored
  query.processAllAvailable();
  in->addData({{2, 15, true, {}}, {2, 11, false, {8, 50}}});  // a delete, then an older insert replayed
  query.processAllAvailable();
  in->addData({{1, 16, false, {7, 120}}});  // a new version with the same row: no change
  query.processAllAvailable();
  query.stop();
  auto batches = sink->batches();
  EXPECT_EQ(batches[0], (std::vector<OrderChange>{{1, std::nullopt, Order{7, 100}}, {2, std::nullopt, Order{8, 50}}}));
  EXPECT_EQ(batches[1], (std::vector<OrderChange>{{1, Order{7, 100}, Order{7, 120}}}));
  EXPECT_EQ(batches[2], (std::vector<OrderChange>{{2, Order{8, 50}, std::nullopt}}));
  EXPECT_TRUE(batches[3].empty());
}

TEST(TableAggregation, EqualsARecomputationFromTheFinalTable) {
  for (uint32_t seed : {1u, 2u, 3u, 4u, 5u}) {
    auto changelog = randomChangelog(seed, 2, 300);
    int crashes = 0;
    auto got = runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes);
    auto expected = recompute(changelog);
    ASSERT_GE(expected.size(), 5u) << "the changelog leaves groups to compare";
    EXPECT_EQ(got, expected) << "seed " << seed;
  }
}

TEST(TableAggregation, ACrashAtEveryStepOfABatchChangesNothing) {
  auto changelog = randomChangelog(42, 2, 200);
  const auto expected = recompute(changelog);
  using Step = CrashingStore::Step;
  std::mt19937 rng(3);
  int fired = 0;
  for (Step step : {Step::kAfterOffsets, Step::kBeforeState, Step::kAfterState, Step::kBeforeCommit, Step::kAfterCommit}) {
    for (int round = 0; round < 3; ++round) {
      int64_t batch = static_cast<int64_t>(rng() % 20);
      auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
      store->arm(step, batch);
      int crashes = 0;
      EXPECT_EQ(runAggregation(changelog, store, &crashes), expected) << "step " << static_cast<int>(step) << " batch " << batch;
      EXPECT_EQ(crashes, store->fired() ? 1 : 0);
      fired += crashes;
    }
  }
  EXPECT_GE(fired, 10) << "most injected crashes happen (the batch exists)";
  for (int round = 0; round < 3; ++round) {
    int crashes = 0;
    int64_t batch = static_cast<int64_t>(rng() % 20);
    EXPECT_EQ(runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, batch), expected)
        << "crash in the sink at batch " << batch;
    EXPECT_EQ(crashes, 1);
  }
}

TEST(TableAggregation, ARowMovingToAnotherGroupLeavesTheOldOneAndAnEmptyGroupIsDeleted) {
  Session session;
  auto in = std::make_shared<MemoryStream<OrderEvent>>("orders");
  using Row = TableChange<int64_t, std::tuple<int64_t, int64_t>>;
  auto sink = std::make_shared<BatchLogSink<Row>>();
  auto query = session.readStream(in)
                   .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                   .groupBy(&Order::customer)
                   .agg(count(), max(&Order::amount))
                   .toChangelog()
                   .writeStream().outputMode(OutputMode::kUpdate).sink(sink).start();
  in->addData({{1, 1, false, {7, 100}}, {2, 2, false, {7, 300}}});
  query.processAllAvailable();
  in->addData({{2, 3, false, {8, 300}}});  // order 2 moves from customer 7 to 8: 7's max falls back to 100
  query.processAllAvailable();
  in->addData({{1, 4, true, {}}});  // customer 7's last order is deleted
  query.processAllAvailable();
  query.stop();
  auto b = sink->batches();
  EXPECT_EQ(b[0], (std::vector<Row>{{7, std::nullopt, std::tuple{int64_t{2}, int64_t{300}}}}));
  auto second = b[1];
  std::sort(second.begin(), second.end(), [](const Row& x, const Row& y) { return x.key < y.key; });
  EXPECT_EQ(second, (std::vector<Row>{{7, std::tuple{int64_t{2}, int64_t{300}}, std::tuple{int64_t{1}, int64_t{100}}},
                                      {8, std::nullopt, std::tuple{int64_t{1}, int64_t{300}}}}));
  EXPECT_EQ(b[2], (std::vector<Row>{{7, std::tuple{int64_t{1}, int64_t{100}}, std::nullopt}}));
  auto p = query.lastProgress()->stateOperators;
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].operatorName, "tableStateStore");
  EXPECT_EQ(p[1].operatorName, "tableAggregate");
  EXPECT_EQ(p[1].numRowsTotal, 1) << "the empty group left the state";
}

TEST(TableAggregation, CompleteModeIsRefusedAndExplainShowsTheTableOperators) {
  Session session;
  auto in = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto table = session.readStream(in).asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf).groupBy(&Order::customer).count();
  auto plan = table.explain();
  EXPECT_NE(plan.find("AsTable"), std::string::npos) << plan;
  EXPECT_NE(plan.find("TableAggregate"), std::string::npos) << plan;
  try {
    table.toChangelog().writeStream().outputMode(OutputMode::kComplete).foreachBatch([](const auto&, const BatchInfo&) {}).start();
    FAIL() << "complete mode accepted";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("not complete"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dataflow
