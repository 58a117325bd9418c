// Operators of tables (table.h): the current row per key of a changelog, and aggregations over a
// table that retract what a changed or deleted row had added. Both emit, per batch, one
// TableChange per key whose value the batch changed: its value before the batch and after it.
#pragma once

#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_invoke.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "dataflow/aggregates.h"
#include "dataflow/batch.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/stateful_operators.h"
#include "dataflow/join.h"
#include "dataflow/state.h"

namespace dataflow {

// A change of one key of a table: its value before and after a batch (nullopt: absent, i.e.
// inserted when `before` is empty, deleted when `after` is).
template <class K, class V>
struct TableChange {
  K key;
  std::optional<V> before;
  std::optional<V> after;
  bool isInsert() const { return !before && after; }
  bool isDelete() const { return before && !after; }
  bool operator==(const TableChange&) const = default;
};

namespace detail {

// The changes of one batch, by key in first-change order, each with the key's value before the
// batch: what a table operator emits once the batch's records are applied.
template <class K, class V>
class BatchChanges {
 public:
  // Remembers `before` as the key's value at the start of the batch, unless it was seen already.
  void note(const K& key, const std::optional<V>& before) {
    auto [it, inserted] = index_.try_emplace(key, order_.size());
    if (inserted) order_.push_back({key, before});
  }
  // Emits a TableChange per key whose value differs from its value before the batch; now(key)
  // gives the value after it.
  template <class Now>
  void emit(std::vector<TableChange<K, V>>& out, Now&& now) {
    out.reserve(out.size() + order_.size());
    for (auto& [key, before] : order_) {
      std::optional<V> after = now(key);
      if (!before && !after) continue;
      if constexpr (std::equality_comparable<V>) {
        if (before && after && *before == *after) continue;
      }
      out.push_back(TableChange<K, V>{key, std::move(before), std::move(after)});
    }
    order_.clear();
    index_.clear();
  }

 private:
  std::vector<std::pair<K, std::optional<V>>> order_;
  absl::flat_hash_map<K, size_t> index_;
};

// A changelog as a table: per key the row of its newest version (a delete keeps the version as a
// tombstone, so an older event replayed or arriving late never brings the row back). State per
// source partition: a key's changes arrive on one partition (Debezium keys by primary key).
// What row(record) or row(record, previous) returns: std::optional<Row>.
template <class RowFn, class T>
struct RowResult {
  using type = std::decay_t<std::invoke_result_t<const RowFn&, const T&>>;
};
// The return type of a callable of two arguments (a function, a function pointer or a lambda):
// row(record, previous) cannot be asked for it before Row, its second argument's type, is known.
template <class F>
struct BinaryResult;
template <class R, class A, class P>
struct BinaryResult<R (*)(A, P)> {
  using type = std::decay_t<R>;
};
template <class R, class A, class P>
struct BinaryResult<R(A, P)> : BinaryResult<R (*)(A, P)> {};
template <class C, class R, class A, class P>
struct BinaryResult<R (C::*)(A, P) const> : BinaryResult<R (*)(A, P)> {};
template <class F>
  requires requires { &F::operator(); }
struct BinaryResult<F> : BinaryResult<decltype(&F::operator())> {};

template <class RowFn, class T>
  requires(!std::invocable<const RowFn&, const T&>)
struct RowResult<RowFn, T> {
  using type = typename BinaryResult<RowFn>::type;
};

template <class T, class KeyFn, class VersionFn, class RowFn>
class AsTableOperator final
    : public BatchOperator<TableChange<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
                                       typename RowResult<RowFn, T>::type::value_type>>,
      public KeyedStatefulOperator<
          std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
          std::pair<std::decay_t<std::invoke_result_t<const VersionFn&, const T&>>, typename RowResult<RowFn, T>::type>> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using Version = std::decay_t<std::invoke_result_t<const VersionFn&, const T&>>;
  using MaybeRow = typename RowResult<RowFn, T>::type;
  using Row = typename MaybeRow::value_type;
  using Change = TableChange<Key, Row>;
  using Base = KeyedStatefulOperator<Key, std::pair<Version, MaybeRow>>;
  using typename Base::Slot;
  using Base::state_;

