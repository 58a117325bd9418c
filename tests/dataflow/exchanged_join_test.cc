// Stream-stream joins through an exchange (exchanged_join_operators.h): both streams regrouped
// by join key through one log, state per exchange partition. Random streams with crashes at
// every step of a batch, records sent again (replays, fenced processes) and a partition read
// late must give exactly the rows of the join computed from the whole input.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <tuple>
#include <vector>

#include "testing/group_log.h"
#include "testing/join_workloads.h"
#include "testing/stateful_workloads.h"
#include "testing/test_exchanges.h"

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using exchange_testing::LaggingExchange;
using group_testing::GroupLog;
using group_testing::Member;
using group_testing::PauseFirstBatch;
using exchange_testing::StaleCopiesExchange;
using stateful_testing::CrashingStore;
using namespace join_testing;

TEST(StreamJoinThroughAnExchange, EqualsTheJoinOfTheWholeInputAcrossCrashesCopiesAndLag) {
  using Step = CrashingStore::Step;
  int fired = 0;
  for (JoinType type : {JoinType::kInner, JoinType::kLeftOuter}) {
    for (uint32_t seed : {1u, 2u, 3u}) {
      auto w = randomWorkload(seed, 2, 3, 600);
      const auto expected = oracle(w, type);
      ASSERT_GE(expected.size(), 50u);
      auto plain = runJoin(w, type, memoryCheckpoint(), memoryExchange(3));
      EXPECT_EQ(plain.rows, expected) << toString(type) << " seed " << seed;
      EXPECT_EQ(plain.droppedLate, 0) << "no event is behind its partition's watermark";
      auto copies = runJoin(w, type, memoryCheckpoint(), std::make_shared<StaleCopiesExchange>(memoryExchange(4), seed));
      EXPECT_EQ(copies.rows, expected) << toString(type) << " seed " << seed << ", rows sent again";
      EXPECT_EQ(runJoin(w, type, memoryCheckpoint(), std::make_shared<LaggingExchange>(memoryExchange(3)), true).rows,
                expected)
          << toString(type) << " seed " << seed << ", partition 0 read late";
      for (Step step : {Step::kAfterOffsets, Step::kAfterState, Step::kBeforeCommit, Step::kAfterCommit}) {
        auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
        store->arm(step, 5 + seed);
        auto crashed = runJoin(w, type, store, memoryExchange(2), seed % 2 == 1);
        EXPECT_EQ(crashed.rows, expected) << toString(type) << " seed " << seed << " step " << static_cast<int>(step);
        EXPECT_LE(crashed.crashes, 1);
        fired += crashed.crashes;
      }
    }
  }
  EXPECT_GE(fired, 16) << "most injected crashes stop the query";
}


// The planner refuses what the exchange cannot replay exactly, at start(), and explain() shows
// the join going through the exchange.
TEST(StreamJoinThroughAnExchange, RowsWithoutASourceOffsetAreRefusedAndExplainShowsTheExchange) {
  Session session;
  auto clicks = std::make_shared<MemoryStream<Click>>("clicks");
  auto buys = std::make_shared<MemoryStream<Buy>>("buys");
  auto combine = [](const Click& c, const Buy* b) { return Joined{c.id, b ? b->id : -1}; };
  try {
    // Rows made by latestByKey have no origin: a row sent again could not be told from a new one.
    session.readStream(clicks)
        .latestByKey(&Click::id, &Click::ts)
        .join(session.readStream(buys), &Click::user, &Buy::user, combine)
        .writeStream().queryName("q").exchange(memoryExchange(2)).checkpoint(memoryCheckpoint())
        .foreachBatch([](const auto&, const BatchInfo&) {}).start();
    FAIL() << "a join of rows without origins was accepted through an exchange";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("the source offset it was made from"), std::string::npos) << e.what();
  }
  auto writer = session.readStream(clicks)
                    .filter([](const Click& c) { return c.user >= 0; })
                    .join(session.readStream(buys), &Click::user, &Buy::user, combine)
                    .writeStream().queryName("q").exchange(memoryExchange(2));
  EXPECT_NE(writer.explain().find("through the query's exchange by key"), std::string::npos) << writer.explain();
}

