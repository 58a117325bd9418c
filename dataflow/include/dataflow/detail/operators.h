// Runtime operators. Each is typed on its output, and the only virtual call is one `produce` per
// operator per batch: type erasure stays at batch boundaries. Work inside a batch is split into
// oneTBB tasks per partition and per chunk of records, never per record; output keeps each
// partition's order.
#pragma once

#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_invoke.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <numeric>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/sink.h"
#include "dataflow/source.h"
#include "dataflow/detail/fusion.h"
#include "dataflow/detail/partition_watermarks.h"
#include "dataflow/detail/stateful.h"
#include "dataflow/window.h"

namespace dataflow::detail {

// A partition's planned range in one batch.
struct PartitionRange {
  PartitionId partition;
  int64_t from = 0;
  int64_t until = 0;
};

// What operators need to run one batch. Owned by the driver; read-only for operators except the
// input row counters.
struct ExecContext {
  std::vector<std::vector<PartitionRange>> ranges;  // by source index
  std::unique_ptr<std::atomic<int64_t>[]> inputRows;  // by source index
  // Where the time of preparing the batch went: reading the sources (wall time of the scans) and
  // preparing it as a whole (read, parse and every operator up to the sink).
  std::atomic<int64_t> readMicros{0};
  int64_t prepareMicros = 0;
  size_t chunkSize = 16384;
  BatchInfo info;
  // The event times each watermark operator read (by its index). The batch's watermark is
  // info.batchWatermarkMs.
  std::vector<EventTimeStats> eventTime;
  // Scale-out with event time: each partition's own watermark (partition_watermarks.h); null
  // when the query runs as one instance.
  PartitionWatermarks* partitionWatermarks = nullptr;
  // Scale-out (sources assigned by a consumer group): a partition's state may change only in a
  // batch that reads the partition, because its version is the partition's offset.
  bool scaledOut = false;

  // Whether the batch reads records of `partition` from any source.
  bool readsPartition(const PartitionId& partition) const {
    for (const auto& source : ranges) {
      for (const auto& r : source) {
        if (r.partition == partition) return true;
      }
    }
    return false;
  }

  // The watermark records of `partition` are judged late by in this batch.
  int64_t watermarkFor(const PartitionId& partition) const {
    return partitionWatermarks ? partitionWatermarks->current(partition) : info.batchWatermarkMs;
  }
  // The watermark up to which `partition`'s windows close in this batch, once its records are
  // in: the batch's own watermark for one instance (the no-data batch after it closes the rest),
  // the partition's next watermark scaled out (which has no no-data batches).
  int64_t closingWatermarkFor(const PartitionId& partition) const {
    return partitionWatermarks ? partitionWatermarks->next(partition) : info.batchWatermarkMs;
  }
};

template <class T>
class BatchOperator {
 public:
  virtual ~BatchOperator() = default;
  virtual void produce(ExecContext& ctx, Batch<T>& out) = 0;
  // Asks the operator to give each output row its origin (Batch::Partition::origins, or the
  // row's own offset for SourcePosition rows) and returns whether it can: rows made by stateless
  // steps from a source's records can; rows an aggregation emits cannot. Called while planning.
  virtual bool trackOrigins() { return false; }
};

// The source offset of row `i` of a partition whose origins are tracked.
template <class T>
int64_t originOf(const typename Batch<T>::Partition& part, size_t i) {
  if (!part.origins.empty()) return part.origins[i];
  if constexpr (SourcePosition<T>) return static_cast<int64_t>(part.rows[i].offset);
  return -1;
}

// The root of a physical plan: produces the batch and hands it to the sink. The two steps are
// separate so that the driver can produce the next batch while the sink writes this one.
class RootOperator {
 public:
  struct Result {
    int64_t outputRows = 0;
    int64_t deadLetters = 0;
  };
  // A produced batch, typed inside.
  struct Prepared {
    virtual ~Prepared() = default;
  };
  virtual ~RootOperator() = default;
  virtual void open() = 0;
  virtual void close() = 0;
  // Reads and processes the batch of ctx.ranges (uses ranges, inputRows and chunkSize only, so it
  // may run before the batch's id is known). Runs on the arena.
  virtual std::unique_ptr<Prepared> prepare(ExecContext& ctx) = 0;
  // Hands a prepared batch to the dead-letter handler and the sink. May be called again with the
  // same batch after a retriable failure.
  virtual Result deliver(const Prepared& prepared, ExecContext& ctx) = 0;
  Result execute(ExecContext& ctx) { return deliver(*prepare(ctx), ctx); }
};

template <class T>
class ScanOperator final : public BatchOperator<T> {
 public:
  ScanOperator(std::shared_ptr<TypedSource<T>> source, size_t index)
      : source_(std::move(source)), index_(index) {}

