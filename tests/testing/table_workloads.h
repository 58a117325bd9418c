// The table workload shared by the engine's tests and the state backends' tests: random order
// changelogs (inserts, updates that change the amount or move the row to another customer,
// deletes, replays and late older versions) through asTable -> groupBy(customer) -> count, sum,
// min, max, avg, and the oracle that recomputes the groups from the final table.
#pragma once

#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <tuple>
#include <vector>

#include "testing/stateful_workloads.h"

namespace dataflow::table_testing {

using stateful_testing::BatchLogSink;
using stateful_testing::CrashingStore;

struct Order {
  int64_t customer = 0;
  int64_t amount = 0;
  bool operator==(const Order&) const = default;
};

// A Debezium-like change event of the orders table.
struct OrderEvent {
  int64_t id = 0;
  int64_t lsn = 0;
  bool deleted = false;
  Order row;
};

inline auto rowOf = [](const OrderEvent& e) { return e.deleted ? std::nullopt : std::optional<Order>(e.row); };

using Stats = std::tuple<int64_t, int64_t, int64_t, int64_t, double>;  // count, sum, min, max, avg
using StatsChange = TableChange<int64_t, Stats>;

// Applies a batch's changes to a materialized table, checking that each change's `before` is
// what the table held (a sink can trust it to retract or to soft-delete).
inline void applyChanges(std::map<int64_t, Stats>& table, const std::vector<StatsChange>& changes) {
  for (const auto& c : changes) {
    auto it = table.find(c.key);
    if (c.before) {
      ASSERT_NE(it, table.end()) << "group " << c.key << ": before given for a group the sink does not have";
      EXPECT_EQ(it->second, *c.before) << "group " << c.key;
    } else {
      EXPECT_EQ(it, table.end()) << "group " << c.key << ": inserted twice";
    }
    if (c.after) {
      table[c.key] = *c.after;
    } else {
      table.erase(c.key);
    }
  }
}

// Random order events: inserts, updates (amount, and the customer: the row moves to another
// group), deletes and re-inserts, some events replayed and some older versions arriving late.
inline std::vector<std::vector<OrderEvent>> randomChangelog(uint32_t seed, int partitions, int perPartition) {
  std::mt19937 rng(seed);
  std::vector<std::vector<OrderEvent>> out(static_cast<size_t>(partitions));
  int64_t lsn = 100;
  for (int p = 0; p < partitions; ++p) {
    std::vector<OrderEvent> history;
    for (int i = 0; i < perPartition; ++i) {
      // Keys are per partition (as a topic keyed by primary key puts them).
      int64_t id = p * 1000 + static_cast<int64_t>(rng() % 40);
      OrderEvent e{id, lsn += 1 + static_cast<int64_t>(rng() % 3), rng() % 6 == 0,
                   Order{static_cast<int64_t>(rng() % 7), static_cast<int64_t>(rng() % 500) - 50}};
      if (e.deleted) e.row = {};
      if (!history.empty() && rng() % 10 == 0) {
        e = history[rng() % history.size()];  // a replay or an old version arriving late
      }
      history.push_back(e);
      out[static_cast<size_t>(p)].push_back(e);
    }
  }
  return out;
}

// The oracle: the final table (the newest version per key), grouped and aggregated from scratch.
inline std::map<int64_t, Stats> recompute(const std::vector<std::vector<OrderEvent>>& changelog) {
  std::map<int64_t, OrderEvent> newest;
  for (const auto& part : changelog) {
    for (const auto& e : part) {
      auto it = newest.find(e.id);
      if (it == newest.end() || it->second.lsn < e.lsn) newest[e.id] = e;
    }
  }
  std::map<int64_t, std::vector<int64_t>> groups;
  for (const auto& [id, e] : newest) {
    if (!e.deleted) groups[e.row.customer].push_back(e.row.amount);
  }
  std::map<int64_t, Stats> out;
  for (const auto& [g, amounts] : groups) {
    int64_t sum = 0;
    for (auto a : amounts) sum += a;
    out[g] = {static_cast<int64_t>(amounts.size()), sum, *std::min_element(amounts.begin(), amounts.end()),
              *std::max_element(amounts.begin(), amounts.end()), static_cast<double>(sum) / static_cast<double>(amounts.size())};
  }
  return out;
}

// Runs the per-customer aggregation over `changelog` to the end, restarting after each injected
// crash; returns the table the sink materialized from the changes.
inline std::map<int64_t, Stats> runAggregation(const std::vector<std::vector<OrderEvent>>& changelog,
                                        std::shared_ptr<CrashingStore> store, int* crashes, int64_t sinkCrashBatch = -1,
                                        std::shared_ptr<StateBackend> backend = nullptr, bool overlap = false,
                                        std::shared_ptr<Exchange> exchange = nullptr) {
  auto in = std::make_shared<MemoryStream<OrderEvent>>(
      "orders", MemoryStreamOptions{.partitions = static_cast<int>(changelog.size()), .maxRecordsPerBatch = 17});
  for (size_t p = 0; p < changelog.size(); ++p) in->addData(changelog[p], static_cast<int>(p));
  auto sink = std::make_shared<BatchLogSink<StatsChange>>();
  sink->beforeWrite = [sinkCrashBatch, fired = std::make_shared<bool>(false)](int64_t batchId) {
    if (batchId == sinkCrashBatch && !*fired) {
      *fired = true;
      throw InternalError("injected crash in the sink");
    }
  };
  for (int attempt = 0; attempt < 5; ++attempt) {
    Session session({.workerThreads = 2});
    auto query = session.readStream(in)
                     .asTable(&OrderEvent::id, &OrderEvent::lsn, rowOf)
                     .groupBy(&Order::customer)
                     .agg(count(), sum(&Order::amount), min(&Order::amount), max(&Order::amount), avg(&Order::amount))
                     .toChangelog()
                     .writeStream()
                     .queryName("stats")
                     .exchange(exchange)
                     .checkpoint(store)
                     .stateBackend(backend)
                     .option("state.cachedKeysPerPartition", backend ? "2" : "262144")
                     .overlapBatches(overlap)
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
  std::map<int64_t, Stats> table;
  for (const auto& [id, changes] : sink->batches()) applyChanges(table, changes);
  return table;
}

}  // namespace dataflow::table_testing
