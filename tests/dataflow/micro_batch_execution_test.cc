// The driver: triggers, graceful stop, restart semantics, retries, progress and listeners.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <atomic>
#include <boost/json.hpp>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

namespace dataflow {
namespace {

using namespace std::chrono_literals;

std::filesystem::path freshDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-test-" + name + "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

std::vector<int> range(int from, int until) {
  std::vector<int> out;
  for (int i = from; i < until; ++i) out.push_back(i);
  return out;
}

// Records every batch a sink was offered, including failed attempts.
struct Attempt {
  int64_t batchId;
  std::vector<SourceRange> sources;
  std::vector<int> rows;
};

class RecordingSink final : public Sink<int> {
 public:
  std::function<void(const Attempt&)> onBatch;  // may throw to fail the attempt
  std::string description() const override { return "RecordingSink"; }
  void addBatch(const Batch<int>& batch, const BatchInfo& info) override {
    Attempt a{info.batchId, info.sources, batch.collect()};
    {
      std::lock_guard lock(mu);
      attempts.push_back(a);
    }
    if (onBatch) onBatch(a);
  }
  std::vector<Attempt> snapshot() {
    std::lock_guard lock(mu);
    return attempts;
  }
  std::mutex mu;
  std::vector<Attempt> attempts;
};

TEST(MicroBatchExecution, DefaultTriggerProcessesDataAsItArrives) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  auto sink = std::make_shared<MemorySink<int>>();
  auto q = session.readStream(in).writeStream().queryName("live").sink(sink).start();
  in->addData(range(0, 5));
  q.processAllAvailable();
  EXPECT_EQ(sink->rows(), range(0, 5));
  in->addData(range(5, 8));
  q.processAllAvailable();
  EXPECT_EQ(sink->rows(), range(0, 8));
  EXPECT_TRUE(q.isActive());
  q.stop();
  EXPECT_FALSE(q.isActive());
  EXPECT_EQ(q.exception(), nullptr);
  EXPECT_EQ(q.status().message, "Stopped");
}

TEST(MicroBatchExecution, ProcessingTimeTriggerSpacesBatchesByInterval) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  auto sink = std::make_shared<RecordingSink>();
  std::vector<std::chrono::steady_clock::time_point> times;
  sink->onBatch = [&](const Attempt&) { times.push_back(std::chrono::steady_clock::now()); };
  auto q = session.readStream(in).writeStream().trigger(Trigger::processingTime(100ms)).sink(sink).start();
  for (int i = 0; i < 3; ++i) {
    in->addData({i});
    q.processAllAvailable();
  }
  q.stop();
  ASSERT_GE(times.size(), 2u);
  for (size_t i = 1; i < times.size(); ++i) EXPECT_GE(times[i] - times[i - 1], 95ms);
}

TEST(MicroBatchExecution, OnceRunsOneBatchOfEverythingIgnoringTheRateLimit) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.maxRecordsPerBatch = 2});
  in->addData(range(0, 7));
  auto sink = std::make_shared<MemorySink<int>>();
  auto q = session.readStream(in).writeStream().trigger(Trigger::once()).sink(sink).start();
  q.awaitTermination();
  EXPECT_EQ(sink->batchSizes(), (std::vector<int64_t>{7}));
}

TEST(MicroBatchExecution, AvailableNowDrainsInRateLimitedBatchesThenStops) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 2, .maxRecordsPerBatch = 3});
  in->addData(range(0, 6), 0);
  in->addData(range(100, 104), 1);
  auto sink = std::make_shared<MemorySink<int>>();
  auto q = session.readStream(in).writeStream().trigger(Trigger::availableNow()).sink(sink).start();
  q.awaitTermination();
  auto sizes = sink->batchSizes();
  int64_t total = 0;
  for (auto s : sizes) {
    EXPECT_LE(s, 3);
    total += s;
  }
  EXPECT_EQ(total, 10);
  EXPECT_EQ(sizes.size(), 4u);
  EXPECT_FALSE(q.isActive());
}