 public:
  AsTableOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, VersionFn version, RowFn row)
      : input_(std::move(input)), key_(std::move(key)), version_(std::move(version)), row_(std::move(row)) {}

  std::string operatorName() const override { return "tableStateStore"; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<Change>& out) override {
    Batch<T> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto slots = this->slotsFor(in);
    auto& inParts = in.partitions();
    auto& outParts = out.partitions();
    outParts.resize(inParts.size());
    tbb::parallel_for(size_t{0}, inParts.size(), [&](size_t i) {
      outParts[i].id = inParts[i].id;
      apply(*slots[i], inParts[i].rows, outParts[i].rows);
    });
  }

 private:
  void apply(Slot& slot, const std::vector<T>& rows, std::vector<Change>& out) {
    auto& st = slot.state;
    st.load([&](auto&& need) {
      for (const T& r : rows) need(std::invoke(key_, r));
    });
    BatchChanges<Key, Row> changes;
    for (const T& r : rows) {
      Key k = std::invoke(key_, r);
      Version v = std::invoke(version_, r);
      auto it = st.map().find(k);
      if (it != st.map().end() && !(it->second.value.first < v)) continue;  // not newer than what is kept
      changes.note(k, it == st.map().end() ? std::nullopt : it->second.value.second);
      MaybeRow next;
      if constexpr (std::invocable<const RowFn&, const T&>) {
        next = std::invoke(row_, r);
      } else {
        const Row* previous = it != st.map().end() && it->second.value.second ? &*it->second.value.second : nullptr;
        next = std::invoke(row_, r, previous);
      }
      bool created = false;
      auto& entry = st.upsert(k, [] { return std::pair<Version, MaybeRow>{}; }, created);
      entry = {std::move(v), std::move(next)};
    }
    changes.emit(out, [&](const Key& k) { return st.map().find(k)->second.value.second; });
  }

  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  VersionFn version_;
  RowFn row_;
};

// The partition that holds the state of an operator whose groups span every source partition
// (a table aggregation regroups rows by a key the source is not partitioned by).
inline PartitionId allPartitions() { return PartitionId{"_all", 0}; }