  bool trackOrigins() override {
    if constexpr (SourcePosition<T>) return true;  // each record carries its offset
    trackOrigins_ = source_->offsetsCountRecords();
    return trackOrigins_;
  }

  void produce(ExecContext& ctx, Batch<T>& out) override {
    const auto& ranges = ctx.ranges[index_];
    const auto started = std::chrono::steady_clock::now();
    auto& parts = out.partitions();
    size_t first = parts.size();
    parts.resize(first + ranges.size());
    tbb::parallel_for(size_t{0}, ranges.size(), [&](size_t i) {
      const PartitionRange& r = ranges[i];
      auto& part = parts[first + i];
      part.id = r.partition;
      if (source_->offsetsCountRecords()) part.rows.reserve(static_cast<size_t>(r.until - r.from));
      source_->read(r.partition, r.from, r.until, part.rows);
      if constexpr (!SourcePosition<T>) {
        if (trackOrigins_) {  // offsets count records: the i-th record has offset from + i
          part.origins.resize(part.rows.size());
          std::iota(part.origins.begin(), part.origins.end(), r.from);
        }
      }
    });
    ctx.readMicros.fetch_add(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - started).count(),
        std::memory_order_relaxed);
    int64_t n = 0;
    for (size_t i = first; i < parts.size(); ++i) n += static_cast<int64_t>(parts[i].rows.size());
    ctx.inputRows[index_].fetch_add(n, std::memory_order_relaxed);
  }

 private:
  std::shared_ptr<TypedSource<T>> source_;
  size_t index_;
  bool trackOrigins_ = false;
};

// Runs a fused Pipe over every chunk of every partition in parallel.
template <class T, class P>
class FusedOperator final : public BatchOperator<T> {
  using In = typename P::input_type;

 public:
  FusedOperator(std::unique_ptr<BatchOperator<In>> input, P pipe)
      : input_(std::move(input)), pipe_(std::move(pipe)) {}

  bool trackOrigins() override { return trackOrigins_ = input_->trackOrigins(); }

  void produce(ExecContext& ctx, Batch<T>& out) override {
    Batch<In> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());

    struct Chunk {
      size_t partition;
      size_t begin;
      size_t end;
      std::vector<T> rows;
      std::vector<int64_t> origins;
      std::vector<DeadLetter> deadLetters;
    };
    const size_t chunkSize = ctx.chunkSize == 0 ? 1 : ctx.chunkSize;
    std::vector<Chunk> chunks;
    for (size_t p = 0; p < in.partitions().size(); ++p) {
      size_t n = in.partitions()[p].rows.size();
      for (size_t b = 0; b < n; b += chunkSize) chunks.push_back({p, b, std::min(n, b + chunkSize), {}, {}, {}});
    }
    tbb::parallel_for(size_t{0}, chunks.size(), [&](size_t i) {
      Chunk& c = chunks[i];
      const auto& part = in.partitions()[c.partition];
      ChunkContext cc{&part.id, &c.deadLetters};
      c.rows.reserve(c.end - c.begin);
      if (trackOrigins_) {
        int64_t origin = 0;
        auto emit = [&c, &origin](auto&& row) {
          c.rows.emplace_back(std::forward<decltype(row)>(row));
          c.origins.push_back(origin);
        };
        for (size_t r = c.begin; r < c.end; ++r) {
          origin = originOf<In>(part, r);
          pipe_.run(part.rows[r], cc, emit);
        }
        return;
      }
      auto emit = [&c](auto&& row) { c.rows.emplace_back(std::forward<decltype(row)>(row)); };
      for (size_t r = c.begin; r < c.end; ++r) pipe_.run(part.rows[r], cc, emit);
    });

    // Stitch chunks back into partitions in order: a lone chunk is moved, several are moved into
    // one exactly-sized vector.
    auto& parts = out.partitions();
    parts.resize(in.partitions().size());
    std::vector<size_t> totals(parts.size(), 0), counts(parts.size(), 0);
    for (const Chunk& c : chunks) {
      totals[c.partition] += c.rows.size();
      ++counts[c.partition];
    }
    for (size_t p = 0; p < parts.size(); ++p) {
      parts[p].id = in.partitions()[p].id;
      if (counts[p] > 1) parts[p].rows.reserve(totals[p]);
    }
    for (Chunk& c : chunks) {
      auto& rows = parts[c.partition].rows;
      auto& origins = parts[c.partition].origins;
      if (counts[c.partition] == 1) {
        rows = std::move(c.rows);
        origins = std::move(c.origins);
      } else {
        rows.insert(rows.end(), std::make_move_iterator(c.rows.begin()),
                    std::make_move_iterator(c.rows.end()));
        origins.insert(origins.end(), c.origins.begin(), c.origins.end());
      }
      for (auto& d : c.deadLetters) out.deadLetters().push_back(std::move(d));
    }
  }

 private:
  std::unique_ptr<BatchOperator<In>> input_;
  P pipe_;
  bool trackOrigins_ = false;
};