// The first batches of a run with a backlog ramp up to the limit (1/8, 1/4, 1/2, then whole),
// with and without overlapped batches; a restart ramps up again; the option is checked.
TEST(MicroBatchExecution, RampUpBatchesStartSmallThenTakeTheLimit) {
  for (bool overlap : {false, true}) {
    SCOPED_TRACE(overlap ? "overlapped" : "one at a time");
    Session session;
    auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.maxRecordsPerBatch = 80});
    in->addData(range(0, 400));
    auto sink = std::make_shared<MemorySink<int>>();
    auto store = memoryCheckpoint();
    auto run = [&] {
      auto q = session.readStream(in).writeStream().trigger(Trigger::availableNow()).checkpoint(store)
                   .rampUpBatches(3).overlapBatches(overlap).sink(sink).start();
      q.awaitTermination();
    };
    run();
    EXPECT_EQ(sink->batchSizes(), (std::vector<int64_t>{10, 20, 40, 80, 80, 80, 80, 10}));
    in->addData(range(400, 600));
    run();  // a new run of the same query: small again
    auto sizes = sink->batchSizes();
    EXPECT_EQ(std::vector<int64_t>(sizes.begin() + 8, sizes.end()), (std::vector<int64_t>{10, 20, 40, 80, 50}));
  }
  QueryOptions o;
  o.set("rampUpBatches", "4");
  EXPECT_EQ(o.rampUpBatches, 4);
  EXPECT_THROW(o.set("rampUpBatches", "-1"), ConfigurationError);
  EXPECT_THROW(o.set("rampUpBatches", "17"), ConfigurationError);
}

TEST(MicroBatchExecution, AvailableNowIgnoresDataArrivingAfterStart) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.maxRecordsPerBatch = 1});
  in->addData(range(0, 3));
  auto sink = std::make_shared<RecordingSink>();
  sink->onBatch = [&](const Attempt& a) {
    if (a.batchId == 0) in->addData(range(3, 10));
  };
  auto q = session.readStream(in).writeStream().trigger(Trigger::availableNow()).sink(sink).start();
  q.awaitTermination();
  EXPECT_EQ(sink->snapshot().size(), 3u);
}

TEST(MicroBatchExecution, StopDuringBatchLetsItCommit) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  auto store = memoryCheckpoint();
  auto sink = std::make_shared<RecordingSink>();
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false;
  sink->onBatch = [&](const Attempt&) {
    std::unique_lock lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  in->addData(range(0, 3));
  auto q = session.readStream(in).writeStream().checkpoint(store).sink(sink).start();
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return entered; });
  }
  std::thread stopper([&] { q.stop(); });
  std::this_thread::sleep_for(50ms);
  EXPECT_TRUE(q.isActive()) << "stop() must wait for the running batch";
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  stopper.join();
  EXPECT_FALSE(q.isActive());
  EXPECT_EQ(q.exception(), nullptr);
  ASSERT_TRUE(store->latestCommit().has_value());
  EXPECT_EQ(store->latestCommit()->batchId, 0);
  EXPECT_EQ(store->latestOffsets()->batchId, 0);
}

// A source whose records from offset 3 on exist but cannot be fetched (a stalled broker): its
// read waits until interrupted, with no timeout of its own.
class StallingSource final : public TypedSource<int> {
 public:
  std::string description() const override { return "StallingSource"; }
  void open() override {
    std::lock_guard lock(mu);
    interrupted = false;
  }
  Offsets initialOffsets() override { return Offsets({{{"s", 0}, 0}}); }
  Offsets latestOffsets() override { return Offsets({{{"s", 0}, 6}}); }
  std::optional<int64_t> maxRecordsPerBatch() const override { return 3; }
  void read(const PartitionId&, int64_t from, int64_t until, std::vector<int>& out) override {
    std::unique_lock lock(mu);
    if (until > 3 && stall) {
      waiting = true;
      cv.notify_all();
      cv.wait(lock, [&] { return interrupted; });
      throw ReadInterrupted("StallingSource: read interrupted");
    }
    for (int64_t i = from; i < until; ++i) out.push_back(static_cast<int>(i));
  }
  void interrupt() override {
    std::lock_guard lock(mu);
    interrupted = true;
    cv.notify_all();
  }
  std::mutex mu;
  std::condition_variable cv;
  bool stall = true, waiting = false, interrupted = false;
};

