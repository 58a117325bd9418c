// Scale-out: several instances of one query share partitions handed out by a coordinator (here
// the test, standing in for a Kafka consumer group) and one checkpoint store that keeps offsets
// per partition and fences instances that lost a partition.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "testing/group_log.h"

namespace dataflow {
namespace {

using namespace std::chrono_literals;
using group_testing::GroupLog;
using group_testing::Member;
using group_testing::PauseFirstBatch;

// A partitioned log and who owns each partition, like a consumer group's assignment.
// Values from..until-1, for a partition of the log.
std::vector<int> range(int from, int until) {
  std::vector<int> v;
  for (int i = from; i < until; ++i) v.push_back(i);
  return v;
}

// Like the warehouse sink: a batch's rows become visible only when its partition offsets (and
// state changes) commit, in the same step; `publish` puts them into `Table` under its mutex.
// `gate`, when set, holds a batch before its commit.
template <class Row, class Table>
class TransactionalSink final : public Sink<Row> {
 public:
  using Publish = std::function<void(const Batch<Row>&, Table&)>;
  TransactionalSink(std::shared_ptr<CheckpointStore> store, std::shared_ptr<Table> table, Publish publish)
      : store_(std::move(store)), table_(std::move(table)), publish_(std::move(publish)) {}
  std::string description() const override { return "TransactionalSink"; }
  void addBatch(const Batch<Row>& batch, const BatchInfo& info) override {
    if (gate) gate(info);
    std::lock_guard lock(table_->mu);
    store_->commitPartitions(info);  // throws PartitionsFencedError: nothing becomes visible
    publish_(batch, *table_);
  }
  std::function<void(const BatchInfo&)> gate;

