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
#include "testing/test_exchanges.h"

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using namespace table_testing;
using exchange_testing::LaggingExchange;
using exchange_testing::StaleCopiesExchange;

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

TEST(Table, ARowFunctionGetsThePreviousRowToCompleteAnEventThatLacksColumns) {
  Session session;
  auto in = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto sink = std::make_shared<BatchLogSink<OrderChange>>();
  // amount -1: the event did not carry the amount (as Debezium's placeholder for an unchanged
  // TOASTed value): keep the previous one.
  auto complete = [](const OrderEvent& e, const Order* previous) -> std::optional<Order> {
    if (e.deleted) return std::nullopt;
    Order o = e.row;
    if (o.amount == -1 && previous) o.amount = previous->amount;
    return o;
  };
  auto query = session.readStream(in).asTable(&OrderEvent::id, &OrderEvent::lsn, complete).toChangelog()
                   .writeStream().sink(sink).start();
  in->addData({{1, 1, false, {7, 100}}});
  query.processAllAvailable();
  in->addData({{1, 2, false, {8, -1}}});
  query.processAllAvailable();
  query.stop();
  EXPECT_EQ(sink->batches()[1], (std::vector<OrderChange>{{1, Order{7, 100}, Order{8, 100}}}));
}

TEST(TableAggregation, EqualsARecomputationFromTheFinalTable) {
  for (uint32_t seed : {1u, 2u, 3u, 4u, 5u}) {
    auto changelog = randomChangelog(seed, 2, 300);
    int crashes = 0;
    auto got = runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes);
    auto expected = recompute(changelog);
    ASSERT_GE(expected.size(), 5u) << "the changelog leaves groups to compare";
    EXPECT_EQ(got, expected) << "seed " << seed;
    crashes = 0;
    auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
    store->arm(CrashingStore::Step::kBeforeCommit, 6);
    EXPECT_EQ(runAggregation(changelog, store, &crashes, -1, nullptr, /*overlap=*/true), expected)
        << "seed " << seed << ", batches overlapped, a crash before a commit";
    EXPECT_EQ(crashes, 1);
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

TEST(TableAggregationThroughAnExchange, EqualsARecomputationAcrossCrashesAndStaleCopies) {
  using Step = CrashingStore::Step;
  int fired = 0;
  for (uint32_t seed : {1u, 2u, 3u}) {
    auto changelog = randomChangelog(seed, 3, 200);
    const auto expected = recompute(changelog);
    int crashes = 0;
    EXPECT_EQ(runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1, nullptr, false,
                             memoryExchange(4)),
              expected)
        << "seed " << seed;
    EXPECT_EQ(runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1, nullptr, false,
                             std::make_shared<StaleCopiesExchange>(memoryExchange(3), seed)),
              expected)
        << "seed " << seed << ", stale copies in the exchange";
    EXPECT_EQ(crashes, 0);
    for (Step step : {Step::kAfterOffsets, Step::kAfterState, Step::kBeforeCommit, Step::kAfterCommit}) {
      auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
      store->arm(step, static_cast<int64_t>(seed * 3 + 2));
      crashes = 0;
      EXPECT_EQ(runAggregation(changelog, store, &crashes, -1, nullptr, /*overlap=*/seed % 2 == 1, memoryExchange(2)),
                expected)
          << "seed " << seed << ", crash at step " << static_cast<int>(step);
      EXPECT_LE(crashes, 1);  // after the state it may hit a snapshot instead, which is retried, not a crash
      fired += crashes;
    }
  }
  EXPECT_GE(fired, 8) << "most injected crashes stop the query";
}

TEST(TableAggregationThroughAnExchange, AQueryOnANewCheckpointSkipsWhatAnEarlierOneLeftInTheLog) {
  auto exchange = memoryExchange(3);
  int crashes = 0;
  auto first = randomChangelog(5, 2, 100);
  EXPECT_EQ(runAggregation(first, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1, nullptr, false, exchange),
            recompute(first));
  // The same query name, so the same log; another checkpoint and other data.
  auto second = randomChangelog(6, 2, 100);
  EXPECT_EQ(runAggregation(second, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1, nullptr, false, exchange),
            recompute(second));
}