template <class T>
class UnionOperator final : public BatchOperator<T> {
 public:
  UnionOperator(std::unique_ptr<BatchOperator<T>> left, std::unique_ptr<BatchOperator<T>> right)
      : left_(std::move(left)), right_(std::move(right)) {}

  bool trackOrigins() override {
    bool l = left_->trackOrigins();
    bool r = right_->trackOrigins();
    return l && r;
  }

  void produce(ExecContext& ctx, Batch<T>& out) override {
    Batch<T> right;
    tbb::parallel_invoke([&] { left_->produce(ctx, out); }, [&] { right_->produce(ctx, right); });
    for (auto& p : right.partitions()) out.partitions().push_back(std::move(p));
    for (auto& d : right.deadLetters()) out.deadLetters().push_back(std::move(d));
  }

 private:
  std::unique_ptr<BatchOperator<T>> left_, right_;
};

// Keeps, per key, only the record with the greatest version in the batch; on equal versions the
// later record (by partition order, then position) wins. Survivors keep their partition and order.
template <class T, class KeyFn, class VersionFn>
class LatestByKeyOperator final : public BatchOperator<T> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using Version = std::decay_t<std::invoke_result_t<const VersionFn&, const T&>>;

 public:
  LatestByKeyOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, VersionFn version)
      : input_(std::move(input)), key_(std::move(key)), version_(std::move(version)) {}

  void produce(ExecContext& ctx, Batch<T>& out) override {
    Batch<T> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    struct Winner {
      size_t partition;
      size_t index;
      Version version;
    };
    // Pass 1, in parallel: the winner per key within each partition.
    auto& parts = in.partitions();
    std::vector<absl::flat_hash_map<Key, Winner>> local(parts.size());
    tbb::parallel_for(size_t{0}, parts.size(), [&](size_t p) {
      auto& winners = local[p];
      const auto& rows = parts[p].rows;
      winners.reserve(rows.size());
      for (size_t i = 0; i < rows.size(); ++i) {
        Version v = std::invoke(version_, rows[i]);
        auto [it, inserted] = winners.try_emplace(std::invoke(key_, rows[i]), Winner{p, i, v});
        if (!inserted && !(v < it->second.version)) it->second = Winner{p, i, std::move(v)};
      }
    });
    // Pass 2: merge across partitions (a key normally lives in one partition, so this is cheap).
    std::vector<std::vector<char>> keep(parts.size());
    for (size_t p = 0; p < parts.size(); ++p) keep[p].assign(parts[p].rows.size(), 0);
    if (parts.size() == 1) {
      for (auto& [k, w] : local[0]) keep[0][w.index] = 1;
    } else {
      absl::flat_hash_map<Key, Winner> global;
      for (auto& winners : local) {
        for (auto& [k, w] : winners) {
          auto [it, inserted] = global.try_emplace(k, w);
          if (!inserted && !(w.version < it->second.version)) it->second = w;
        }
      }
      for (auto& [k, w] : global) keep[w.partition][w.index] = 1;
    }
    auto& outParts = out.partitions();
    outParts.resize(parts.size());
    for (size_t p = 0; p < parts.size(); ++p) {
      outParts[p].id = parts[p].id;
      for (size_t i = 0; i < parts[p].rows.size(); ++i) {
        if (keep[p][i]) outParts[p].rows.push_back(std::move(parts[p].rows[i]));
      }
    }
  }

 private:
  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  VersionFn version_;
};

template <class T>
class SinkOperator final : public RootOperator {
 public:
  SinkOperator(std::unique_ptr<BatchOperator<T>> input, std::shared_ptr<Sink<T>> sink,
               DeadLetterHandler deadLetters)
      : input_(std::move(input)), sink_(std::move(sink)), deadLetters_(std::move(deadLetters)) {}

  void open() override { sink_->open(); }
  void close() override { sink_->close(); }

  struct Produced final : Prepared {
    Batch<T> batch;
  };

  std::unique_ptr<Prepared> prepare(ExecContext& ctx) override {
    auto out = std::make_unique<Produced>();
    input_->produce(ctx, out->batch);
    return out;
  }

  Result deliver(const Prepared& prepared, ExecContext& ctx) override {
    const Batch<T>& batch = static_cast<const Produced&>(prepared).batch;
    if (deadLetters_ && !batch.deadLetters().empty()) deadLetters_(batch.deadLetters(), ctx.info);
    sink_->addBatch(batch, ctx.info);
    return {static_cast<int64_t>(batch.numRows()), static_cast<int64_t>(batch.deadLetters().size())};
  }

 private:
  std::unique_ptr<BatchOperator<T>> input_;
  std::shared_ptr<Sink<T>> sink_;
  DeadLetterHandler deadLetters_;
};

}  // namespace dataflow::detail