TEST(MicroBatchExecution, StopInterruptsAReadWaitingOnItsSource) {
  // stop() must not wait for a stalled source's timeout (minutes for a broker): the read is
  // interrupted, the batch abandoned uncommitted, and the next run replays it.
  Session session;
  auto src = std::make_shared<StallingSource>();
  auto store = memoryCheckpoint();
  auto sink = std::make_shared<RecordingSink>();
  auto q = session.readStream(src).writeStream().checkpoint(store).sink(sink).start();
  {
    std::unique_lock lock(src->mu);
    ASSERT_TRUE(src->cv.wait_for(lock, 30s, [&] { return src->waiting; })) << "the second batch never read";
  }
  std::thread stopper([&] { q.stop(); });
  bool ended = q.awaitTermination(30s);
  stopper.join();
  ASSERT_TRUE(ended) << "stop() waited for the stalled read";
  EXPECT_EQ(q.exception(), nullptr) << "an interrupted read is no failure";
  // Every batch up to offset 3 was committed (ramp-up may cut them smaller); the stalled one was
  // logged, not committed.
  const size_t before = sink->snapshot().size();
  ASSERT_GE(before, 1u);
  ASSERT_TRUE(store->latestCommit().has_value());
  EXPECT_EQ(store->latestCommit()->batchId, static_cast<int64_t>(before) - 1);
  EXPECT_EQ(store->latestOffsets()->batchId, static_cast<int64_t>(before)) << "the stalled batch was not logged";

  // The source answers again: the next run replays the abandoned batch (same id), then the rest.
  {
    std::lock_guard lock(src->mu);
    src->stall = false;
  }
  auto q2 = session.readStream(src).writeStream().checkpoint(store).sink(sink).trigger(Trigger::availableNow()).start();
  q2.awaitTermination();
  auto attempts = sink->snapshot();
  ASSERT_GT(attempts.size(), before);
  EXPECT_EQ(attempts[before].batchId, static_cast<int64_t>(before));
  std::vector<int> rows;
  for (const auto& a : attempts) rows.insert(rows.end(), a.rows.begin(), a.rows.end());
  EXPECT_EQ(rows, range(0, 6)) << "each record exactly once across the stop";
}

// A sink failure after the offsets log was written must replay the same batch id and offsets,
// whatever arrived in between; both stores behave alike.
class ReplayTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::shared_ptr<CheckpointStore> makeStore() {
    if (GetParam() == "memory") {
      if (!memoryStore_) memoryStore_ = memoryCheckpoint();
      return memoryStore_;  // same object: it is the "durable" state in memory
    }
    return directoryCheckpoint(dir_);
  }
  void SetUp() override { dir_ = freshDir("replay"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
  std::shared_ptr<CheckpointStore> memoryStore_;
};

TEST_P(ReplayTest, FailureBetweenOffsetsAndCommitReplaysSameIdAndOffsets) {
  Session session({.workerThreads = 2});
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 2});
  in->addData(range(0, 4), 0);
  in->addData(range(10, 12), 1);

  auto failing = std::make_shared<RecordingSink>();
  bool failedOnce = false;
  failing->onBatch = [&](const Attempt& a) {
    if (a.batchId == 1 && !failedOnce) {
      failedOnce = true;
      throw std::runtime_error("sink exploded");
    }
  };
  {
    auto q = session.readStream(in).writeStream().checkpoint(makeStore()).sink(failing).start();
    q.processAllAvailable();
    in->addData(range(4, 6), 0);
    EXPECT_THROW(q.awaitTermination(), std::runtime_error);
    EXPECT_NE(q.exception(), nullptr);
    EXPECT_FALSE(q.isActive());
  }
  auto attempts = failing->snapshot();
  ASSERT_EQ(attempts.size(), 2u);
  const Attempt failed = attempts[1];
  EXPECT_EQ(failed.batchId, 1);

  in->addData(range(6, 9), 0);  // must not leak into the replayed batch
  auto sink = std::make_shared<RecordingSink>();
  auto q = session.readStream(in).writeStream().checkpoint(makeStore()).sink(sink).start();
  q.processAllAvailable();
  q.stop();
  auto replayed = sink->snapshot();
  ASSERT_GE(replayed.size(), 2u);
  EXPECT_EQ(replayed[0].batchId, 1);
  EXPECT_EQ(replayed[0].rows, failed.rows);
  ASSERT_EQ(replayed[0].sources.size(), 1u);
  EXPECT_EQ(replayed[0].sources[0].start, failed.sources[0].start);
  EXPECT_EQ(replayed[0].sources[0].end, failed.sources[0].end);
  EXPECT_EQ(replayed[1].batchId, 2);
  EXPECT_EQ(replayed[1].rows, range(6, 9));
}