// groupBy(newKey).agg(...) over a table: each change retracts the old row from its group and adds
// the new row to its group (the same or another), so the aggregates stay exact under updates and
// deletes; a group whose last row left is deleted. The groups span the source partitions, so
// their state is one partition (allPartitions()), updated by one task, and the query runs in one
// process (scale-out needs the groups repartitioned by their key first).
template <class K, class V, class GroupFn, class A>
class TableAggregateOperator final
    : public BatchOperator<TableChange<std::decay_t<std::invoke_result_t<const GroupFn&, const V&>>, agg::OutOf<A, V>>>,
      public KeyedStatefulOperator<std::decay_t<std::invoke_result_t<const GroupFn&, const V&>>,
                                   std::pair<int64_t, agg::AccOf<A, V>>> {
  using Group = std::decay_t<std::invoke_result_t<const GroupFn&, const V&>>;
  using Acc = agg::AccOf<A, V>;
  using Out = agg::OutOf<A, V>;
  using Change = TableChange<Group, Out>;
  using Base = KeyedStatefulOperator<Group, std::pair<int64_t, Acc>>;  // rows in the group, accumulator
  using typename Base::Slot;
  using Base::state_;

 public:
  TableAggregateOperator(std::unique_ptr<BatchOperator<TableChange<K, V>>> input, GroupFn group, A aggregate)
      : input_(std::move(input)), group_(std::move(group)), agg_(std::move(aggregate)) {}

  std::string operatorName() const override { return "tableAggregate"; }

  void produce(ExecContext& ctx, Batch<Change>& out) override {
    Batch<TableChange<K, V>> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    Slot& slot = state_.get(allPartitions());
    auto& st = slot.state;
    st.load([&](auto&& need) {
      for (const auto& part : in.partitions()) {
        for (const auto& c : part.rows) {
          if (c.before) need(std::invoke(group_, *c.before));
          if (c.after) need(std::invoke(group_, *c.after));
        }
      }
    });
    BatchChanges<Group, Out> changes;
    auto result = [&](auto it) -> std::optional<Out> {
      if (it == st.map().end() || it->second.value.first == 0) return std::nullopt;
      return agg_.result(it->second.value.second);
    };
    bool created = false;
    for (const auto& part : in.partitions()) {
      for (const auto& c : part.rows) {
        if (c.before) {
          Group g = std::invoke(group_, *c.before);
          auto it = st.map().find(g);
          if (it == st.map().end()) {
            throw InternalError("table aggregation: a change retracts a row from group that holds none (the "
                                "table's state and the aggregation's state disagree)");
          }
          changes.note(g, result(it));
          auto& entry = st.upsert(g, [] { return std::pair<int64_t, Acc>{}; }, created);
          agg_.template retract<V>(entry.second, *c.before);
          --entry.first;
        }
        if (c.after) {
          Group g = std::invoke(group_, *c.after);
          changes.note(g, result(st.map().find(g)));
          auto& entry = st.upsert(g, [this] { return std::pair<int64_t, Acc>{0, agg_.template init<V>()}; }, created);
          agg_.template add<V>(entry.second, *c.after);
          ++entry.first;
        }
      }
    }
    out.partitions().resize(1);
    out.partitions()[0].id = allPartitions();
    changes.emit(out.partitions()[0].rows, [&](const Group& g) {
      auto it = st.map().find(g);
      std::optional<Out> now = result(it);
      if (it != st.map().end() && it->second.value.first == 0) st.erase(it);  // the group is empty: gone
      return now;
    });
  }

 private:
  std::unique_ptr<BatchOperator<TableChange<K, V>>> input_;
  GroupFn group_;
  A agg_;
};

