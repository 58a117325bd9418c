// The stateful workloads of the crash-at-every-step harness, shared by the engine's tests (state
// in memory) and the state backends' tests (the same workloads, state in the backend): random
// streams with keys, event times, late events and duplicates run through each stateful operator
// with a crash injected at each step of a batch, and must give the output of a run without
// failures.
#pragma once

#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

namespace dataflow::stateful_testing {

using namespace std::chrono_literals;

struct Event {
  int64_t key = 0;
  int64_t ts = 0;  // event time, ms
  int64_t value = 0;
  int64_t id = 0;  // unique per event (deduplication tests reuse it on purpose)
};

// A sink that keeps what each batch id delivered, the last delivery of a batch replacing earlier
// ones (an idempotent sink keyed by batch id, as the warehouse sink is).
template <class Row>
class BatchLogSink final : public Sink<Row> {
 public:
  std::function<void(int64_t batchId)> beforeWrite;  // may throw to fail the attempt
  std::string description() const override { return "BatchLogSink"; }
  void addBatch(const Batch<Row>& batch, const BatchInfo& info) override {
    if (beforeWrite) beforeWrite(info.batchId);
    std::lock_guard lock(mu_);
    batches_[info.batchId] = batch.collect();
    infos_[info.batchId] = info;
  }
  std::map<int64_t, std::vector<Row>> batches() const {
    std::lock_guard lock(mu_);
    return batches_;
  }
  std::vector<Row> all() const {
    std::vector<Row> out;
    for (auto& [id, rows] : batches()) out.insert(out.end(), rows.begin(), rows.end());
    return out;
  }
  BatchInfo info(int64_t id) const {
    std::lock_guard lock(mu_);
    return infos_.at(id);
  }

 private:
  mutable std::mutex mu_;
  std::map<int64_t, std::vector<Row>> batches_;
  std::map<int64_t, BatchInfo> infos_;
};

using KeyCount = KeyValue<int64_t, int64_t>;
using WindowCount = KeyValue<Windowed<int64_t>, std::tuple<int64_t, int64_t>>;

// Per key: a count (ValueState), the last three values (ListState), counts by value % 3
// (MapState); an event-time timer two seconds after the newest event of the key reports and
// clears them (a session closed by inactivity).
struct SessionProcessor {
  using Output = std::string;
  ValueState<int64_t> count;
  ListState<int64_t> recent;
  MapState<int64_t, int64_t> byResidue;
  ValueState<int64_t> timer;
  ProcessorHandle<int64_t>* handle = nullptr;

  void init(ProcessorHandle<int64_t>& h) {
    handle = &h;
    count = h.valueState<int64_t>("count");
    recent = h.listState<int64_t>("recent");
    byResidue = h.mapState<int64_t, int64_t>("byResidue");
    timer = h.valueState<int64_t>("timer");
  }
  void handleInputRows(const int64_t&, std::span<const Event> rows, TimerValues, Collector<Output>&) {
    count.update(count.getOrDefault(0) + static_cast<int64_t>(rows.size()));
    int64_t newest = timer.getOrDefault(0) - 2000;
    for (const Event& e : rows) {
      recent.append(e.value);
      byResidue.updateValue(e.value % 3, byResidue.getValue(e.value % 3).value_or(0) + 1);
      newest = std::max(newest, e.ts);
    }
    auto list = recent.get();
    if (list.size() > 3) recent.put(std::vector<int64_t>(list.end() - 3, list.end()));
    if (auto old = timer.get()) handle->deleteTimer(*old);
    handle->registerTimer(newest + 2000);
    timer.update(newest + 2000);
  }
  void handleExpiredTimer(const int64_t& key, ExpiredTimer t, TimerValues, Collector<Output>& out) {
    std::string r = std::to_string(key) + "@" + std::to_string(t.expiryMs) + " n=" + std::to_string(count.getOrDefault(0)) + " recent=";
    for (int64_t v : recent.get()) r += std::to_string(v) + ",";
    r += " residues=";
    auto entries = byResidue.entries();
    std::sort(entries.begin(), entries.end());
    for (const auto& [k, v] : entries) r += std::to_string(k) + ":" + std::to_string(v) + ",";
    out.emit(r);
    count.clear();
    recent.clear();
    byResidue.clear();
    timer.clear();
  }
};

// Delegates to a store and fails once at a chosen step of a chosen batch, as a process that dies
// there would (the query ends with the error; a new query then runs on the same store).
class CrashingStore final : public CheckpointStore {
 public:
  enum class Step { kNone, kAfterOffsets, kBeforeState, kAfterState, kBeforeCommit, kAfterCommit };
  explicit CrashingStore(std::shared_ptr<CheckpointStore> inner) : inner_(std::move(inner)) {}
  void arm(Step step, int64_t batch) {
    step_ = step;
    batch_ = batch;
  }
  bool fired() const { return fired_; }