// A row behind its own source partition's watermark is late at the exchange partition: dropped,
// counted, and a dead letter when asked; a process running ahead on another partition does not
// make a slower partition's rows late.
TEST(StreamJoinThroughAnExchange, ARowBehindItsPartitionsWatermarkIsLateAndAnotherPartitionsPaceIsNot) {
  Session session;
  auto clicks = std::make_shared<MemoryStream<Click>>("clicks", MemoryStreamOptions{.partitions = 2});
  auto buys = std::make_shared<MemoryStream<Buy>>("buys");
  std::vector<DeadLetter> dead;
  auto sink = std::make_shared<BatchLogSink<Joined>>();
  auto query = session.readStream(clicks)
                   .withWatermark(&Click::ts, kDelay)
                   .join(session.readStream(buys).withWatermark(&Buy::ts, kDelay), &Click::user, &Buy::user,
                         [](const Click& c, const Buy* b) { return Joined{c.id, b ? b->id : -1}; }, JoinType::kInner,
                         timeRange(&Click::ts, &Buy::ts, kLower, kUpper))
                   .deadLetters([&](std::span<const DeadLetter> d, const BatchInfo&) { dead.insert(dead.end(), d.begin(), d.end()); })
                   .writeStream()
                   .queryName("late-join")
                   .exchange(memoryExchange(1))
                   .lateRecordsToDeadLetters()
                   .sink(sink)
                   .start();
  clicks->addData({{1, 10'000, 1}}, 0);
  clicks->addData({{1, 10'000, 2}}, 1);
  buys->addData({{1, 10'100, 3}});
  query.processAllAvailable();
  // Partition 0 runs 50 s ahead; partition 1's next click is within the delay of its own newest
  // event, so it still meets its buy, however far partition 0 has come.
  clicks->addData({{1, 60'000, 4}}, 0);
  buys->addData({{1, 60'000, 5}});
  query.processAllAvailable();
  clicks->addData({{1, 10'050, 6}}, 1);
  query.processAllAvailable();
  // Now partition 1 moves on too, and a click of it 10 s behind is late.
  clicks->addData({{1, 60'000, 7}}, 1);
  query.processAllAvailable();
  clicks->addData({{1, 50'000, 8}}, 1);
  query.processAllAvailable();
  query.stop();
  auto rows = sink->all();
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (std::vector<Joined>{{1, 3}, {2, 3}, {4, 5}, {6, 3}, {7, 5}}));
  ASSERT_EQ(dead.size(), 1u);
  EXPECT_EQ(dead[0].errorKind, "late_event");
  EXPECT_NE(dead[0].errorMessage.find("event time 50000 ms"), std::string::npos) << dead[0].errorMessage;
  int64_t dropped = 0;
  for (const auto& p : query.recentProgress()) {
    for (const auto& op : p.stateOperators) dropped += op.numRowsDroppedByWatermark;
  }
  EXPECT_EQ(dropped, 1);
}

// ---- Scaled out: the test stands in for the consumer group that assigns partitions.

// An exchange whose logs are GroupLogs: every instance writes them, and reads back the partitions
// the test assigns it, as with Kafka internal topics read by the query's consumer group.
class GroupExchange final : public Exchange {
 public:
  GroupExchange(std::shared_ptr<GroupLog<LogRecord>> log, int instance) : log_(std::move(log)), instance_(instance) {}
  std::shared_ptr<ExchangeChannel> channel(const std::string&) override { return std::make_shared<Channel>(log_, instance_); }
  std::string description() const override { return "GroupExchange"; }

 private:
  struct Channel final : ExchangeChannel {
    Channel(std::shared_ptr<GroupLog<LogRecord>> log, int instance)
        : log(std::move(log)), member(std::make_shared<Member<LogRecord>>(this->log, instance, true)) {}
    int32_t partitions() const override { return static_cast<int32_t>(log->partitions.size()); }
    void send(int32_t partition, std::string_view key, std::string_view value) override {
      std::lock_guard lock(log->mu);
      auto& part = log->partitions.at(static_cast<size_t>(partition));
      LogRecord r;
      r.topic = log->topic;
      r.partition = partition;
      r.offset = static_cast<int64_t>(part.size());
      r.key = std::string(key);
      r.hasKey = true;
      r.value = std::string(value);
      r.hasValue = true;
      part.push_back(std::move(r));
    }
    void flush() override {}
    std::shared_ptr<TypedSource<LogRecord>> source() override { return member; }
    std::shared_ptr<GroupLog<LogRecord>> log;
    std::shared_ptr<Member<LogRecord>> member;
  };
  std::shared_ptr<GroupLog<LogRecord>> log_;
  int instance_;
};

struct JoinedTable {
  std::mutex mu;
  std::vector<Joined> rows;
};

// Like the warehouse sink: a batch's rows become visible only with its partitions' offsets and
// state, in one step; a fenced instance's batch is refused. `gate` can hold a batch before that.
class CommittingSink final : public Sink<Joined> {
 public:
  CommittingSink(std::shared_ptr<CheckpointStore> store, std::shared_ptr<JoinedTable> table)
      : store_(std::move(store)), table_(std::move(table)) {}
  std::string description() const override { return "CommittingSink"; }
  void addBatch(const Batch<Joined>& batch, const BatchInfo& info) override {
    if (gate) gate(info);
    std::lock_guard lock(table_->mu);
    store_->commitPartitions(info);
    for (const Joined& j : batch.rows()) table_->rows.push_back(j);
  }
  std::function<void(const BatchInfo&)> gate;

 private:
  std::shared_ptr<CheckpointStore> store_;
  std::shared_ptr<JoinedTable> table_;
};

struct ScaledJoin {
  std::shared_ptr<GroupLog<Click>> clicks = std::make_shared<GroupLog<Click>>("clicks", 2);
  std::shared_ptr<GroupLog<Buy>> buys = std::make_shared<GroupLog<Buy>>("buys", 2);
  std::shared_ptr<GroupLog<LogRecord>> exchange = std::make_shared<GroupLog<LogRecord>>("clicks-buys-join-1", 3);
  std::shared_ptr<CheckpointStore> store = memoryCheckpoint();
  std::shared_ptr<JoinedTable> table = std::make_shared<JoinedTable>();
  Session session{{.workerThreads = 2}};

  struct Instance {
    std::shared_ptr<Member<Click>> clicks;
    StreamingQuery query;
  };
  Instance start(int instance, JoinType type, std::function<void(const BatchInfo&)> gate = {}) {
    auto clickSource = std::make_shared<Member<Click>>(clicks, instance);
    auto sink = std::make_shared<CommittingSink>(store, table);
    sink->gate = std::move(gate);
    auto query = session.readStream(clickSource)
                     .withWatermark(&Click::ts, kDelay)
                     .join(session.readStream(std::make_shared<Member<Buy>>(buys, instance)).withWatermark(&Buy::ts, kDelay),
                           &Click::user, &Buy::user,
                           [](const Click& c, const Buy* b) { return Joined{c.id, b ? b->id : -1}; }, type,
                           timeRange(&Click::ts, &Buy::ts, kLower, kUpper))
                     .writeStream()
                     .queryName("clicks-buys")
                     .exchange(std::make_shared<GroupExchange>(exchange, instance))
                     .option("state.minDeltasForSnapshot", "2")
                     .checkpoint(store)
                     .sink(sink)
                     .start();
    return {clickSource, std::move(query)};
  }
  void assignAll(int instance) {
    for (int32_t p = 0; p < 2; ++p) clicks->assign(p, instance), buys->assign(p, instance);
    for (int32_t p = 0; p < 3; ++p) exchange->assign(p, instance);
  }
  // Appends the workload's events with positions in [from, until) of each partition.
  void append(const Workload& w, size_t from, size_t until) {
    for (size_t p = 0; p < 2; ++p) {
      auto slice = [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        return V(v.begin() + static_cast<std::ptrdiff_t>(std::min(from, v.size())),
                 v.begin() + static_cast<std::ptrdiff_t>(std::min(until, v.size())));
      };
      clicks->append(static_cast<int32_t>(p), slice(w.clicks[p]));
      buys->append(static_cast<int32_t>(p), slice(w.buys[p]));
    }
  }
  std::vector<Joined> output() {
    std::lock_guard lock(table->mu);
    auto rows = table->rows;
    std::sort(rows.begin(), rows.end());
    return rows;
  }
};

// Exchange partitions (with their rows of both sides and their clocks) and source partitions
// move between two processes, and a process fenced mid-batch has already sent its rows into the
// exchange: every joined row is written exactly once, as the join of the whole input.
TEST(StreamJoinThroughAnExchange, ScaledOutPartitionsMoveWithTheirStateAndAFencedProcessChangesNothing) {
  for (JoinType type : {JoinType::kInner, JoinType::kLeftOuter}) {
    ScaledJoin f;
    auto w = randomWorkload(7, 2, 2, 900);
    const auto expected = oracle(w, type);
    f.assignAll(0);
    f.append(w, 0, 80);
    auto a = f.start(0, type);
    a.query.processAllAvailable();

    // A second process joins: it takes exchange partitions 1 and 2 and a partition of each side.
    auto b = f.start(1, type);
    f.exchange->assign(1, 1);
    f.exchange->assign(2, 1);
    f.clicks->assign(1, 1);
    f.buys->assign(0, 1);
    f.append(w, 80, 160);
    for (int round = 0; round < 3; ++round) {
      a.query.processAllAvailable();
      b.query.processAllAvailable();
    }

    // Process A hangs before committing a batch whose rows it already sent through the
    // exchange; the group gives everything it had to B, which restores it at A's last commit.
    a.query.stop();
    f.append(w, 160, 240);
    PauseFirstBatch pause;
    auto zombie = f.start(0, type, pause.gate());
    pause.awaitPaused();
    f.assignAll(1);
    f.append(w, 240, 320);
    for (int round = 0; round < 3; ++round) b.query.processAllAvailable();
    pause.resume();
    for (int i = 0; i < 500 && zombie.clicks->fenced().empty(); ++i) std::this_thread::sleep_for(10ms);
    ASSERT_FALSE(zombie.clicks->fenced().empty()) << "the paused process was not fenced";
    zombie.query.stop();

    f.append(w, 320, 100000);
    for (int round = 0; round < 3; ++round) b.query.processAllAvailable();
    for (size_t p = 0; p < 2; ++p) {
      f.clicks->append(static_cast<int32_t>(p), w.flushClicks[p]);
      f.buys->append(static_cast<int32_t>(p), w.flushBuys[p]);
    }
    for (int round = 0; round < 3; ++round) b.query.processAllAvailable();
    b.query.stop();
    auto got = f.output();
    std::vector<Joined> missing, unexpected;
    std::set_difference(expected.begin(), expected.end(), got.begin(), got.end(), std::back_inserter(missing));
    std::set_difference(got.begin(), got.end(), expected.begin(), expected.end(), std::back_inserter(unexpected));
    EXPECT_TRUE(missing.empty()) << toString(type) << ": " << ::testing::PrintToString(missing);
    EXPECT_TRUE(unexpected.empty()) << toString(type) << ": " << ::testing::PrintToString(unexpected);
    EXPECT_GT(expected.size(), 100u);
  }
}

}  // namespace
}  // namespace dataflow