TEST_P(ReplayTest, QueryIdIsStableAcrossRestartsAndRunIdIsNew) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1});
  auto sink = std::make_shared<MemorySink<int>>();
  std::string id, runId;
  {
    auto q = session.readStream(in).writeStream().checkpoint(makeStore()).trigger(Trigger::availableNow()).sink(sink).start();
    q.awaitTermination();
    id = q.id();
    runId = q.runId();
  }
  auto q = session.readStream(in).writeStream().checkpoint(makeStore()).trigger(Trigger::availableNow()).sink(sink).start();
  q.awaitTermination();
  EXPECT_EQ(q.id(), id);
  EXPECT_NE(q.runId(), runId);
  EXPECT_EQ(sink->rows(), std::vector<int>{1});
}

TEST_P(ReplayTest, CheckpointOfAnotherQueryIsRefused) {
  Session session;
  auto a = std::make_shared<MemoryStream<int>>("a");
  auto b = std::make_shared<MemoryStream<int>>("b");
  auto sink = std::make_shared<MemorySink<int>>();
  session.readStream(a).writeStream().checkpoint(makeStore()).trigger(Trigger::once()).sink(sink).start().awaitTermination();
  try {
    session.readStream(b).writeStream().checkpoint(makeStore()).sink(sink).start();
    FAIL() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("MemoryStream[a]"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, ReplayTest, ::testing::Values("memory", "directory"));

TEST(MicroBatchExecution, RetriableErrorsRetryTheSameBatch) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData(range(0, 3));
  auto sink = std::make_shared<RecordingSink>();
  int failures = 0;
  sink->onBatch = [&](const Attempt&) {
    if (failures < 2) {
      ++failures;
      throw ConnectorError("warehouse unavailable", true);
    }
  };
  auto q = session.readStream(in).writeStream().option("retry.initialBackoffMs", "1")
               .trigger(Trigger::availableNow()).sink(sink).start();
  q.awaitTermination();
  auto attempts = sink->snapshot();
  ASSERT_EQ(attempts.size(), 3u);
  for (const auto& a : attempts) {
    EXPECT_EQ(a.batchId, 0);
    EXPECT_EQ(a.rows, range(0, 3));
  }
  ASSERT_EQ(q.recentProgress().size(), 1u);
}

// Overlap: the next batch is read and processed while the sink writes the current one. Batches,
// their ids and ranges, and restarts are exactly those of a run without it.
std::vector<Attempt> drainWithOverlap(bool overlap, std::shared_ptr<CheckpointStore> store,
                                      std::function<void(const Attempt&)> onBatch = {}) {
  Session session({.workerThreads = 2});
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 2, .maxRecordsPerBatch = 150});
  in->addData(range(0, 1000), 0);
  in->addData(range(5000, 5700), 1);
  auto sink = std::make_shared<RecordingSink>();
  sink->onBatch = std::move(onBatch);
  auto q = session.readStream(in).writeStream().checkpoint(store).option("overlapBatches", overlap ? "true" : "false")
               .option("retry.initialBackoffMs", "1").trigger(Trigger::availableNow()).sink(sink).start();
  try {
    q.awaitTermination();
  } catch (const std::exception&) {
  }
  return sink->snapshot();
}

TEST(MicroBatchExecution, OverlappedBatchesAreTheBatchesOfASequentialRun) {
  auto sequential = drainWithOverlap(false, memoryCheckpoint());
  auto overlapped = drainWithOverlap(true, memoryCheckpoint());
  ASSERT_EQ(sequential.size(), 12u);  // 1700 records, 150 per batch
  ASSERT_EQ(overlapped.size(), sequential.size());
  for (size_t i = 0; i < sequential.size(); ++i) {
    EXPECT_EQ(overlapped[i].batchId, sequential[i].batchId);
    EXPECT_EQ(overlapped[i].rows, sequential[i].rows) << "batch " << i;
    ASSERT_EQ(overlapped[i].sources.size(), 1u);
    EXPECT_EQ(overlapped[i].sources[0].start, sequential[i].sources[0].start);
    EXPECT_EQ(overlapped[i].sources[0].end, sequential[i].sources[0].end);
  }
}