TEST(TableAggregationThroughAnExchange, ADeleteOnAPartitionThatNeverHeldTheKeyStillRemovesItsRow) {
  // A topic whose partitions were added routes a key anew: its insert sits in partition 0, its
  // delete arrives in partition 1, whose table never saw it.
  std::vector<std::vector<OrderEvent>> changelog = {
      {{1, 10, false, {7, 100}}, {2, 11, false, {7, 5}}, {3, 12, false, {8, 1}}},
      {{1, 20, true, {}}},
  };
  std::map<int64_t, Stats> expected = {{7, Stats{1, 5, 5, 5, 5.0}}, {8, Stats{1, 1, 1, 1, 1.0}}};
  int crashes = 0;
  EXPECT_EQ(runAggregation(changelog, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes, -1, nullptr, false,
                           memoryExchange(3)),
            expected);
}

TEST(TableAggregationThroughAnExchange, KeepsStatePerExchangePartitionAndNamesItsLogAfterTheQuery) {
  Session session;
  auto in = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto exchange = memoryExchange(4);
  auto sink = std::make_shared<BatchLogSink<StatsChange>>();
  auto writer = session.readStream(in)
                    .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                    .groupBy(&Order::customer)
                    .agg(count(), sum(&Order::amount), min(&Order::amount), max(&Order::amount), avg(&Order::amount))
                    .toChangelog()
                    .writeStream()
                    .exchange(exchange)
                    .sink(sink);
  EXPECT_THROW(
      {
        try {
          writer.build();
        } catch (const ConfigurationError& e) {
          EXPECT_NE(std::string(e.what()).find("queryName"), std::string::npos) << e.what();
          throw;
        }
      },
      ConfigurationError);
  EXPECT_NE(writer.explain().find("exchange=MemoryExchange[4 partitions]"), std::string::npos) << writer.explain();
  auto query = writer.queryName("stats").start();
  for (int64_t i = 0; i < 40; ++i) in->addData({{i, 100 + i, false, {i % 10, 5}}});
  query.processAllAvailable();
  in->addData({{3, 200, false, {4, 6}}});  // order 3 moves from customer 3 to customer 4
  query.processAllAvailable();
  query.stop();
  auto channel = exchange->channel("stats-groupBy-1");
  auto sent = channel->source()->latestOffsets();
  int64_t records = 0;
  for (const auto& [p, n] : sent.partitions()) records += n;
  EXPECT_GE(records, 41) << "each event went through the exchange, a move sending a removal as well";
  std::map<int64_t, Stats> table;
  for (const auto& [id, changes] : sink->batches()) applyChanges(table, changes);
  EXPECT_EQ(table[3], (Stats{3, 15, 5, 5, 5.0}));
  EXPECT_EQ(table[4], (Stats{5, 26, 5, 6, 5.2}));
  auto progress = query.lastProgress();
  ASSERT_TRUE(progress);
  bool perPartition = false;
  for (const auto& op : progress->stateOperators) {
    if (op.operatorName == "tableAggregate") perPartition = op.numStatePartitions > 1;
  }
  EXPECT_TRUE(perPartition) << "the groups' state is kept per exchange partition";
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

// ------------------------------------------------------------------ foreign-key joins

struct Customer {
  int64_t tier = 0;
  bool operator==(const Customer&) const = default;
};
struct CustomerEvent {
  int64_t id = 0;
  int64_t lsn = 0;
  bool deleted = false;
  Customer row;
};
auto customerRowOf = [](const CustomerEvent& e) { return e.deleted ? std::nullopt : std::optional<Customer>(e.row); };
using Enriched = std::tuple<int64_t, int64_t, int64_t>;  // customer, amount, tier (-1: no customer)
auto enrich = [](const Order& o, const Customer* c) { return Enriched{o.customer, o.amount, c ? c->tier : -1}; };
using EnrichedChange = TableChange<int64_t, Enriched>;

std::vector<CustomerEvent> randomCustomers(uint32_t seed, int n) {
  std::mt19937 rng(seed);
  std::vector<CustomerEvent> out;
  int64_t lsn = 1;
  for (int i = 0; i < n; ++i) {
    CustomerEvent e{static_cast<int64_t>(rng() % 7), lsn += 1 + static_cast<int64_t>(rng() % 2), rng() % 5 == 0,
                    Customer{static_cast<int64_t>(rng() % 4)}};
    if (!out.empty() && rng() % 10 == 0) e = out[rng() % out.size()];
    out.push_back(e);
  }
  return out;
}

template <class E, class Row>
std::map<int64_t, Row> finalTable(const std::vector<E>& events, auto rowFn) {
  std::map<int64_t, E> newest;
  for (const auto& e : events) {
    auto it = newest.find(e.id);
    if (it == newest.end() || it->second.lsn < e.lsn) newest[e.id] = e;
  }
  std::map<int64_t, Row> out;
  for (const auto& [id, e] : newest) {
    if (auto row = rowFn(e)) out[id] = *row;
  }
  return out;
}

// Applies a batch's join changes to a materialized table. Without an exchange one writer holds
// every row, so each change's `before` must be what the table holds; through one, a row's changes
// come from the partitions its order passed through, and, as the warehouse does, the table keeps
// per key the change of the greatest version, an equal version replacing.
void applyJoinChanges(std::map<int64_t, std::pair<int64_t, std::optional<Enriched>>>& table,
                      const std::vector<EnrichedChange>& changes, bool versioned) {
  for (const auto& c : changes) {
    auto it = table.find(c.key);
    if (versioned) {
      ASSERT_GT(c.version, 0) << "order " << c.key << ": a change through an exchange carries its version";
      if (it == table.end() || it->second.first <= c.version) table[c.key] = {c.version, c.after};
      continue;
    }
    EXPECT_EQ(c.version, 0);
    const bool held = it != table.end() && it->second.second;
    if (c.before) {
      EXPECT_TRUE(held && *it->second.second == *c.before) << "order " << c.key << ": wrong before image";
    } else {
      EXPECT_FALSE(held) << "order " << c.key << ": inserted twice";
    }
    table[c.key] = {0, c.after};
  }
}

std::map<int64_t, Enriched> runJoin(const std::vector<std::vector<OrderEvent>>& orders, const std::vector<CustomerEvent>& customers,
                                    JoinType type, std::shared_ptr<CrashingStore> store, int* crashes,
                                    std::shared_ptr<Exchange> exchange = nullptr, bool overlap = false) {
  auto orderIn = std::make_shared<MemoryStream<OrderEvent>>(
      "orders", MemoryStreamOptions{.partitions = static_cast<int>(orders.size()), .maxRecordsPerBatch = 13});
  for (size_t p = 0; p < orders.size(); ++p) orderIn->addData(orders[p], static_cast<int>(p));
  auto customerIn = std::make_shared<MemoryStream<CustomerEvent>>("customers", MemoryStreamOptions{.maxRecordsPerBatch = 5});
  customerIn->addData(customers);
  auto sink = std::make_shared<BatchLogSink<EnrichedChange>>();
  for (int attempt = 0; attempt < 5; ++attempt) {
    Session session({.workerThreads = 2});
    auto customerTable = session.readStream(customerIn).asTable(&CustomerEvent::id, &CustomerEvent::lsn, customerRowOf);
    auto query = session.readStream(orderIn)
                     .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                     .join(customerTable, &Order::customer, enrich, type)
                     .toChangelog()
                     .writeStream()
                     .queryName("enriched")
                     .exchange(exchange)
                     .overlapBatches(overlap)
                     .checkpoint(store)
                     .trigger(Trigger::availableNow())
                     .sink(sink)
                     .start();
    try {
      query.awaitTermination();
      break;
    } catch (const InternalError&) {
      ++*crashes;
    }
  }
  std::map<int64_t, std::pair<int64_t, std::optional<Enriched>>> held;
  for (const auto& [id, changes] : sink->batches()) applyJoinChanges(held, changes, exchange != nullptr);
  std::map<int64_t, Enriched> table;
  for (const auto& [key, row] : held) {
    if (row.second) table[key] = *row.second;
  }
  return table;
}

std::map<int64_t, Enriched> joinOracle(const std::vector<std::vector<OrderEvent>>& orders,
                                       const std::vector<CustomerEvent>& customers, JoinType type) {
  std::vector<OrderEvent> all;
  for (const auto& p : orders) all.insert(all.end(), p.begin(), p.end());
  auto o = finalTable<OrderEvent, Order>(all, rowOf);
  auto c = finalTable<CustomerEvent, Customer>(customers, customerRowOf);
  std::map<int64_t, Enriched> out;
  for (const auto& [id, order] : o) {
    auto it = c.find(order.customer);
    if (it == c.end() && type == JoinType::kInner) continue;
    out[id] = enrich(order, it == c.end() ? nullptr : &it->second);
  }
  return out;
}

TEST(TableJoin, InnerAndLeftJoinsEqualTheJoinOfTheFinalTablesAcrossCrashes) {
  using Step = CrashingStore::Step;
  for (JoinType type : {JoinType::kInner, JoinType::kLeftOuter}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      auto orders = randomChangelog(seed, 2, 150);
      auto customers = randomCustomers(seed + 100, 120);
      auto expected = joinOracle(orders, customers, type);
      ASSERT_GE(expected.size(), 10u);
      int crashes = 0;
      EXPECT_EQ(runJoin(orders, customers, type, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes), expected)
          << toString(type) << " seed " << seed;
      for (Step step : {Step::kAfterOffsets, Step::kAfterState, Step::kBeforeCommit}) {
        auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
        store->arm(step, 4 + seed);
        crashes = 0;
        EXPECT_EQ(runJoin(orders, customers, type, store, &crashes), expected)
            << toString(type) << " seed " << seed << " step " << static_cast<int>(step);
        EXPECT_EQ(crashes, 1);
      }
    }
  }
}

