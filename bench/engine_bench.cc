// Engine micro-benchmarks: the fused operator chain against the same chain as virtual operators,
// thread scaling on a CPU-bound chain, and the fixed cost of one micro-batch.
//
//   build/release/bench/engine_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <dataflow/dataflow.h>

#include <memory>
#include <numeric>

namespace dataflow {
namespace {

constexpr int64_t kRecords = 1 << 18;  // 256K records per batch

// Hands the fused operator a prepared batch without counting its construction.
class PreparedInput final : public detail::BatchOperator<int64_t> {
 public:
  Batch<int64_t> next;
  void produce(detail::ExecContext&, Batch<int64_t>& out) override { out = std::move(next); }
};

Batch<int64_t> makeBatch(int partitions) {
  Batch<int64_t> b;
  b.partitions().resize(static_cast<size_t>(partitions));
  int64_t per = kRecords / partitions;
  for (int p = 0; p < partitions; ++p) {
    auto& part = b.partitions()[static_cast<size_t>(p)];
    part.id = {"bench", p};
    part.rows.resize(static_cast<size_t>(per));
    std::iota(part.rows.begin(), part.rows.end(), p * per);
  }
  return b;
}

// Runs `pipe` through a FusedOperator on an arena of `threads` threads, one batch per iteration.
template <class P>
void runFused(benchmark::State& state, P pipe, int threads) {
  tbb::task_arena arena(threads);
  auto input = std::make_unique<PreparedInput>();
  PreparedInput* in = input.get();
  detail::FusedOperator<int64_t, P> op(std::move(input), pipe);
  detail::ExecContext ctx;
  ctx.chunkSize = 16384;
  const Batch<int64_t> prototype = makeBatch(threads);
  int64_t out = 0;
  for (auto _ : state) {
    state.PauseTiming();
    in->next = prototype;
    state.ResumeTiming();
    Batch<int64_t> result;
    arena.execute([&] { op.produce(ctx, result); });
    out += static_cast<int64_t>(result.numRows());
    benchmark::DoNotOptimize(result);
  }
  state.SetItemsProcessed(state.iterations() * kRecords);
  state.counters["records_per_s_per_thread"] = benchmark::Counter(
      static_cast<double>(state.iterations() * kRecords) / threads, benchmark::Counter::kIsRate);
  benchmark::DoNotOptimize(out);
}


void BM_FusedChain(benchmark::State& state) {
  auto m1 = [](int64_t x) { return x * 3; };
  auto f = [](int64_t x) { return (x & 7) != 0; };
  auto m2 = [](int64_t x) { return x + 1; };
  auto pipe = detail::Pipe<int64_t>{}.append(detail::MapOp<decltype(m1)>{m1})
                  .append(detail::FilterOp<decltype(f)>{f})
                  .append(detail::MapOp<decltype(m2)>{m2});
  runFused(state, pipe, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_FusedChain)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// The same chain as a Volcano-style list of virtual operators: one virtual call per operator per
// record, as an engine without compile-time fusion would run it.
struct VirtualOp {
  virtual ~VirtualOp() = default;
  virtual bool apply(int64_t in, int64_t& out) const = 0;  // false: record dropped
};
struct VMap1 final : VirtualOp {
  bool apply(int64_t in, int64_t& out) const override { out = in * 3; return true; }
};
struct VFilter final : VirtualOp {
  bool apply(int64_t in, int64_t& out) const override { out = in; return (in & 7) != 0; }
};
struct VMap2 final : VirtualOp {
  bool apply(int64_t in, int64_t& out) const override { out = in + 1; return true; }
};

void BM_VirtualOperatorChain(benchmark::State& state) {
  std::vector<std::unique_ptr<VirtualOp>> ops;
  ops.push_back(std::make_unique<VMap1>());
  ops.push_back(std::make_unique<VFilter>());
  ops.push_back(std::make_unique<VMap2>());
  benchmark::DoNotOptimize(ops.data());
  const Batch<int64_t> prototype = makeBatch(1);
  for (auto _ : state) {
    std::vector<int64_t> out;
    out.reserve(static_cast<size_t>(kRecords));
    for (int64_t x : prototype.partitions()[0].rows) {
      int64_t v = x;
      bool keep = true;
      for (const auto& op : ops) {
        if (!op->apply(v, v)) {
          keep = false;
          break;
        }
      }
      if (keep) out.push_back(v);
    }
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * kRecords);
}
BENCHMARK(BM_VirtualOperatorChain)->Unit(benchmark::kMillisecond)->UseRealTime();

// CPU-bound: ~100 ns of integer mixing per record, to measure scaling across threads.
void BM_CpuBoundChain(benchmark::State& state) {
  auto heavy = [](int64_t x) {
    uint64_t h = static_cast<uint64_t>(x);
    for (int i = 0; i < 64; ++i) h = (h ^ (h >> 31)) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(i);
    return static_cast<int64_t>(h);
  };
  auto f = [](int64_t x) { return (x & 1) == 0; };
  auto pipe = detail::Pipe<int64_t>{}.append(detail::MapOp<decltype(heavy)>{heavy})
                  .append(detail::FilterOp<decltype(f)>{f});
  runFused(state, pipe, static_cast<int>(state.range(0)));
}
BENCHMARK(BM_CpuBoundChain)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

// The fixed cost of one micro-batch through the whole driver: plan offsets, write the offsets log
// and commit log to the in-memory store, run the plan on the arena, call the sink, build progress.
void BM_MicroBatchOverhead(benchmark::State& state) {
  Session session({.workerThreads = 1});
  auto in = std::make_shared<MemoryStream<int64_t>>("bench");
  int64_t seen = 0;
  auto execution = session.readStream(in)
                       .map([](int64_t x) { return x + 1; })
                       .writeStream()
                       .checkpoint(memoryCheckpoint())
                       .foreachBatch([&](const Batch<int64_t>& b, const BatchInfo&) { seen += static_cast<int64_t>(b.numRows()); })
                       .build();
  execution->initialize();
  for (auto _ : state) {
    in->addData({1});
    if (!execution->runBatch()) state.SkipWithError("no batch ran");
  }
  state.SetItemsProcessed(state.iterations());
  benchmark::DoNotOptimize(seen);
}
BENCHMARK(BM_MicroBatchOverhead)->Unit(benchmark::kMicrosecond);

// A trigger that finds no new data: what an idle query costs per poll.
void BM_IdleTrigger(benchmark::State& state) {
  Session session({.workerThreads = 1});
  auto in = std::make_shared<MemoryStream<int64_t>>("bench");
  auto execution = session.readStream(in).writeStream()
                       .foreachBatch([](const Batch<int64_t>&, const BatchInfo&) {})
                       .build();
  execution->initialize();
  for (auto _ : state) benchmark::DoNotOptimize(execution->runBatch());
}
BENCHMARK(BM_IdleTrigger)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace dataflow

BENCHMARK_MAIN();