// A query that has caught up plans its next batch after the commit: what arrived while a batch
// was processed and what arrived while it was written go in the next batch together. (Prepared
// ahead, that batch would hold only the first, and the second would wait for the batch after.)
TEST(MicroBatchExecution, ACaughtUpQueryPlansItsNextBatchAfterTheCommit) {
  Session session({.workerThreads = 2});
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1});
  auto sink = std::make_shared<RecordingSink>();
  sink->onBatch = [&](const Attempt& a) {
    if (a.batchId == 0) in->addData({3});  // arrives during the write
  };
  auto q = session.readStream(in)
               .map([in](int x) {
                 if (x == 1) in->addData({2});  // arrives while the batch is processed
                 return x;
               })
               .writeStream().option("overlapBatches", "true").sink(sink).start();
  q.processAllAvailable();
  q.stop();
  auto batches = sink->snapshot();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].rows, std::vector<int>{1});
  EXPECT_EQ(batches[1].rows, (std::vector<int>{2, 3}));
}

TEST(MicroBatchExecution, AFailureWithABatchPreparedAheadReplaysTheLoggedBatch) {
  auto dir = freshDir("overlap-replay");
  std::vector<int> committed;
  auto keep = [&](const Attempt& a) {
    if (a.batchId == 4) throw std::runtime_error("sink exploded");  // batch 5 is being prepared
    committed.insert(committed.end(), a.rows.begin(), a.rows.end());
  };
  auto first = drainWithOverlap(true, directoryCheckpoint(dir), keep);
  ASSERT_EQ(first.size(), 5u);
  // The restart replays batch 4 as logged; the batch prepared ahead was never logged nor seen.
  auto second = drainWithOverlap(true, directoryCheckpoint(dir), [&](const Attempt& a) {
    committed.insert(committed.end(), a.rows.begin(), a.rows.end());
  });
  ASSERT_FALSE(second.empty());
  EXPECT_EQ(second[0].batchId, 4);
  EXPECT_EQ(second[0].rows, first[4].rows);
  EXPECT_EQ(second[0].sources[0].end, first[4].sources[0].end);
  std::sort(committed.begin(), committed.end());
  std::vector<int> all = range(0, 1000);
  for (int v = 5000; v < 5700; ++v) all.push_back(v);
  EXPECT_EQ(committed, all);  // each record once
  std::filesystem::remove_all(dir);
}

TEST(MicroBatchExecution, RetriesWithOverlapHandTheSinkTheSameBatch) {
  int failures = 0;
  auto attempts = drainWithOverlap(true, memoryCheckpoint(), [&](const Attempt& a) {
    if (a.batchId == 2 && failures < 2) {
      ++failures;
      throw ConnectorError("warehouse unavailable", true);
    }
  });
  ASSERT_EQ(attempts.size(), 14u);  // 12 batches, batch 2 three times
  EXPECT_EQ(attempts[2].rows, attempts[3].rows);
  EXPECT_EQ(attempts[3].rows, attempts[4].rows);
  EXPECT_EQ(attempts[5].batchId, 3);
}

TEST(MicroBatchExecution, RetriesAreBoundedAndNonRetriableErrorsStopTheQuery) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1});
  auto sink = std::make_shared<RecordingSink>();
  sink->onBatch = [&](const Attempt&) { throw ConnectorError("still down", true); };
  auto q = session.readStream(in).writeStream().option("retry.maxAttempts", "3")
               .option("retry.initialBackoffMs", "1").sink(sink).start();
  EXPECT_THROW(q.awaitTermination(), ConnectorError);
  EXPECT_EQ(sink->snapshot().size(), 3u);

  auto sink2 = std::make_shared<RecordingSink>();
  sink2->onBatch = [&](const Attempt&) { throw ConnectorError("bad credentials", false); };
  auto q2 = session.readStream(in).writeStream().sink(sink2).start();
  EXPECT_THROW(q2.awaitTermination(), ConnectorError);
  EXPECT_EQ(sink2->snapshot().size(), 1u);
}