  std::string describe() const override { return inner_->describe(); }
  std::optional<QueryMetadata> readMetadata() override { return inner_->readMetadata(); }
  void writeMetadata(const QueryMetadata& m) override { inner_->writeMetadata(m); }
  void writeOffsets(const OffsetLogEntry& e) override {
    inner_->writeOffsets(e);
    current_ = e.batchId;
    crashIf(Step::kAfterOffsets);
  }
  std::optional<OffsetLogEntry> latestOffsets() override { return inner_->latestOffsets(); }
  std::optional<OffsetLogEntry> readOffsets(int64_t id) override { return inner_->readOffsets(id); }
  void writeCommit(const CommitLogEntry& e) override {
    current_ = e.batchId;
    crashIf(Step::kBeforeCommit);
    inner_->writeCommit(e);
    crashIf(Step::kAfterCommit);
  }
  std::optional<CommitLogEntry> latestCommit() override { return inner_->latestCommit(); }
  bool supportsState() const override { return true; }
  void writeStateFiles(const StateChanges& c) override {
    crashIf(Step::kBeforeState);
    inner_->writeStateFiles(c);
    crashIf(Step::kAfterState);
  }
  std::vector<StateFileId> listStateFiles(int op) override { return inner_->listStateFiles(op); }
  std::string readStateFile(const StateFileId& id) override { return inner_->readStateFile(id); }
  void deleteStateFiles(const std::vector<StateFileId>& ids) override { inner_->deleteStateFiles(ids); }

