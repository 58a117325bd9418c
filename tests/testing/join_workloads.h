// The stream-stream join workload shared by the engine's exchange tests and the Kafka exchange's:
// clicks joined with buys of the same user within a time range, random streams over several
// partitions, the oracle that joins the whole input, and a runner that drains a query through an
// exchange, restarting it after each crash.
#pragma once

#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "testing/stateful_workloads.h"

namespace dataflow::join_testing {

using namespace std::chrono_literals;
using stateful_testing::BatchLogSink;

struct Click {
  int64_t user;
  int64_t ts;
  int64_t id;
};
struct Buy {
  int64_t user;
  int64_t ts;
  int64_t id;
};
using Joined = std::pair<int64_t, int64_t>;  // click id, buy id (-1: no buy)

inline constexpr auto kLower = -200ms, kUpper = 300ms, kDelay = 1000ms;
inline constexpr int64_t kFlushTs = 1'000'000'000;

struct Workload {
  std::vector<std::vector<Click>> clicks;  // by partition
  std::vector<std::vector<Buy>> buys;
  // Appended once the rest is processed, so that they come last in every exchange partition.
  std::vector<std::vector<Click>> flushClicks;
  std::vector<std::vector<Buy>> flushBuys;
};

// Events over a common clock (10 ms apart, up to 40 ms out of order), dealt round-robin to the
// partitions, so no event is behind the watermark; and, per side, events far in the future for
// users of their own (they match nothing) that move every exchange partition's clock past the
// rest.
inline Workload randomWorkload(uint32_t seed, int clickPartitions, int buyPartitions, int events) {
  std::mt19937 rng(seed);
  Workload w;
  w.clicks.resize(static_cast<size_t>(clickPartitions));
  w.buys.resize(static_cast<size_t>(buyPartitions));
  int64_t id = 0;
  for (int i = 0; i < events; ++i) {
    int64_t ts = 1000 + i * 10 + static_cast<int64_t>(rng() % 41) - 40;
    int64_t user = static_cast<int64_t>(rng() % 12);
    if (rng() % 2 == 0) {
      w.clicks[static_cast<size_t>(i) % w.clicks.size()].push_back({user, ts, ++id});
    } else {
      w.buys[static_cast<size_t>(i) % w.buys.size()].push_back({user, ts, ++id});
    }
  }
  w.flushClicks.resize(w.clicks.size());
  w.flushBuys.resize(w.buys.size());
  for (int64_t u = 0; u < 24; ++u) {
    w.flushClicks[static_cast<size_t>(u) % w.clicks.size()].push_back({1000 + u, kFlushTs, ++id});
    w.flushBuys[static_cast<size_t>(u) % w.buys.size()].push_back({2000 + u, kFlushTs, ++id});
  }
  return w;
}

inline std::vector<Joined> oracle(const Workload& w, JoinType type) {
  std::vector<Joined> out;
  for (const auto& part : w.clicks) {
    for (const Click& c : part) {
      bool matched = false;
      for (const auto& bpart : w.buys) {
        for (const Buy& b : bpart) {
          int64_t d = b.ts - c.ts;
          if (b.user == c.user && d >= kLower.count() && d <= kUpper.count()) {
            out.emplace_back(c.id, b.id);
            matched = true;
          }
        }
      }
      if (!matched && type == JoinType::kLeftOuter) out.emplace_back(c.id, -1);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct RunResult {
  std::vector<Joined> rows;
  int64_t droppedLate = 0;
  int crashes = 0;
};

inline RunResult runJoin(const Workload& w, JoinType type, std::shared_ptr<CheckpointStore> store,
                  std::shared_ptr<Exchange> exchange, bool overlap = false) {
  auto clicks = std::make_shared<MemoryStream<Click>>(
      "clicks", MemoryStreamOptions{.partitions = static_cast<int>(w.clicks.size()), .maxRecordsPerBatch = 11});
  auto buys = std::make_shared<MemoryStream<Buy>>(
      "buys", MemoryStreamOptions{.partitions = static_cast<int>(w.buys.size()), .maxRecordsPerBatch = 17});
  auto sink = std::make_shared<BatchLogSink<Joined>>();
  RunResult result;
  // Runs the query until it has read everything, restarting it after each crash.
  auto drain = [&] {
    for (int attempt = 0; attempt < 5; ++attempt) {
      Session session({.workerThreads = 2});
      auto query = session.readStream(clicks)
                       .withWatermark(&Click::ts, kDelay)
                       .join(session.readStream(buys).withWatermark(&Buy::ts, kDelay), &Click::user, &Buy::user,
                             [](const Click& c, const Buy* b) { return Joined{c.id, b ? b->id : -1}; }, type,
                             timeRange(&Click::ts, &Buy::ts, kLower, kUpper))
                       .writeStream()
                       .queryName("clicks-buys")
                       .exchange(exchange)
                       .overlapBatches(overlap)
                       .checkpoint(store)
                       .trigger(Trigger::availableNow())
                       .sink(sink)
                       .start();
      try {
        query.awaitTermination();
        for (const auto& p : query.recentProgress()) {
          for (const auto& op : p.stateOperators) result.droppedLate += op.numRowsDroppedByWatermark;
        }
        return;
      } catch (const InternalError&) {
        ++result.crashes;
      }
    }
    FAIL() << "the query did not finish";
  };
  for (size_t p = 0; p < w.clicks.size(); ++p) clicks->addData(w.clicks[p], static_cast<int>(p));
  for (size_t p = 0; p < w.buys.size(); ++p) buys->addData(w.buys[p], static_cast<int>(p));
  drain();
  for (size_t p = 0; p < w.clicks.size(); ++p) clicks->addData(w.flushClicks[p], static_cast<int>(p));
  for (size_t p = 0; p < w.buys.size(); ++p) buys->addData(w.flushBuys[p], static_cast<int>(p));
  drain();
  result.rows = sink->all();
  std::sort(result.rows.begin(), result.rows.end());
  return result;
}

}  // namespace dataflow::join_testing