TEST(MicroBatchExecution, UnknownOptionFailsFastNamingIt) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  try {
    session.readStream(in).writeStream().option("maxOffsetPerTrigger", "5");
    FAIL();
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("maxOffsetPerTrigger"), std::string::npos);
  }
  EXPECT_THROW(session.readStream(in).writeStream().option("retry.maxAttempts", "zero"), ConfigurationError);
}

// A sink's own phases (BatchInfo::sinkPhasesMicros) join the progress record's durationMs, and
// only the attempt that succeeded counts.
TEST(MicroBatchExecution, ProgressBreaksTheBatchIntoPhasesIncludingTheSinks) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData(range(0, 100));
  int attempts = 0;
  auto q = session.readStream(in).writeStream().option("retry.initialBackoffMs", "1")
               .trigger(Trigger::availableNow())
               .foreachBatch([&](const Batch<int>&, const BatchInfo& info) {
                 ASSERT_NE(info.sinkPhasesMicros, nullptr);
                 (*info.sinkPhasesMicros)["merge"] += 7000;
                 if (++attempts == 1) throw ConnectorError("away", true);
                 (*info.sinkPhasesMicros)["stage"] += 3000;
               })
               .start();
  q.awaitTermination();
  auto p = q.lastProgress();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->durationMs.at("merge"), 7);
  EXPECT_EQ(p->durationMs.at("stage"), 3);
  EXPECT_TRUE(p->durationMs.contains("read"));
  EXPECT_TRUE(p->durationMs.contains("process"));
}

TEST(MicroBatchExecution, ProgressHasSparkFields) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 2});
  in->addData(range(0, 3), 0);
  in->addData(range(0, 2), 1);
  auto q = session.readStream(in).filter([](int x) { return x > 0; }).writeStream().queryName("progress")
               .trigger(Trigger::availableNow()).sink(std::make_shared<MemorySink<int>>()).start();
  q.awaitTermination();
  auto p = q.lastProgress();
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->id, q.id());
  EXPECT_EQ(p->runId, q.runId());
  EXPECT_EQ(p->name, "progress");
  EXPECT_EQ(p->batchId, 0);
  EXPECT_EQ(p->numInputRows, 5);
  EXPECT_EQ(p->sink.numOutputRows, 3);
  for (const char* k : {"latestOffset", "walCommit", "read", "process", "addBatch", "commitOffsets", "triggerExecution"}) {
    EXPECT_TRUE(p->durationMs.contains(k)) << k;
  }
  ASSERT_EQ(p->sources.size(), 1u);
  EXPECT_EQ(p->sources[0].description, "MemoryStream[in]");
  EXPECT_EQ(p->sources[0].startOffset, R"({"in":{"0":0,"1":0}})");
  EXPECT_EQ(p->sources[0].endOffset, R"({"in":{"0":3,"1":2}})");
  EXPECT_EQ(p->sources[0].numInputRows, 5);

  auto json = boost::json::parse(p->toJson()).as_object();
  for (const char* k : {"id", "runId", "name", "timestamp", "batchId", "numInputRows", "inputRowsPerSecond",
                        "processedRowsPerSecond", "durationMs", "sources", "sink"}) {
    EXPECT_TRUE(json.contains(k)) << k;
  }
  EXPECT_EQ(json["sources"].as_array()[0].as_object()["endOffset"].as_object()["in"].as_object()["0"].as_int64(), 3);
  EXPECT_EQ(json["timestamp"].as_string().size(), 24u);  // 2026-11-26T05:01:02.345Z
}

class RecordingListener final : public QueryListener {
 public:
  void onQueryStarted(const Started& e) override { push("started:" + e.name); }
  void onQueryProgress(const QueryProgress& p) override { push("progress:" + std::to_string(p.batchId)); }
  void onQueryIdle(const Idle&) override { push("idle"); }
  void onQueryTerminated(const Terminated& e) override { push(e.exception ? "terminated:error" : "terminated"); }
  void push(std::string s) {
    std::lock_guard lock(mu);
    if (events.empty() || events.back() != s) events.push_back(std::move(s));
  }
  std::mutex mu;
  std::vector<std::string> events;
};