 private:
  std::shared_ptr<CheckpointStore> store_;
  std::shared_ptr<Table> table_;
  Publish publish_;
};

struct TransactionalOutput {
  std::mutex mu;
  std::vector<int> rows;
};

std::vector<int> sorted(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

struct Fixture {
  std::shared_ptr<GroupLog<int>> log;
  std::shared_ptr<CheckpointStore> store = memoryCheckpoint();
  std::shared_ptr<TransactionalOutput> out = std::make_shared<TransactionalOutput>();
  Session session;

  explicit Fixture(int partitions) : log(std::make_shared<GroupLog<int>>("log", partitions)) {}

  struct Instance {
    std::shared_ptr<Member<int>> source;
    std::shared_ptr<TransactionalSink<int, TransactionalOutput>> sink;
    StreamingQuery query;
  };
  Instance start(int instance, std::function<void(const BatchInfo&)> gate = {}) {
    auto source = std::make_shared<Member<int>>(log, instance);
    auto sink = std::make_shared<TransactionalSink<int, TransactionalOutput>>(
        store, out, [](const Batch<int>& batch, TransactionalOutput& o) {
          for (int v : batch.rows()) o.rows.push_back(v);
        });
    sink->gate = std::move(gate);
    auto query = session.readStream(source).writeStream().queryName("scaled").checkpoint(store).sink(sink).start();
    return {source, sink, std::move(query)};
  }
  std::vector<int> output() {
    std::lock_guard lock(out->mu);
    return sorted(out->rows);
  }
};

TEST(ScaleOut, InstancesSharePartitionsAndEachRecordIsWrittenOnce) {
  Fixture f(4);
  for (int32_t p = 0; p < 4; ++p) {
    f.log->append(p, range(p * 1000, p * 1000 + 250));
    f.log->assign(p, p % 2);
  }
  auto a = f.start(0);
  auto b = f.start(1);
  a.query.processAllAvailable();
  b.query.processAllAvailable();
  for (int32_t p = 0; p < 4; ++p) f.log->append(p, range(p * 1000 + 250, p * 1000 + 500));
  a.query.processAllAvailable();
  b.query.processAllAvailable();
  a.query.stop();
  b.query.stop();
  std::vector<int> expected;
  for (int p = 0; p < 4; ++p) {
    for (int v = p * 1000; v < p * 1000 + 500; ++v) expected.push_back(v);
  }
  EXPECT_EQ(f.output(), expected);
  // Both did work.
  EXPECT_GT(a.query.lastProgress().value().batchId + b.query.lastProgress().value().batchId, 0);
}

TEST(ScaleOut, AReassignedPartitionResumesFromItsCommittedOffset) {
  Fixture f(2);
  f.log->append(0, range(0, 100));
  f.log->append(1, range(1000, 1100));
  f.log->assign(0, 0);
  f.log->assign(1, 0);
  auto a = f.start(0);
  a.query.processAllAvailable();
  // A second instance joins: the coordinator moves partition 1 to it.
  auto b = f.start(1);
  f.log->assign(1, 1);
  a.query.processAllAvailable();  // A drops partition 1 between batches
  f.log->append(1, range(1100, 1200));
  b.query.processAllAvailable();
  // The first instance goes away: everything moves to the second.
  a.query.stop();
  f.log->assign(0, 1);
  f.log->append(0, range(100, 200));
  b.query.processAllAvailable();
  b.query.stop();
  std::vector<int> expected = iota(200);
  for (int v = 1000; v < 1200; ++v) expected.push_back(v);
  EXPECT_EQ(f.output(), expected);
}

TEST(ScaleOut, AnInstanceThatLostItsPartitionCannotCommitForIt) {
  Fixture f(1);
  f.log->append(0, range(0, 10));
  f.log->assign(0, 0);
  // The zombie: its first batch stops before committing, as if the process were paused.
  PauseFirstBatch pause;
  auto zombie = f.start(0, pause.gate());
  pause.awaitPaused();
  // Meanwhile the group gives the partition to another instance, which leases it and commits.
  f.log->assign(0, 1);
  auto successor = f.start(1);
  f.log->append(0, range(10, 20));
  successor.query.processAllAvailable();
  pause.resume();
  // The zombie's batch is refused and abandoned; the zombie keeps running without the partition.
  for (int i = 0; i < 500 && zombie.source->fenced().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(zombie.source->fenced(), (std::vector<PartitionId>{{"log", 0}}));
  EXPECT_TRUE(zombie.query.isActive());
  successor.query.stop();
  zombie.query.stop();
  EXPECT_EQ(f.output(), iota(20));
}

// Stateful scale-out: a running count per (partition, value % 7). The sink commits the batch's
// offsets (and with them its state changes) and then publishes the counts, like the warehouse.
struct CountTable {
  std::mutex mu;
  std::map<std::pair<int32_t, int>, int64_t> counts;  // (partition, key) -> latest count
};

struct StatefulFixture {
  std::shared_ptr<GroupLog<int>> log;
  std::shared_ptr<CheckpointStore> store = memoryCheckpoint();
  std::shared_ptr<CountTable> table = std::make_shared<CountTable>();
  Session session;
  explicit StatefulFixture(int partitions) : log(std::make_shared<GroupLog<int>>("log", partitions)) {}
  struct Instance {
    std::shared_ptr<Member<int>> source;
    StreamingQuery query;
  };
  Instance start(int instance, std::function<void(const BatchInfo&)> gate = {}) {
    auto source = std::make_shared<Member<int>>(log, instance);
    auto sink = std::make_shared<TransactionalSink<KeyValue<int, int64_t>, CountTable>>(
        store, table, [](const Batch<KeyValue<int, int64_t>>& batch, CountTable& t) {
          for (const auto& part : batch.partitions()) {
            for (const auto& kv : part.rows) t.counts[{part.id.partition, kv.key}] = kv.value;
          }
        });
    sink->gate = std::move(gate);
    auto query = session.readStream(source)
                     .groupByKey([](int v) { return v % 7; })
                     .count()
                     .writeStream()
                     .queryName("scaled-counts")
                     .outputMode(OutputMode::kUpdate)
                     .option("state.minDeltasForSnapshot", "2")
                     .checkpoint(store)
                     .sink(sink)
                     .start();
    return {source, std::move(query)};
  }
  std::map<std::pair<int32_t, int>, int64_t> expected() {
    std::lock_guard lock(log->mu);
    std::map<std::pair<int32_t, int>, int64_t> out;
    for (size_t p = 0; p < log->partitions.size(); ++p) {
      for (int v : log->partitions[p]) ++out[{static_cast<int32_t>(p), v % 7}];
    }
    return out;
  }
  std::map<std::pair<int32_t, int>, int64_t> counts() {
    std::lock_guard lock(table->mu);
    return table->counts;
  }
};

TEST(ScaleOut, StateMovesWithItsPartition) {
  StatefulFixture f(2);
  f.log->append(0, range(0, 100));
  f.log->append(1, range(1000, 1100));
  f.log->assign(0, 0);
  f.log->assign(1, 0);
  auto a = f.start(0);
  a.query.processAllAvailable();
  // Partition 1 moves to a second process: its counts continue there from the committed state.
  auto b = f.start(1);
  f.log->assign(1, 1);
  a.query.processAllAvailable();
  f.log->append(1, range(1100, 1250));
  f.log->append(0, range(100, 130));
  b.query.processAllAvailable();
  a.query.processAllAvailable();
  // The first process goes away: partition 0 (and its state) moves too.
  a.query.stop();
  f.log->assign(0, 1);
  f.log->append(0, range(130, 260));
  b.query.processAllAvailable();
  b.query.stop();
  EXPECT_EQ(f.counts(), f.expected());
}

TEST(ScaleOut, AFencedProcessCommitsNeitherOutputNorState) {
  StatefulFixture f(1);
  f.log->append(0, range(0, 50));
  f.log->assign(0, 0);
  PauseFirstBatch pause;
  auto zombie = f.start(0, pause.gate());
  pause.awaitPaused();
  f.log->assign(0, 1);
  auto successor = f.start(1);
  f.log->append(0, range(50, 80));
  successor.query.processAllAvailable();
  pause.resume();
  for (int i = 0; i < 500 && zombie.source->fenced().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(zombie.source->fenced(), (std::vector<PartitionId>{{"log", 0}}));
  // The partition comes back to the first process later: it restores the successor's state,
  // not its own abandoned batch's.
  successor.query.stop();
  f.log->assign(0, 0);
  f.log->append(0, range(80, 120));
  zombie.query.processAllAvailable();
  zombie.query.stop();
  EXPECT_EQ(f.counts(), f.expected());
}

// Keeps a count per key; with TimeMode::kProcessingTime its timers would follow batch time, not
// partitions.
struct CountingProcessor {
  using Output = int64_t;
  ValueState<int64_t> seen;
  void init(ProcessorHandle<int>& h) { seen = h.valueState<int64_t>("seen"); }
  void handleInputRows(const int&, std::span<const int> rows, TimerValues, Collector<Output>& out) {
    int64_t n = (seen.exists() ? *seen.get() : 0) + static_cast<int64_t>(rows.size());
    seen.update(n);
    out.emit(n);
  }
};

TEST(ScaleOut, StateThatCannotFollowItsPartitionIsRefused) {
  Session session;
  auto log = std::make_shared<GroupLog<int>>("log", 1);
  try {
    session.readStream(std::make_shared<Member<int>>(log, 0))
        .withWatermark([](int v) { return static_cast<int64_t>(v); }, 1s)
        .groupByKey([](int v) { return v % 3; })
        .transformWithState([] { return CountingProcessor{}; }, TimeMode::kProcessingTime)
        .writeStream().outputMode(OutputMode::kUpdate).checkpoint(memoryCheckpoint())
        .foreachBatch([](const auto&, const BatchInfo&) {}).start();
    FAIL() << "transformWithState with processing-time timers was accepted scaled out";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("transformWithStateExec cannot run scaled out"), std::string::npos) << e.what();
  }
  // A table aggregation regroups rows across partitions: refused too, by name.
  try {
    session.readStream(std::make_shared<Member<int>>(log, 0))
        .asTable([](int v) { return v; }, [](int v) { return v; }, [](int v) { return std::optional<int>(v); })
        .groupBy([](int v) { return v % 3; })
        .count()
        .toChangelog()
        .writeStream().checkpoint(memoryCheckpoint()).foreachBatch([](const auto&, const BatchInfo&) {}).start();
    FAIL() << "a table aggregation was accepted scaled out";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("tableAggregate cannot run scaled out"), std::string::npos) << e.what();
  }
}

TEST(ScaleOut, StoresWithoutPerPartitionOffsetsAreRefused) {
  Session session;
  auto log = std::make_shared<GroupLog<int>>("log", 1);
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-scale-out-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto sink = std::make_shared<MemorySink<int>>();
  try {
    session.readStream(std::make_shared<Member<int>>(log, 0)).writeStream().checkpoint(directoryCheckpoint(dir)).sink(sink).start();
    FAIL() << "a directory checkpoint was accepted for a scaled-out query";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be shared by several instances"), std::string::npos) << e.what();
  }
  EXPECT_THROW(session.readStream(std::make_shared<Member<int>>(log, 0))
                   .writeStream().trigger(Trigger::availableNow()).checkpoint(memoryCheckpoint()).sink(sink).start(),
               ConfigurationError);
  auto plain = std::make_shared<MemoryStream<int>>("plain");
  EXPECT_THROW(session.readStream(std::make_shared<Member<int>>(log, 0))
                   .unionWith(session.readStream(plain))
                   .writeStream().checkpoint(memoryCheckpoint()).sink(sink).start(),
               ConfigurationError);
  std::filesystem::remove_all(dir);
}


// Counts per key in a value state that expires 1 ms after its last update.
struct ExpiringCounter {
  using Output = std::pair<int, int64_t>;
  ValueState<int64_t> seen;
  void init(ProcessorHandle<int>& h) { seen = h.valueState<int64_t>("seen", {.ttl = 1ms}); }
  void handleInputRows(const int& key, std::span<const int> rows, TimerValues, Collector<Output>& out) {
    int64_t n = (seen.exists() ? *seen.get() : 0) + static_cast<int64_t>(rows.size());
    seen.update(n);
    out.emit({key, n});
  }
};

// Scaled out, a partition's expired state is dropped only in a batch that reads the partition
// (its state's version is its offset): a batch of partition 0 leaves partition 1's expired
// entries alone, and partition 1's next records find them gone.
TEST(ScaleOut, TransformWithStateExpiresAPartitionsStateWithItsRecords) {
  Session session;
  auto log = std::make_shared<GroupLog<int>>("log", 2);
  log->assign(0, 0);
  log->assign(1, 0);
  log->append(0, range(0, 3));  // keys 0, 1, 2
  log->append(1, range(0, 3));
  std::mutex mu;
  std::vector<std::tuple<int32_t, int, int64_t>> out;  // partition, key, count
  auto query = session.readStream(std::make_shared<Member<int>>(log, 0))
                   .groupByKey([](int v) { return v % 3; })
                   .transformWithState([] { return ExpiringCounter{}; })
                   .writeStream().outputMode(OutputMode::kUpdate).checkpoint(memoryCheckpoint())
                   .foreachBatch([&](const Batch<std::pair<int, int64_t>>& batch, const BatchInfo&) {
                     std::lock_guard lock(mu);
                     for (const auto& part : batch.partitions()) {
                       for (const auto& [k, n] : part.rows) out.emplace_back(part.id.partition, k, n);
                     }
                   })
                   .start();
  query.processAllAvailable();
  std::this_thread::sleep_for(20ms);  // every count expires
  log->append(0, range(3, 6));  // a batch of partition 0 only
  query.processAllAvailable();
  log->append(1, range(3, 6));
  query.processAllAvailable();
  if (auto e = query.exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      FAIL() << x.what();
    }
  }
  query.stop();
  std::lock_guard lock(mu);
  std::multiset<std::tuple<int32_t, int, int64_t>> got(out.begin(), out.end());
  std::multiset<std::tuple<int32_t, int, int64_t>> want;
  for (int32_t p = 0; p < 2; ++p) {
    for (int k = 0; k < 3; ++k) {
      want.emplace(p, k, 1);  // first records
      want.emplace(p, k, 1);  // after expiry: counting starts again
    }
  }
  EXPECT_EQ(got, want);
}

// Event time scaled out: windows per (partition, key), each partition on its own watermark
// (partition_watermarks.h). A record's value is its event time in ms; its key is value % 5.
using WindowRow = KeyValue<Windowed<int>, int64_t>;
struct WindowTable {
  std::mutex mu;
  std::vector<std::tuple<int32_t, int64_t, int64_t, int, int64_t>> rows;  // partition, start, end, key, count
};

enum class EventWindowKind { kTumbling, kSession, kTransformWithState };

// Tumbling windows written by hand with transformWithState: a count per window start in a
// MapState, an event-time timer at each window's end that emits and forgets it, and late records
// (behind the watermark the handler is given) skipped. The same rows as window(tumbling).count().
template <int64_t kWindowMs>
struct HandMadeWindows {
  using Output = KeyValue<Windowed<int>, int64_t>;
  ProcessorHandle<int>* handle = nullptr;
  MapState<int64_t, int64_t> counts;
  void init(ProcessorHandle<int>& h) {
    handle = &h;
    counts = h.mapState<int64_t, int64_t>("counts");
  }
  void handleInputRows(const int&, std::span<const int> rows, TimerValues t, Collector<Output>&) {
    for (int v : rows) {
      if (t.watermarkMs != kNoWatermark && v < t.watermarkMs) continue;
      int64_t start = v / kWindowMs * kWindowMs;
      counts.updateValue(start, counts.getValue(start).value_or(0) + 1);
      handle->registerTimer(start + kWindowMs);
    }
  }
  void handleExpiredTimer(const int& key, ExpiredTimer timer, TimerValues, Collector<Output>& out) {
    int64_t start = timer.expiryMs - kWindowMs;
    if (auto c = counts.getValue(start)) {
      out.emit({{{start, timer.expiryMs}, key}, *c});
      counts.removeKey(start);
    }
  }
};

struct EventTimeFixture {
  static constexpr int64_t kWindowMs = 100, kDelayMs = 50, kGapMs = 30;
  std::shared_ptr<GroupLog<int>> log;
  std::shared_ptr<CheckpointStore> store = memoryCheckpoint();
  std::shared_ptr<WindowTable> table = std::make_shared<WindowTable>();
  EventWindowKind kind;
  Session session;
  EventTimeFixture(int partitions, EventWindowKind k) : log(std::make_shared<GroupLog<int>>("log", partitions)), kind(k) {}