 private:
  void crashIf(Step step) {
    if (fired_ || step != step_ || current_ != batch_) return;
    fired_ = true;
    throw InternalError("injected crash");
  }
  std::shared_ptr<CheckpointStore> inner_;
  Step step_ = Step::kNone;
  int64_t batch_ = -1;
  int64_t current_ = -1;
  bool fired_ = false;
};

enum class Workload {
  kUpdateCount, kCompleteSum, kAppendWindows, kUpdateWindows, kDedupWithinWatermark, kSessions, kOuterJoin, kSessionWindows
};

// For test names.
inline std::string workloadName(Workload w) {
  switch (w) {
    case Workload::kUpdateCount: return "UpdateCount";
    case Workload::kCompleteSum: return "CompleteSum";
    case Workload::kAppendWindows: return "AppendTumblingWindows";
    case Workload::kUpdateWindows: return "UpdateSlidingWindows";
    case Workload::kDedupWithinWatermark: return "DedupWithinWatermark";
    case Workload::kSessions: return "TransformWithStateSessions";
    case Workload::kOuterJoin: return "LeftOuterStreamStreamJoin";
    case Workload::kSessionWindows: return "AppendSessionWindows";
  }
  return "?";
}

inline std::vector<std::vector<Event>> randomInput(uint32_t seed, int partitions, int perPartition) {
  std::mt19937 rng(seed);
  std::vector<std::vector<Event>> out(static_cast<size_t>(partitions));
  int64_t id = 0;
  for (int p = 0; p < partitions; ++p) {
    int64_t clock = 0;
    for (int i = 0; i < perPartition; ++i) {
      clock += rng() % 700;
      // Mostly in order, some out of order (within and beyond the delay), some duplicates.
      int64_t ts = clock - static_cast<int64_t>(rng() % 10 == 0 ? rng() % 8000 : rng() % 500);
      int64_t eventId = rng() % 8 == 0 && id > 0 ? id - 1 - static_cast<int64_t>(rng() % std::min<int64_t>(id, 20)) : id;
      out[static_cast<size_t>(p)].push_back({static_cast<int64_t>(rng() % 13), std::max<int64_t>(0, ts),
                                             static_cast<int64_t>(rng() % 100), eventId});
      ++id;
    }
  }
  return out;
}

// One workload's per-batch output, rows rendered as strings (sorted within a batch).
using Output = std::map<int64_t, std::vector<std::string>>;

template <class Row, class Render>
Output render(const std::map<int64_t, std::vector<Row>>& batches, Render&& fn) {
  Output out;
  for (const auto& [id, rows] : batches) {
    auto& v = out[id];
    for (const auto& r : rows) v.push_back(fn(r));
    std::sort(v.begin(), v.end());
  }
  return out;
}

inline std::string str(const Windowed<int64_t>& k) {
  return std::to_string(k.window.startMs) + "-" + std::to_string(k.window.endMs) + "/" + std::to_string(k.key);
}

// Runs `workload` over `in` to completion (AvailableNow), restarting after each injected crash.
// With `sinkCrashBatch`, the sink fails (once) while writing that batch.
// With `backend` the operators keep their state in it, with a cache of three keys per partition
// (so nearly every batch reads state back from the backend).
// With `overlap`, each batch is read and processed while the previous one is written
// (overlapBatches), stateful operators included where they can run ahead.
inline Output runWorkload(Workload workload, std::shared_ptr<MemoryStream<Event>> in, std::shared_ptr<CrashingStore> store,
                          int* crashes, int64_t sinkCrashBatch = -1, std::shared_ptr<StateBackend> backend = nullptr,
                          bool overlap = false) {
  const std::string cacheKeys = backend ? "3" : "262144";
  const std::string overlapBatches = overlap ? "true" : "false";
  auto windowsSink = std::make_shared<BatchLogSink<WindowCount>>();
  auto countSink = std::make_shared<BatchLogSink<KeyCount>>();
  auto eventSink = std::make_shared<BatchLogSink<Event>>();
  auto textSink = std::make_shared<BatchLogSink<std::string>>();
  auto crashOnce = [sinkCrashBatch, fired = std::make_shared<bool>(false)](int64_t batchId) {
    if (batchId == sinkCrashBatch && !*fired) {
      *fired = true;
      throw InternalError("injected crash in the sink");
    }
  };
  windowsSink->beforeWrite = crashOnce;
  countSink->beforeWrite = crashOnce;
  eventSink->beforeWrite = crashOnce;
  textSink->beforeWrite = crashOnce;
  for (int attempt = 0; attempt < 5; ++attempt) {
    Session session({.workerThreads = 2});
    auto source = session.readStream(in);
    StreamingQuery query = [&] {
      switch (workload) {
        case Workload::kUpdateCount:
          return source.groupByKey(&Event::key).count().writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).outputMode(OutputMode::kUpdate)
              .checkpoint(store).trigger(Trigger::availableNow()).sink(countSink).start();
        case Workload::kCompleteSum:
          return source.groupByKey(&Event::key).sum(&Event::value).writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).outputMode(OutputMode::kComplete)
              .checkpoint(store).trigger(Trigger::availableNow()).sink(countSink).start();
        case Workload::kAppendWindows:
        case Workload::kUpdateWindows:
          return source.withWatermark(&Event::ts, 2s)
              .groupByKey(&Event::key)
              .window(workload == Workload::kAppendWindows ? tumbling(3s) : sliding(4s, 2s), &Event::ts)
              .agg(count(), sum(&Event::value))
              .writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches)
              .outputMode(workload == Workload::kAppendWindows ? OutputMode::kAppend : OutputMode::kUpdate)
              .checkpoint(store).trigger(Trigger::availableNow()).sink(windowsSink).start();
        case Workload::kDedupWithinWatermark:
          return source.withWatermark(&Event::ts, 1500ms)
              .dropDuplicatesWithinWatermark(&Event::id, &Event::ts)
              .writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).checkpoint(store).trigger(Trigger::availableNow()).sink(eventSink).start();
        case Workload::kSessions:
          return source.withWatermark(&Event::ts, 1000ms)
              .groupByKey(&Event::key)
              .transformWithState([] { return SessionProcessor{}; }, TimeMode::kEventTime)
              .writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).outputMode(OutputMode::kUpdate).checkpoint(store).trigger(Trigger::availableNow())
              .sink(textSink).start();
        case Workload::kSessionWindows:
          return source.withWatermark(&Event::ts, 1500ms)
              .groupByKey(&Event::key)
              .window(dataflow::session(900ms), &Event::ts)
              .agg(count(), sum(&Event::value))
              .writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).outputMode(OutputMode::kAppend).checkpoint(store).trigger(Trigger::availableNow())
              .sink(windowsSink).start();
        case Workload::kOuterJoin: {
          // Two streams cut from one source: "orders" (id % 3 != 0) and "payments" (the rest).
          auto watermarked = source.withWatermark(&Event::ts, 1000ms);
          auto orders = watermarked.filter([](const Event& e) { return e.id % 3 != 0; });
          auto payments = watermarked.filter([](const Event& e) { return e.id % 3 == 0; });
          return Stream<Event>(orders)
              .join(Stream<Event>(payments), &Event::key, &Event::key,
                    [](const Event& o, const Event* p) {
                      return std::to_string(o.id) + "-" + (p ? std::to_string(p->id) : std::string("none"));
                    },
                    JoinType::kLeftOuter, timeRange(&Event::ts, &Event::ts, -500ms, 1500ms))
              .writeStream().stateBackend(backend).option("state.cachedKeysPerPartition", cacheKeys).option("overlapBatches", overlapBatches).checkpoint(store).trigger(Trigger::availableNow()).sink(textSink).start();
        }
      }
      throw std::logic_error("workload");
    }();
    try {
      query.awaitTermination();
      break;
    } catch (const InternalError&) {
      ++*crashes;  // the process "died"; a new one starts on the same checkpoint
    }
  }
  switch (workload) {
    case Workload::kUpdateCount:
    case Workload::kCompleteSum:
      return render(countSink->batches(), [](const KeyCount& r) { return std::to_string(r.key) + "=" + std::to_string(r.value); });
    case Workload::kAppendWindows:
    case Workload::kUpdateWindows:
    case Workload::kSessionWindows:
      return render(windowsSink->batches(), [](const WindowCount& r) {
        return str(r.key) + "=" + std::to_string(std::get<0>(r.value)) + "," + std::to_string(std::get<1>(r.value));
      });
    case Workload::kDedupWithinWatermark:
      return render(eventSink->batches(), [](const Event& e) { return std::to_string(e.id) + "@" + std::to_string(e.ts); });
    case Workload::kSessions:
    case Workload::kOuterJoin:
      return render(textSink->batches(), [](const std::string& r) { return r; });
  }
  return {};
}