// orders LEFT JOIN customers, started (through `exchange` when given).
StreamingQuery leftJoinQuery(Session& session, std::shared_ptr<MemoryStream<OrderEvent>> orders,
                             std::shared_ptr<MemoryStream<CustomerEvent>> customers,
                             std::shared_ptr<BatchLogSink<EnrichedChange>> sink, std::shared_ptr<Exchange> exchange) {
  return session.readStream(orders)
      .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
      .join(session.readStream(customers).asTable(&CustomerEvent::id, &CustomerEvent::lsn, customerRowOf),
            &Order::customer, enrich, JoinType::kLeftOuter)
      .toChangelog().writeStream().queryName("enriched").exchange(exchange).sink(sink).start();
}

TEST(TableJoin, ACustomerChangeUpdatesEveryOneOfItsOrders) {
  Session session;
  auto orders = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto customers = std::make_shared<MemoryStream<CustomerEvent>>("customers");
  auto sink = std::make_shared<BatchLogSink<EnrichedChange>>();
  auto query = leftJoinQuery(session, orders, customers, sink, nullptr);
  customers->addData({{7, 1, false, {1}}});
  orders->addData({{1, 1, false, {7, 10}}, {2, 2, false, {7, 20}}, {3, 3, false, {8, 30}}});
  query.processAllAvailable();
  customers->addData({{7, 2, false, {2}}});  // tier 1 -> 2: both of customer 7's orders change
  query.processAllAvailable();
  customers->addData({{7, 3, true, {}}});    // customer 7 deleted: a left join keeps the orders, without tier
  query.processAllAvailable();
  query.stop();
  auto b = sink->batches();
  auto sorted = [](std::vector<EnrichedChange> v) {
    std::sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.key < y.key; });
    return v;
  };
  EXPECT_EQ(sorted(b[0]), (std::vector<EnrichedChange>{{1, std::nullopt, Enriched{7, 10, 1}},
                                                       {2, std::nullopt, Enriched{7, 20, 1}},
                                                       {3, std::nullopt, Enriched{8, 30, -1}}}));
  EXPECT_EQ(sorted(b[1]), (std::vector<EnrichedChange>{{1, Enriched{7, 10, 1}, Enriched{7, 10, 2}},
                                                       {2, Enriched{7, 20, 1}, Enriched{7, 20, 2}}}));
  EXPECT_EQ(sorted(b[2]), (std::vector<EnrichedChange>{{1, Enriched{7, 10, 2}, Enriched{7, 10, -1}},
                                                       {2, Enriched{7, 20, 2}, Enriched{7, 20, -1}}}));
}