  struct Instance {
    std::shared_ptr<Member<int>> source;
    StreamingQuery query;
  };
  Instance start(int instance, std::function<void(const BatchInfo&)> gate = {}) {
    auto source = std::make_shared<Member<int>>(log, instance);
    auto sink = std::make_shared<TransactionalSink<WindowRow, WindowTable>>(
        store, table, [](const Batch<WindowRow>& batch, WindowTable& t) {
          for (const auto& part : batch.partitions()) {
            for (const auto& kv : part.rows) {
              t.rows.emplace_back(part.id.partition, kv.key.window.startMs, kv.key.window.endMs, kv.key.key, kv.value);
            }
          }
        });
    sink->gate = std::move(gate);
    auto time = [](int v) { return static_cast<int64_t>(v); };
    auto keyed = session.readStream(source)
                     .withWatermark(time, std::chrono::milliseconds(kDelayMs))
                     .groupByKey([](int v) { return v % 5; });
    auto writer = kind == EventWindowKind::kTumbling
                      ? keyed.window(tumbling(std::chrono::milliseconds(kWindowMs)), time).count().writeStream()
                  : kind == EventWindowKind::kSession
                      ? keyed.window(dataflow::session(std::chrono::milliseconds(kGapMs)), time).count().writeStream()
                      : keyed.transformWithState([] { return HandMadeWindows<kWindowMs>{}; }, TimeMode::kEventTime).writeStream();
    auto query = writer.queryName("scaled-windows")
                     .outputMode(kind == EventWindowKind::kTransformWithState ? OutputMode::kUpdate : OutputMode::kAppend)
                     .option("state.minDeltasForSnapshot", "2")
                     .checkpoint(store)
                     .sink(sink)
                     .start();
    return {source, std::move(query)};
  }