TEST(MicroBatchExecution, ListenersSeeStartProgressIdleAndTermination) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1, 2});
  auto listener = std::make_shared<RecordingListener>();
  auto q = session.readStream(in).writeStream().queryName("l").addListener(listener)
               .sink(std::make_shared<MemorySink<int>>()).start();
  q.processAllAvailable();
  q.stop();
  std::lock_guard lock(listener->mu);
  EXPECT_EQ(listener->events, (std::vector<std::string>{"started:l", "progress:0", "idle", "terminated"}));
}

TEST(MicroBatchExecution, AwaitTerminationWithTimeoutReturnsFalseWhileRunning) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  auto q = session.readStream(in).writeStream().sink(std::make_shared<MemorySink<int>>()).start();
  EXPECT_FALSE(q.awaitTermination(20ms));
  q.stop();
  EXPECT_TRUE(q.awaitTermination(20ms));
}

TEST(MicroBatchExecution, ParallelRunsAreDeterministicPerPartition) {
  std::vector<std::vector<int>> first;
  for (int run = 0; run < 5; ++run) {
    Session session({.workerThreads = 2, .chunkSize = 64});
    auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 4});
    for (int p = 0; p < 4; ++p) in->addData(range(p * 10000, p * 10000 + 5000), p);
    auto sink = std::make_shared<MemorySink<int>>();
    session.readStream(in).map([](int x) { return x * 2; }).filter([](int x) { return x % 3 != 0; })
        .writeStream().trigger(Trigger::availableNow()).sink(sink).start().awaitTermination();
    auto rows = sink->rows();
    // Partition order, then source order within each partition.
    EXPECT_TRUE(std::is_sorted(rows.begin(), rows.end()));
    if (run == 0) first.push_back(rows);
    else EXPECT_EQ(rows, first[0]);
  }
}

TEST(MicroBatchExecution, NewPartitionsAreReadFromTheirStart) {
  // A source whose partition count grows, like a Kafka topic gaining partitions.
  class Growing final : public TypedSource<int> {
   public:
    std::string description() const override { return "Growing"; }
    Offsets initialOffsets() override { return Offsets({{{"g", 0}, 0}}); }
    Offsets latestOffsets() override {
      std::lock_guard lock(mu);
      Offsets o;
      for (size_t p = 0; p < parts.size(); ++p) o.set({"g", static_cast<int32_t>(p)}, static_cast<int64_t>(parts[p].size()));
      return o;
    }
    void read(const PartitionId& p, int64_t from, int64_t until, std::vector<int>& out) override {
      std::lock_guard lock(mu);
      const auto& v = parts.at(static_cast<size_t>(p.partition));
      out.insert(out.end(), v.begin() + from, v.begin() + until);
    }
    std::mutex mu;
    std::vector<std::vector<int>> parts{{1, 2}};
  };
  Session session;
  auto src = std::make_shared<Growing>();
  auto sink = std::make_shared<MemorySink<int>>();
  auto q = session.readStream(src).writeStream().sink(sink).start();
  q.processAllAvailable();
  {
    std::lock_guard lock(src->mu);
    src->parts.push_back({7, 8, 9});
  }
  q.processAllAvailable();
  q.stop();
  EXPECT_EQ(sink->rows(), (std::vector<int>{1, 2, 7, 8, 9}));
}

TEST(MicroBatchExecution, RateSourceRowsAreAFunctionOfOffsets) {
  Session session;
  auto rate = std::make_shared<RateSource>(RateSourceOptions{.rowsPerSecond = 2000, .partitions = 2});
  auto sink = std::make_shared<MemorySink<RateRow>>();
  auto q = session.readStream(rate).writeStream().sink(sink).start();
  std::this_thread::sleep_for(50ms);
  q.processAllAvailable();
  q.stop();
  auto rows = sink->rows();
  ASSERT_FALSE(rows.empty());
  std::set<int64_t> values;
  for (const auto& r : rows) values.insert(r.value);
  EXPECT_EQ(values.size(), rows.size());
  EXPECT_EQ(*values.rbegin() + 1, static_cast<int64_t>(rows.size()));  // dense 0..n-1
}

}  // namespace
}  // namespace dataflow