// An exchange whose read-back lags on partition 0: what it holds is seen one poll late, so rows
// that move between partitions reach the new partition a batch before the old one hears they
// left, as when the old partition's owner is slow (scaled out).
TEST(TableJoinThroughAnExchange, EqualsTheJoinOfTheFinalTablesAcrossCrashesStaleCopiesAndLag) {
  using Step = CrashingStore::Step;
  int fired = 0;
  for (JoinType type : {JoinType::kInner, JoinType::kLeftOuter}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      auto orders = randomChangelog(seed, 2, 150);
      auto customers = randomCustomers(seed + 100, 120);
      auto expected = joinOracle(orders, customers, type);
      ASSERT_GE(expected.size(), 10u);
      int crashes = 0;
      EXPECT_EQ(runJoin(orders, customers, type, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes,
                        memoryExchange(3)),
                expected)
          << toString(type) << " seed " << seed;
      EXPECT_EQ(runJoin(orders, customers, type, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes,
                        std::make_shared<StaleCopiesExchange>(memoryExchange(4), seed)),
                expected)
          << toString(type) << " seed " << seed << ", stale copies";
      EXPECT_EQ(runJoin(orders, customers, type, std::make_shared<CrashingStore>(memoryCheckpoint()), &crashes,
                        std::make_shared<LaggingExchange>(memoryExchange(3)), /*overlap=*/true),
                expected)
          << toString(type) << " seed " << seed << ", partition 0 read late";
      EXPECT_EQ(crashes, 0);
      for (Step step : {Step::kAfterOffsets, Step::kAfterState, Step::kBeforeCommit, Step::kAfterCommit}) {
        auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
        store->arm(step, 3 + seed);
        crashes = 0;
        EXPECT_EQ(runJoin(orders, customers, type, store, &crashes, memoryExchange(2), seed % 2 == 1), expected)
            << toString(type) << " seed " << seed << " step " << static_cast<int>(step);
        EXPECT_LE(crashes, 1);
        fired += crashes;
      }
    }
  }
  EXPECT_GE(fired, 16) << "most injected crashes stop the query";
}