  // Appends `n` events to `partition` whose event times advance by about 7 ms each and arrive
  // up to 40 ms out of order (less than the watermark delay: none is late).
  void appendEvents(int32_t partition, int n, uint32_t seed) {
    std::lock_guard lock(log->mu);
    auto& events = log->partitions.at(static_cast<size_t>(partition));
    int next = 1000 * (partition + 1);
    for (int v : events) next = std::max(next, v + 47);  // past the late events appended by hand
    for (int i = 0; i < n; ++i) {
      seed = seed * 1103515245u + 12345u;
      events.push_back(next + static_cast<int>((seed >> 16) % 41) - 40);
      next += 7;
    }
  }
  // Appends one event far ahead: every window before it closes.
  void closeWindows(int32_t partition) { log->append(partition, range(1'000'000, 1'000'001)); }

  // The windows each partition's events make, computed from the whole log, without the windows
  // still open at the end; `excluded` are events (partition, position) the query must drop as late.
  std::multiset<std::tuple<int32_t, int64_t, int64_t, int, int64_t>> expected(
      const std::set<std::pair<int32_t, size_t>>& excluded) {
    std::lock_guard lock(log->mu);
    std::multiset<std::tuple<int32_t, int64_t, int64_t, int, int64_t>> out;
    for (size_t p = 0; p < log->partitions.size(); ++p) {
      std::map<int, std::vector<int64_t>> byKey;
      for (size_t i = 0; i < log->partitions[p].size(); ++i) {
        int v = log->partitions[p][i];
        if (v < 1'000'000 && !excluded.contains({static_cast<int32_t>(p), i})) byKey[v % 5].push_back(v);
      }
      for (auto& [key, times] : byKey) {
        std::sort(times.begin(), times.end());
        if (kind != EventWindowKind::kSession) {
          std::map<int64_t, int64_t> counts;
          for (int64_t t : times) ++counts[t / kWindowMs * kWindowMs];
          for (auto [start, c] : counts) out.emplace(static_cast<int32_t>(p), start, start + kWindowMs, key, c);
        } else {
          for (size_t i = 0; i < times.size();) {
            size_t j = i + 1;
            while (j < times.size() && times[j] < times[j - 1] + kGapMs) ++j;
            out.emplace(static_cast<int32_t>(p), times[i], times[j - 1] + kGapMs, key, static_cast<int64_t>(j - i));
            i = j;
          }
        }
      }
    }
    return out;
  }
  std::multiset<std::tuple<int32_t, int64_t, int64_t, int, int64_t>> output() {
    std::lock_guard lock(table->mu);
    return {table->rows.begin(), table->rows.end()};
  }
};

class ScaleOutEventTime : public ::testing::TestWithParam<EventWindowKind> {};

// Partitions move between processes, one of them is fenced mid-batch, and late events arrive
// after a move: every window is emitted exactly once, with what a single process would count,
// because each partition's watermark travels with its state.
TEST_P(ScaleOutEventTime, WindowsAndWatermarksMoveWithTheirPartitions) {
  EventTimeFixture f(3, GetParam());
  for (int32_t p = 0; p < 3; ++p) {
    f.appendEvents(p, 120, 11 + p);
    f.log->assign(p, 0);
  }
  auto a = f.start(0);
  a.query.processAllAvailable();
  // A second process joins and takes partitions 1 and 2, with their windows and watermarks.
  auto b = f.start(1);
  f.log->assign(1, 1);
  f.log->assign(2, 1);
  a.query.processAllAvailable();
  // Late for the watermark partition 1 had when it moved: the new owner must drop it.
  int late;
  size_t latePosition;
  {
    std::lock_guard lock(f.log->mu);
    late = f.log->partitions[1].front() + 1;
    latePosition = f.log->partitions[1].size();
  }
  f.log->append(1, range(late, late + 1));
  for (int32_t p = 0; p < 3; ++p) f.appendEvents(p, 120, 101 + p);
  b.query.processAllAvailable();
  a.query.processAllAvailable();
  if (GetParam() != EventWindowKind::kTransformWithState) {  // a processor drops late records itself
    int64_t dropped = 0;
    for (const auto& p : b.query.recentProgress()) dropped += p.stateOperators.at(0).numRowsDroppedByWatermark;
    EXPECT_EQ(dropped, 1);
  }

  // Process A hangs in the middle of writing a batch; the group gives its partition to B, which
  // restores it at A's last commit. A's batch, when it finally tries to commit, is refused.
  a.query.stop();
  f.appendEvents(0, 120, 201);
  PauseFirstBatch pause;
  auto zombie = f.start(0, pause.gate());
  pause.awaitPaused();
  f.log->assign(0, 1);
  f.appendEvents(0, 60, 301);
  b.query.processAllAvailable();
  pause.resume();
  for (int i = 0; i < 500 && zombie.source->fenced().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(zombie.source->fenced(), (std::vector<PartitionId>{{"log", 0}}));
  zombie.query.stop();

  for (int32_t p = 0; p < 3; ++p) f.closeWindows(p);
  b.query.processAllAvailable();
  b.query.stop();
  auto got = f.output();
  auto want = f.expected({{1, latePosition}});
  std::vector<std::tuple<int32_t, int64_t, int64_t, int, int64_t>> missing, unexpected;
  std::set_difference(want.begin(), want.end(), got.begin(), got.end(), std::back_inserter(missing));
  std::set_difference(got.begin(), got.end(), want.begin(), want.end(), std::back_inserter(unexpected));
  EXPECT_TRUE(missing.empty()) << ::testing::PrintToString(missing);
  EXPECT_TRUE(unexpected.empty()) << ::testing::PrintToString(unexpected);
  EXPECT_GT(got.size(), 100u);
}

INSTANTIATE_TEST_SUITE_P(Windows, ScaleOutEventTime,
                         ::testing::Values(EventWindowKind::kTumbling, EventWindowKind::kSession,
                                           EventWindowKind::kTransformWithState),
                         [](const auto& info) {
                           return info.param == EventWindowKind::kTumbling  ? "Tumbling"
                                  : info.param == EventWindowKind::kSession ? "Session"
                                                                            : "TransformWithState";
                         });

}  // namespace
}  // namespace dataflow