// A foreign-key join of two tables (table.h): each left row with the right row its foreign key
// names. The result of a left key changes when its row changes (or moves to another right key)
// and when the right row it names changes, appears or goes: a customer's new email updates every
// one of that customer's enriched orders. State: both tables' rows and, derived from them, the
// left keys by foreign key (rebuilt on restore). Like a table aggregation, it spans the source
// partitions: one state partition, one task, one process.
template <class LK, class L, class RK, class R, class FkFn, class F>
class TableJoinOperator final
    : public BatchOperator<TableChange<LK, std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>>>,
      public StatefulOperator {
  using Out = std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>;
  using Change = TableChange<LK, Out>;

 public:
  TableJoinOperator(std::unique_ptr<BatchOperator<TableChange<LK, L>>> left,
                    std::unique_ptr<BatchOperator<TableChange<RK, R>>> right, FkFn foreignKey, F combine, JoinType type)
      : left_(std::move(left)), right_(std::move(right)), fk_(std::move(foreignKey)), combine_(std::move(combine)),
        type_(type) {}

  std::string operatorName() const override { return "tableJoin"; }
  bool runsAhead() const override { return true; }

  void produce(ExecContext& ctx, Batch<Change>& out) override {
    Batch<TableChange<LK, L>> lin;
    Batch<TableChange<RK, R>> rin;
    tbb::parallel_invoke([&] { left_->produce(ctx, lin); }, [&] { right_->produce(ctx, rin); });
    out.deadLetters() = std::move(lin.deadLetters());
    for (auto& d : rin.deadLetters()) out.deadLetters().push_back(std::move(d));
    BatchChanges<LK, Out> changes;
    // The right side first: every left row naming a changed right key is affected.
    for (const auto& part : rin.partitions()) {
      for (const auto& c : part.rows) {
        if (auto it = byForeignKey_.find(c.key); it != byForeignKey_.end()) {
          for (const LK& lk : it->second) changes.note(lk, result(lk));
        }
        if (c.after) {
          bool created = false;
          rightRows_.upsert(c.key, [] { return R{}; }, created) = *c.after;
        } else {
          rightRows_.erase(c.key);
        }
      }
    }
    for (const auto& part : lin.partitions()) {
      for (const auto& c : part.rows) {
        changes.note(c.key, result(c.key));
        if (auto it = leftRows_.map().find(c.key); it != leftRows_.map().end()) unindex(c.key, std::invoke(fk_, it->second.value));
        if (c.after) {
          bool created = false;
          leftRows_.upsert(c.key, [] { return L{}; }, created) = *c.after;
          byForeignKey_[std::invoke(fk_, *c.after)].push_back(c.key);
        } else {
          leftRows_.erase(c.key);
        }
      }
    }
    out.partitions().resize(1);
    out.partitions()[0].id = allPartitions();
    changes.emit(out.partitions()[0].rows, [&](const LK& lk) { return result(lk); });
  }

  void clearState() override {
    leftRows_ = {};
    rightRows_ = {};
    byForeignKey_.clear();
  }
  void restoreFile(const PartitionId&, const StateFileReader& file) override {
    file.forEach(
        [&](std::string_view key, std::string_view value) {
          if (key.at(0) == 'L') leftRows_.applyPut(key.substr(1), value);
          else rightRows_.applyPut(key.substr(1), value);
        },
        [&](std::string_view key) {
          if (key.at(0) == 'L') leftRows_.applyRemove(key.substr(1));
          else rightRows_.applyRemove(key.substr(1));
        });
  }
  void finishRestore() override {
    byForeignKey_.clear();
    for (const auto& [lk, slot] : leftRows_.map()) byForeignKey_[std::invoke(fk_, slot.value)].push_back(lk);
  }
  void collectChanges(int64_t version, StateChanges& out) override {
    progress_.numRowsRemoved = leftRows_.removedCount() + rightRows_.removedCount();
    StateFileWriter w(StateFileWriter::Kind::kDelta);
    progress_.numRowsUpdated = static_cast<int64_t>(leftRows_.writeDelta(w, "L") + rightRows_.writeDelta(w, "R"));
    progress_.numDeltaBytes = 0;
    if (w.count() == 0) return;
    std::string bytes = w.finish();
    progress_.numDeltaBytes = static_cast<int64_t>(bytes.size());
    out.files.push_back({StateFileId{id(), allPartitions(), version, false}, std::move(bytes)});
  }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    p.numRowsTotal = static_cast<int64_t>(leftRows_.map().size() + rightRows_.map().size());
    p.memoryUsedBytes = leftRows_.memoryBytes() + rightRows_.memoryBytes();
    p.numStatePartitions = 1;
    return p;
  }

 private:
  // The joined value of left key `lk` as the state holds it now.
  std::optional<Out> result(const LK& lk) const {
    auto l = leftRows_.map().find(lk);
    if (l == leftRows_.map().end()) return std::nullopt;
    auto r = rightRows_.map().find(std::invoke(fk_, l->second.value));
    const R* right = r == rightRows_.map().end() ? nullptr : &r->second.value;
    if (!right && type_ == JoinType::kInner) return std::nullopt;
    return std::invoke(combine_, l->second.value, right);
  }
  void unindex(const LK& lk, const RK& rk) {
    auto it = byForeignKey_.find(rk);
    if (it == byForeignKey_.end()) return;
    std::erase(it->second, lk);
    if (it->second.empty()) byForeignKey_.erase(it);
  }

  std::unique_ptr<BatchOperator<TableChange<LK, L>>> left_;
  std::unique_ptr<BatchOperator<TableChange<RK, R>>> right_;
  FkFn fk_;
  F combine_;
  JoinType type_;
  PartitionState<LK, L> leftRows_;
  PartitionState<RK, R> rightRows_;
  absl::flat_hash_map<RK, std::vector<LK>> byForeignKey_;  // derived from leftRows_
  StateOperatorProgress progress_;
};

}  // namespace detail
}  // namespace dataflow