TEST(TableJoinThroughAnExchange, AnOrderMovedToAnotherPartitionsCustomerIsNotRemovedByTheOldPartition) {
  // Customers 1 and 2 land in different partitions of a 2-partition exchange; the old
  // partition (read late) removes the order after the new one wrote it.
  auto exchange = std::make_shared<LaggingExchange>(memoryExchange(2));
  auto partitionOf = [](int64_t customer) {
    std::string bytes;
    StateCodec<int64_t>::encode(customer, bytes);
    return stableHash(bytes) % 2;
  };
  int64_t a = 1, b = 2;
  while (partitionOf(b) == partitionOf(a)) ++b;
  if (partitionOf(a) != 0) std::swap(a, b);  // the order starts in partition 0, which lags
  Session session;
  auto orders = std::make_shared<MemoryStream<OrderEvent>>("orders");
  auto customers = std::make_shared<MemoryStream<CustomerEvent>>("customers");
  auto sink = std::make_shared<BatchLogSink<EnrichedChange>>();
  auto query = leftJoinQuery(session, orders, customers, sink, exchange);
  customers->addData({{a, 1, false, {10}}, {b, 2, false, {20}}});
  orders->addData({{7, 3, false, {a, 100}}});
  query.processAllAvailable();
  orders->addData({{7, 4, false, {b, 100}}});  // moves to customer b, of the other partition
  query.processAllAvailable();
  customers->addData({{b, 5, false, {21}}});
  query.processAllAvailable();
  query.stop();
  std::map<int64_t, std::pair<int64_t, std::optional<Enriched>>> table;
  std::vector<EnrichedChange> all;
  for (const auto& [id, changes] : sink->batches()) {
    applyJoinChanges(table, changes, true);
    all.insert(all.end(), changes.begin(), changes.end());
  }
  ASSERT_TRUE(table[7].second);
  EXPECT_EQ(*table[7].second, (Enriched{b, 100, 21}));
  EXPECT_EQ(table[7].first, 2 * 4 + 1) << "the row of the order's event at LSN 4";
  bool removal = false;
  for (const auto& c : all) removal |= c.key == 7 && !c.after && c.version == 2 * 4;
  EXPECT_TRUE(removal) << "the old partition removed the order with a version below the new row's";
  EXPECT_NE(query.explain().find("through the query's exchange by foreign key"), std::string::npos) << query.explain();
}