// Runs `workload` without failures, then with a crash at every step of random batches and in
// the sink: each run's output must equal the first.
// With `overlap`, the runs with failures overlap batches (the run without failures does not).
inline void expectOutputEqualsARunWithoutFailures(Workload workload, std::shared_ptr<StateBackend> backend = nullptr,
                                                  bool overlap = false) {
    auto data = randomInput(42 + static_cast<uint32_t>(workload), 2, 300);
  auto makeInput = [&] {
    auto in = std::make_shared<MemoryStream<Event>>("events", MemoryStreamOptions{.partitions = 2, .maxRecordsPerBatch = 40});
    for (int p = 0; p < 2; ++p) in->addData(data[static_cast<size_t>(p)], p);
    return in;
  };
  int crashes = 0;
  auto clean = std::make_shared<CrashingStore>(memoryCheckpoint());
  Output expected = runWorkload(workload, makeInput(), clean, &crashes, -1, backend);
  ASSERT_EQ(crashes, 0);
  ASSERT_GT(expected.size(), 10u);
  size_t nonEmpty = 0;
  for (const auto& [id, rows] : expected) nonEmpty += !rows.empty();
  ASSERT_GT(nonEmpty, 3u) << "the workload must produce output";

  using Step = CrashingStore::Step;
  std::mt19937 rng(7);
  for (Step step : {Step::kAfterOffsets, Step::kBeforeState, Step::kAfterState, Step::kBeforeCommit, Step::kAfterCommit}) {
    for (int round = 0; round < 3; ++round) {
      int64_t batch = static_cast<int64_t>(rng() % expected.size());
      auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
      store->arm(step, batch);
      int got = 0;
      Output output = runWorkload(workload, makeInput(), store, &got, -1, backend, overlap);
      bool stateStep = step == Step::kBeforeState || step == Step::kAfterState;
      if (!stateStep || store->fired()) {
        EXPECT_TRUE(store->fired()) << "step " << static_cast<int>(step) << " batch " << batch;
      }
      EXPECT_EQ(output, expected) << "crash at step " << static_cast<int>(step) << " of batch " << batch;
    }
  }
  // A crash in the sink: the batch is delivered again after the restart.
  for (int round = 0; round < 3; ++round) {
    int64_t batch = static_cast<int64_t>(rng() % expected.size());
    int sinkCrashes = 0;
    auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
    EXPECT_EQ(runWorkload(workload, makeInput(), store, &sinkCrashes, batch, backend, overlap), expected) << "crash in the sink, batch " << batch;
    EXPECT_EQ(sinkCrashes, 1);
  }
}

}  // namespace dataflow::stateful_testing
