// Stateful operator benchmarks: what state costs per record, per checkpoint and per restore.
//
//   build/release/bench/state_bench --benchmark_counters_tabular=true
//
// Targets (issue #12), checked against the counters printed:
//   BM_GroupBySum/keys:10000/threads:1        >= 50 M records/s (records_per_s_per_thread)
//   BM_GroupBySum/keys:1000000/threads:1      >= 10 M records/s
//   BM_GroupBySum/.../threads:2               >= 1.7x threads:1
//   BM_GroupBySumRocksDb/keys:*               >= 1 M records/s per core (state in RocksDB)
//   BM_TumblingWindowCount                    >= 10 M records/s per core
//   BM_Checkpoint/state:10000000 vs /state:100000, 100 k distinct keys changed per batch: within 2x
//   BM_Restore/keys:1000000                   < 1 s; bytes_per_key <= 64
//   BM_Stateless vs BM_StatelessThenAggregate: what the aggregation adds to a fused chain
#include <benchmark/benchmark.h>
#include <dataflow/dataflow.h>
#include <dataflow/rocksdb/rocksdb_state_backend.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>

namespace dataflow {
namespace {

struct Rec {
  int64_t key;
  double value;
  int64_t ts;
};

constexpr int64_t kBatch = 1 << 20;  // records per partition per batch (1 M)

// Hands an operator a prepared batch without counting its construction.
template <class T>
class PreparedInput final : public detail::BatchOperator<T> {
 public:
  Batch<T> next;
  void produce(detail::ExecContext&, Batch<T>& out) override { out = std::move(next); }
};

Batch<Rec> makeBatch(int partitions, int64_t keys, uint32_t seed, int64_t tsBase = 0, int64_t tsSpan = 1,
                     int64_t batch = kBatch) {
  Batch<Rec> b;
  std::mt19937_64 rng(seed);
  b.partitions().resize(static_cast<size_t>(partitions));
  for (int p = 0; p < partitions; ++p) {
    auto& part = b.partitions()[static_cast<size_t>(p)];
    part.id = {"bench", p};
    part.rows.resize(static_cast<size_t>(batch));
    for (int64_t i = 0; i < batch; ++i) {
      part.rows[static_cast<size_t>(i)] = {static_cast<int64_t>(rng() % static_cast<uint64_t>(keys)),
                                           static_cast<double>(i & 1023), tsBase + i * tsSpan / batch};
    }
  }
  return b;
}

auto keyOf = [](const Rec& r) { return r.key; };
auto valueOf = [](const Rec& r) { return r.value; };
auto timeOf = [](const Rec& r) { return r.ts; };

using SumOp = detail::AggregateOperator<Rec, decltype(keyOf), agg::Sum<decltype(valueOf)>, detail::NoWindow>;

// One batch per iteration through `op`: its input is a fresh copy of `prototype` (not timed), then
// the operator's produce and the encoding of the batch's delta, both on `arena`, as the engine
// runs them.
template <class Op>
void runBatches(benchmark::State& state, Op& op, PreparedInput<Rec>* in, const Batch<Rec>& prototype,
                tbb::task_arena& arena) {
  detail::ExecContext ctx;
  int64_t version = 0;
  for (auto _ : state) {
    state.PauseTiming();
    in->next = prototype;
    state.ResumeTiming();
    Batch<KeyValue<int64_t, double>> out;
    arena.execute([&] { op.produce(ctx, out); });
    StateChanges changes;
    arena.execute([&] { op.collectChanges(version++, changes); });
    benchmark::DoNotOptimize(out);
    benchmark::DoNotOptimize(changes);
  }
}

// groupByKey(int64).sum(double), update mode: state update, the changed keys' output rows and the
// batch's encoded delta, per batch of `batch` records per thread (1 M: the input streams from
// memory; 64 K: it stays in each core's cache, which is what thread scaling is measured with).
void BM_GroupBySum(benchmark::State& state) {
  const int64_t keys = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  const int64_t batch = state.range(2);
  tbb::task_arena arena(threads);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  SumOp op(std::move(input), keyOf, sum(valueOf), {}, OutputMode::kUpdate);
  runBatches(state, op, in, makeBatch(threads, keys, 1, 0, 1, batch), arena);
  auto p = op.progress();
  state.SetItemsProcessed(state.iterations() * batch * threads);
  state.counters["records_per_s_per_thread"] =
      benchmark::Counter(static_cast<double>(state.iterations() * batch), benchmark::Counter::kIsRate);
  state.counters["keys_in_state"] = static_cast<double>(p.numRowsTotal);
  state.counters["bytes_per_key"] = static_cast<double>(p.memoryUsedBytes) / static_cast<double>(p.numRowsTotal);
}
BENCHMARK(BM_GroupBySum)
    ->ArgNames({"keys", "threads", "batch"})
    ->Args({10000, 1, kBatch})->Args({10000, 2, kBatch})->Args({1000000, 1, kBatch})->Args({1000000, 2, kBatch})
    ->Args({10000, 1, 1 << 16})->Args({10000, 2, 1 << 16})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// The same aggregation with its state in RocksDB (connectors/rocksdb) and a cache of `cache` keys
// per partition (the default, 262 144, or more): with 10 k keys the working set stays cached and
// only the batch's delta is written to RocksDB; with 1 M keys and the default cache most of a
// batch's keys are read back from RocksDB (one multiGet per batch) and the cache is emptied after
// each batch; with a cache larger than the state only the writes remain (what they cost alone).
void BM_GroupBySumRocksDb(benchmark::State& state) {
  const int64_t keys = state.range(0);
  const auto cacheKeys = static_cast<size_t>(state.range(1));
  tbb::task_arena arena(1);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  SumOp op(std::move(input), keyOf, sum(valueOf), {}, OutputMode::kUpdate);
  op.useStateBackend(rocksdb::stateBackend(), "bench", cacheKeys);
  runBatches(state, op, in, makeBatch(1, keys, 1), arena);
  auto p = op.progress();
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["records_per_s"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
  state.counters["keys_in_state"] = static_cast<double>(p.numRowsTotal);
}
BENCHMARK(BM_GroupBySumRocksDb)
    ->ArgNames({"keys", "cache"})
    ->Args({10000, StateOptions{}.cachedKeysPerPartition})->Args({1000000, StateOptions{}.cachedKeysPerPartition})
    ->Args({1000000, 2000000})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// A tumbling one-second window count with a watermark, append mode: each batch covers 10 s of
// event time over 10 k keys (10 k keys per window), windows the watermark passed are emitted
// and evicted.
void BM_TumblingWindowCount(benchmark::State& state) {
  using WinOp = detail::AggregateOperator<Rec, decltype(keyOf), agg::Count, detail::EventWindows<decltype(timeOf)>>;
  tbb::task_arena arena(1);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  WinOp op(std::move(input), keyOf, count(), detail::EventWindows<decltype(timeOf)>{tumbling(std::chrono::seconds(1)), timeOf},
           OutputMode::kAppend);
  detail::ExecContext ctx;
  const int64_t span = 10000;
  std::vector<Batch<Rec>> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(makeBatch(1, 10000, static_cast<uint32_t>(i), 0, span));
  int64_t batch = 0, emitted = 0, version = 0;
  for (auto _ : state) {
    state.PauseTiming();
    in->next = batches[static_cast<size_t>(batch % 4)];
    for (auto& r : in->next.partitions()[0].rows) r.ts += batch * span;  // time moves on
    ctx.info.batchWatermarkMs = batch * span - 1000;                                // 1 s delay
    ++batch;
    state.ResumeTiming();
    Batch<KeyValue<Windowed<int64_t>, int64_t>> out;
    arena.execute([&] { op.produce(ctx, out); });
    StateChanges changes;
    op.collectChanges(version++, changes);
    emitted += static_cast<int64_t>(out.numRows());
    benchmark::DoNotOptimize(changes);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
  state.counters["records_per_s"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
  state.counters["windows_emitted_per_batch"] = static_cast<double>(emitted) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_TumblingWindowCount)->Unit(benchmark::kMillisecond)->UseRealTime();

// Checkpoint cost with `state` keys in state and 100 k of them changed per batch: encoding the
// delta and writing it to a directory checkpoint (fsync on); the two phases also as counters.
void BM_Checkpoint(benchmark::State& state) {
  const int64_t total = state.range(0);
  const int64_t changed = 100000;
  tbb::task_arena arena(1);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  SumOp op(std::move(input), keyOf, sum(valueOf), {}, OutputMode::kUpdate);
  detail::ExecContext ctx;
  // Fill the state: every key once.
  Batch<Rec> fill;
  fill.partitions().push_back({{"bench", 0}, {}, {}});
  for (int64_t k = 0; k < total; ++k) fill.partitions()[0].rows.push_back({k, 1.0, 0});
  in->next = std::move(fill);
  Batch<KeyValue<int64_t, double>> ignored;
  arena.execute([&] { op.produce(ctx, ignored); });
  StateChanges initial;
  op.collectChanges(0, initial);
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-state-bench-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto store = directoryCheckpoint(dir);
  // Batches that change `changed` distinct keys spread over the whole key space, in random order
  // (all of them with 100 k keys in state).
  std::mt19937_64 rng(3);
  std::vector<int64_t> keys;
  keys.reserve(static_cast<size_t>(changed));
  for (int64_t k = 0, left = total; k < total && static_cast<int64_t>(keys.size()) < changed; ++k, --left) {
    if (static_cast<int64_t>(rng() % static_cast<uint64_t>(left)) < changed - static_cast<int64_t>(keys.size())) keys.push_back(k);
  }
  std::shuffle(keys.begin(), keys.end(), rng);
  Batch<Rec> update;
  update.partitions().push_back({{"bench", 0}, {}, {}});
  for (int64_t k : keys) update.partitions()[0].rows.push_back({k, 2.0, 0});
  int64_t version = 1;
  double encodeMs = 0, writeMs = 0;
  for (auto _ : state) {
    state.PauseTiming();
    in->next = update;
    Batch<KeyValue<int64_t, double>> out;
    arena.execute([&] { op.produce(ctx, out); });
    state.ResumeTiming();
    StateChanges changes;
    auto t0 = std::chrono::steady_clock::now();
    op.collectChanges(version++, changes);
    auto t1 = std::chrono::steady_clock::now();
    store->writeStateFiles(changes);
    encodeMs += std::chrono::duration<double, std::milli>(t1 - t0).count();
    writeMs += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count();
  }
  state.counters["encode_ms"] = encodeMs / static_cast<double>(state.iterations());
  state.counters["write_ms"] = writeMs / static_cast<double>(state.iterations());
  state.counters["keys_in_state"] = static_cast<double>(op.progress().numRowsTotal);
  state.counters["keys_changed"] = static_cast<double>(changed);
  std::filesystem::remove_all(dir);
}
BENCHMARK(BM_Checkpoint)->ArgNames({"state"})->Arg(100000)->Arg(10000000)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(10);

// Restoring 1 M int64 -> {count, sum} keys from a snapshot in the in-memory store, and the
// memory each key takes in state.
void BM_Restore(benchmark::State& state) {
  const int64_t keys = state.range(0);
  using Acc = std::tuple<int64_t, double>;
  StateFileWriter w(StateFileWriter::Kind::kSnapshot);
  for (int64_t k = 0; k < keys; ++k) {
    std::string kb, vb;
    StateCodec<int64_t>::encode(k, kb);
    StateCodec<Acc>::encode(Acc{k, static_cast<double>(k)}, vb);
    w.put(kb, vb);
  }
  std::string bytes = w.finish();
  double bytesPerKey = 0;
  for (auto _ : state) {
    detail::PartitionState<int64_t, Acc> st;
    StateFileReader reader(bytes, "bench");
    st.apply(reader);
    bytesPerKey = static_cast<double>(st.memoryBytes()) / static_cast<double>(st.map().size());
    benchmark::DoNotOptimize(st);
  }
  state.counters["bytes_per_key"] = bytesPerKey;
  state.counters["snapshot_bytes"] = static_cast<double>(bytes.size());
}
BENCHMARK(BM_Restore)->ArgNames({"keys"})->Arg(1000000)->Unit(benchmark::kMillisecond)->UseRealTime();

// Side by side: a fused map -> filter chain, and the same chain ending in a keyed sum.
auto scale = [](const Rec& r) { return Rec{r.key, r.value * 1.5, r.ts}; };
auto positive = [](const Rec& r) { return r.value > 0.5; };
using Chain = decltype(detail::Pipe<Rec>{}
                           .append(detail::MapOp<decltype(scale)>{scale})
                           .append(detail::FilterOp<decltype(positive)>{positive}));
Chain chain() {
  return detail::Pipe<Rec>{}.append(detail::MapOp<decltype(scale)>{scale}).append(detail::FilterOp<decltype(positive)>{positive});
}

void BM_Stateless(benchmark::State& state) {
  tbb::task_arena arena(1);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  detail::FusedOperator<Rec, Chain> op(std::move(input), chain());
  detail::ExecContext ctx;
  const Batch<Rec> prototype = makeBatch(1, 10000, 5);
  for (auto _ : state) {
    state.PauseTiming();
    in->next = prototype;
    state.ResumeTiming();
    Batch<Rec> out;
    arena.execute([&] { op.produce(ctx, out); });
    benchmark::DoNotOptimize(out);
  }
  state.counters["records_per_s"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Stateless)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_StatelessThenAggregate(benchmark::State& state) {
  tbb::task_arena arena(1);
  auto input = std::make_unique<PreparedInput<Rec>>();
  auto* in = input.get();
  auto fused = std::make_unique<detail::FusedOperator<Rec, Chain>>(std::move(input), chain());
  SumOp op(std::move(fused), keyOf, sum(valueOf), {}, OutputMode::kUpdate);
  runBatches(state, op, in, makeBatch(1, 10000, 5), arena);
  state.counters["records_per_s"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_StatelessThenAggregate)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace dataflow

BENCHMARK_MAIN();