TEST(TableJoinThroughAnExchange, KeepsStatePerExchangePartitionAndRefusesDerivedTables) {
  Session session;
  auto orders = std::make_shared<MemoryStream<OrderEvent>>("orders", MemoryStreamOptions{.partitions = 2});
  auto customers = std::make_shared<MemoryStream<CustomerEvent>>("customers");
  auto sink = std::make_shared<BatchLogSink<EnrichedChange>>();
  auto customerTable = session.readStream(customers).asTable(&CustomerEvent::id, &CustomerEvent::lsn, customerRowOf);
  auto query = session.readStream(orders)
                   .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                   .join(customerTable, &Order::customer, enrich, JoinType::kInner)
                   .toChangelog().writeStream().queryName("enriched").exchange(memoryExchange(4)).sink(sink).start();
  for (int64_t c = 0; c < 8; ++c) customers->addData({{c, c + 1, false, {c}}});
  for (int64_t i = 0; i < 40; ++i) orders->addData({{i, 100 + i, false, {i % 8, 5}}}, static_cast<int>(i % 2));
  query.processAllAvailable();
  query.stop();
  int64_t rows = 0;
  for (const auto& [id, changes] : sink->batches()) rows += static_cast<int64_t>(changes.size());
  EXPECT_EQ(rows, 40);
  auto progress = query.lastProgress();
  ASSERT_TRUE(progress);
  bool perPartition = false;
  for (const auto& op : progress->stateOperators) {
    if (op.operatorName == "tableJoin") perPartition = op.numStatePartitions > 1;
  }
  EXPECT_TRUE(perPartition) << "the join's state is kept per exchange partition";

  // A joined table is a derived table: joining it again through an exchange is refused at start.
  auto joined = session.readStream(orders)
                    .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                    .join(customerTable, &Order::customer, enrich, JoinType::kInner);
  auto again = joined.join(customerTable, [](const Enriched& e) { return std::get<0>(e); },
                           [](const Enriched& e, const Customer*) { return e; });
  try {
    again.toChangelog().writeStream().queryName("twice").exchange(memoryExchange(2)).sink(sink).start();
    ADD_FAILURE() << "a join of a derived table through an exchange should be refused";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("derived"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dataflow
