// Join operators: stream-static (a hash index of the table, probed by every record in parallel)
// and stream-stream (symmetric hash join with both sides in state, evicted by the watermark).
#pragma once

#include <absl/container/btree_map.h>
#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_invoke.h>

#include <memory>
#include <tuple>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/stateful.h"
#include "dataflow/join.h"
#include "dataflow/window.h"

namespace dataflow::detail {

template <class L, class R, class LK, class RK, class F>
class StaticJoinOperator final
    : public BatchOperator<std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>> {
  using Out = std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>;
  using Key = std::decay_t<std::invoke_result_t<const RK&, const R&>>;
  using Index = absl::flat_hash_map<Key, std::vector<const R*>>;

 public:
  StaticJoinOperator(std::unique_ptr<BatchOperator<L>> input, StaticTable<R> table, LK leftKey, RK rightKey, F combine,
                     JoinType type)
      : input_(std::move(input)), table_(std::move(table)), leftKey_(std::move(leftKey)),
        rightKey_(std::move(rightKey)), combine_(std::move(combine)), type_(type) {}

  void produce(ExecContext& ctx, Batch<Out>& out) override {
    Batch<L> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    if (!index_ || table_.reloads()) {
      rows_ = table_.rows();
      index_ = std::make_unique<Index>();
      for (const R& r : *rows_) (*index_)[std::invoke(rightKey_, r)].push_back(&r);
    }
    auto& parts = in.partitions();
    auto& outParts = out.partitions();
    outParts.resize(parts.size());
    tbb::parallel_for(size_t{0}, parts.size(), [&](size_t p) {
      outParts[p].id = parts[p].id;
      auto& rows = outParts[p].rows;
      rows.reserve(parts[p].rows.size());
      for (const L& l : parts[p].rows) {
        auto it = index_->find(std::invoke(leftKey_, l));
        if (it != index_->end()) {
          for (const R* r : it->second) rows.push_back(std::invoke(combine_, l, r));
        } else if (type_ == JoinType::kLeftOuter) {
          rows.push_back(std::invoke(combine_, l, static_cast<const R*>(nullptr)));
        }
      }
    });
  }

 private:
  std::unique_ptr<BatchOperator<L>> input_;
  StaticTable<R> table_;
  LK leftKey_;
  RK rightKey_;
  F combine_;
  JoinType type_;
  std::shared_ptr<const std::vector<R>> rows_;
  std::unique_ptr<Index> index_;
};

// Drops a join side's rows whose deadline is before the watermark, calling onEvict for each.
// `side` has `state` (key -> rows) and `byDeadline` (eviction time -> keys).
template <class Side, class OnEvict, class Deadline>
void evictJoinRows(Side& side, int64_t watermark, OnEvict&& onEvict, Deadline&& deadline) {
  auto& index = side.byDeadline;
  while (!index.empty() && index.begin()->first < watermark) {
    for (const auto& k : index.begin()->second) {
      auto it = side.state.map().find(k);
      if (it == side.state.map().end()) continue;
      auto& entries = it->second.value;
      size_t before = entries.size();
      std::erase_if(entries, [&](auto& e) {
        if (deadline(e) >= watermark) return false;
        onEvict(e);
        return true;
      });
      if (entries.empty()) {
        side.state.erase(it);
      } else if (entries.size() != before) {
        side.state.touch(it);
      }
    }
    index.erase(index.begin());
  }
}

// Symmetric hash join of two streams. Both sides' rows live in state by key (one state
// partition: rows of a key may come from any partition of either source), each with its event
// time and, on the left, whether it has matched. Per batch: the left side's new rows meet the
// right state and join the left state; then the right side's new rows meet the left state (new
// left rows included) and join the right state; then the watermark evicts what can no longer
// match, emitting unmatched left rows of a left outer join.
template <class L, class R, class LK, class RK, class F, class TR>
class StreamJoinOperator final
    : public BatchOperator<std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>>,
      public StatefulOperator {
  using Out = std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>;
  using Key = std::decay_t<std::invoke_result_t<const LK&, const L&>>;
  static constexpr bool kTimed = !std::is_same_v<TR, NoTimeRange>;
  using LeftEntry = std::tuple<L, int64_t, bool>;  // row, event time, matched
  using RightEntry = std::tuple<R, int64_t>;
  template <class E>
  struct Side {
    PartitionState<Key, std::vector<E>> state;
    absl::btree_map<int64_t, std::vector<Key>> byDeadline;  // eviction time -> keys
  };

 public:
  StreamJoinOperator(std::unique_ptr<BatchOperator<L>> left, std::unique_ptr<BatchOperator<R>> right, LK leftKey,
                     RK rightKey, F combine, JoinType type, TR range)
      : left_(std::move(left)), right_(std::move(right)), leftKey_(std::move(leftKey)),
        rightKey_(std::move(rightKey)), combine_(std::move(combine)), type_(type), range_(std::move(range)) {}

  std::string operatorName() const override { return "symmetricHashJoin"; }
  bool runsAhead() const override { return true; }

  void produce(ExecContext& ctx, Batch<Out>& out) override {
    Batch<L> lin;
    Batch<R> rin;
    tbb::parallel_invoke([&] { left_->produce(ctx, lin); }, [&] { right_->produce(ctx, rin); });
    out.deadLetters() = std::move(lin.deadLetters());
    for (auto& d : rin.deadLetters()) out.deadLetters().push_back(std::move(d));
    const int64_t watermark = ctx.info.batchWatermarkMs;
    droppedLate_ = 0;
    out.partitions().resize(1);
    out.partitions()[0].id = kPartition;
    auto& rows = out.partitions()[0].rows;

    for (auto& part : lin.partitions()) {
      for (L& l : part.rows) {
        int64_t t = leftTime(l);
        if (late(t, watermark)) {
          if (lateToDeadLetters()) out.deadLetters().push_back(lateDeadLetter(l, t, watermark, operatorName()));
          continue;
        }
        Key k = std::invoke(leftKey_, l);
        bool matched = false;
        auto it = right_side_.state.map().find(k);
        if (it != right_side_.state.map().end()) {
          for (const RightEntry& e : it->second.value) {
            if (!inRange(t, std::get<1>(e))) continue;
            rows.push_back(std::invoke(combine_, std::as_const(l), &std::get<0>(e)));
            matched = true;
          }
        }
        bool created = false;
        left_side_.state.upsert(k, [] { return std::vector<LeftEntry>{}; }, created).emplace_back(std::move(l), t, matched);
        if constexpr (kTimed) left_side_.byDeadline[t + range_.upper.count()].push_back(k);
      }
    }
    for (auto& part : rin.partitions()) {
      for (R& r : part.rows) {
        int64_t t = rightTime(r);
        if (late(t, watermark)) {
          if (lateToDeadLetters()) out.deadLetters().push_back(lateDeadLetter(r, t, watermark, operatorName()));
          continue;
        }
        Key k = std::invoke(rightKey_, r);
        auto it = left_side_.state.map().find(k);
        if (it != left_side_.state.map().end()) {
          bool marked = false;
          for (auto& [l, lt, matched] : it->second.value) {
            if (!inRange(lt, t)) continue;
            rows.push_back(std::invoke(combine_, std::as_const(l), &std::as_const(r)));
            if (!matched) matched = marked = true;
          }
          if (marked) left_side_.state.touch(it);
        }
        bool created = false;
        right_side_.state.upsert(k, [] { return std::vector<RightEntry>{}; }, created).emplace_back(std::move(r), t);
        if constexpr (kTimed) right_side_.byDeadline[t - range_.lower.count()].push_back(k);
      }
    }
    if constexpr (kTimed) {
      if (watermark != kNoWatermark) {
        evictJoinRows(left_side_, watermark, [&](LeftEntry& e) {
          if (type_ == JoinType::kLeftOuter && !std::get<2>(e)) rows.push_back(std::invoke(combine_, std::as_const(std::get<0>(e)), static_cast<const R*>(nullptr)));
        }, [&](const LeftEntry& e) { return std::get<1>(e) + range_.upper.count(); });
        evictJoinRows(right_side_, watermark, [](RightEntry&) {}, [&](const RightEntry& e) { return std::get<1>(e) - range_.lower.count(); });
      }
    }
  }

  void clearState() override {
    left_side_ = {};
    right_side_ = {};
  }
  void restoreFile(const PartitionId&, const StateFileReader& file) override {
    file.forEach(
        [&](std::string_view key, std::string_view value) {
          if (key.at(0) == 'L') left_side_.state.applyPut(key.substr(1), value);
          else right_side_.state.applyPut(key.substr(1), value);
        },
        [&](std::string_view key) {
          if (key.at(0) == 'L') left_side_.state.applyRemove(key.substr(1));
          else right_side_.state.applyRemove(key.substr(1));
        });
  }
  void finishRestore() override {
    if constexpr (kTimed) {
      left_side_.byDeadline.clear();
      right_side_.byDeadline.clear();
      for (const auto& [k, slot] : left_side_.state.map()) {
        for (const auto& e : slot.value) left_side_.byDeadline[std::get<1>(e) + range_.upper.count()].push_back(k);
      }
      for (const auto& [k, slot] : right_side_.state.map()) {
        for (const auto& e : slot.value) right_side_.byDeadline[std::get<1>(e) - range_.lower.count()].push_back(k);
      }
    }
  }
  void collectChanges(int64_t version, StateChanges& out) override {
    progress_.numRowsRemoved = left_side_.state.removedCount() + right_side_.state.removedCount();
    StateFileWriter w(StateFileWriter::Kind::kDelta);
    progress_.numRowsUpdated = static_cast<int64_t>(left_side_.state.writeDelta(w, "L") + right_side_.state.writeDelta(w, "R"));
    progress_.numDeltaBytes = 0;
    if (w.count() == 0) return;
    std::string bytes = w.finish();
    progress_.numDeltaBytes = static_cast<int64_t>(bytes.size());
    out.files.push_back({StateFileId{id(), kPartition, version, false}, std::move(bytes)});
  }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    p.numRowsTotal = 0;
    for (const auto& [k, s] : left_side_.state.map()) p.numRowsTotal += static_cast<int64_t>(s.value.size());
    for (const auto& [k, s] : right_side_.state.map()) p.numRowsTotal += static_cast<int64_t>(s.value.size());
    p.memoryUsedBytes = left_side_.state.memoryBytes() + right_side_.state.memoryBytes() +
                        p.numRowsTotal * static_cast<int64_t>(std::max(sizeof(LeftEntry), sizeof(RightEntry)));
    p.numRowsDroppedByWatermark = droppedLate_;
    p.numStatePartitions = 1;
    return p;
  }

 private:
  inline static const PartitionId kPartition{"join", 0};

  int64_t leftTime(const L& l) const {
    if constexpr (kTimed) return toEventTimeMs(std::invoke(range_.leftTime, l)); else return 0;
  }
  int64_t rightTime(const R& r) const {
    if constexpr (kTimed) return toEventTimeMs(std::invoke(range_.rightTime, r)); else return 0;
  }
  bool late(int64_t t, int64_t watermark) {
    if constexpr (kTimed) {
      if (watermark != kNoWatermark && t < watermark) {
        ++droppedLate_;
        return true;
      }
    }
    return false;
  }
  bool inRange(int64_t leftT, int64_t rightT) const {
    if constexpr (kTimed) {
      int64_t d = rightT - leftT;
      return d >= range_.lower.count() && d <= range_.upper.count();
    }
    return true;
  }
  std::unique_ptr<BatchOperator<L>> left_;
  std::unique_ptr<BatchOperator<R>> right_;
  LK leftKey_;
  RK rightKey_;
  F combine_;
  JoinType type_;
  TR range_;
  Side<LeftEntry> left_side_;
  Side<RightEntry> right_side_;
  int64_t droppedLate_ = 0;
  StateOperatorProgress progress_;
};

}  // namespace dataflow::detail
