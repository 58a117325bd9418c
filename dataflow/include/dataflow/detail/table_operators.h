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
#include "dataflow/exchange.h"
#include "dataflow/record.h"
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

// One change event of a table as it was applied, in order: what a table sends through an
// exchange. Unlike a TableChange, which sums up a batch, it does not depend on where batches
// begin and end, so a replay, or another instance after a rebalance, sends the very same events.
template <class K, class V>
struct TableEvent {
  K key;
  int64_t version = 0;
  std::optional<V> before;
  std::optional<V> after;
};

// What AsTableOperator emits: a TableChange per key the batch changed, or a TableEvent per event
// it applied.
enum class TableEmit { kChangesPerBatch, kEveryEvent };

template <class K, class V, TableEmit E>
using TableOutput = std::conditional_t<E == TableEmit::kEveryEvent, TableEvent<K, V>, TableChange<K, V>>;

template <class T, class KeyFn, class VersionFn, class RowFn, TableEmit E = TableEmit::kChangesPerBatch>
class AsTableOperator final
    : public BatchOperator<TableOutput<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
                                       typename RowResult<RowFn, T>::type::value_type, E>>,
      public KeyedStatefulOperator<
          std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
          std::pair<std::decay_t<std::invoke_result_t<const VersionFn&, const T&>>, typename RowResult<RowFn, T>::type>> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using Version = std::decay_t<std::invoke_result_t<const VersionFn&, const T&>>;
  using MaybeRow = typename RowResult<RowFn, T>::type;
  using Row = typename MaybeRow::value_type;
  using Change = TableOutput<Key, Row, E>;
  using Base = KeyedStatefulOperator<Key, std::pair<Version, MaybeRow>>;
  static_assert(E == TableEmit::kChangesPerBatch || std::is_convertible_v<Version, int64_t>,
                "a table regrouped through an exchange carries its versions as int64 (e.g. the LSN)");
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
      MaybeRow before;
      if constexpr (E == TableEmit::kEveryEvent) {
        if (it != st.map().end()) before = it->second.value.second;
      } else {
        changes.note(k, it == st.map().end() ? std::nullopt : it->second.value.second);
      }
      MaybeRow next;
      if constexpr (std::invocable<const RowFn&, const T&>) {
        next = std::invoke(row_, r);
      } else {
        const Row* previous = it != st.map().end() && it->second.value.second ? &*it->second.value.second : nullptr;
        next = std::invoke(row_, r, previous);
      }
      if constexpr (E == TableEmit::kEveryEvent) {
        // Also a delete of a key this partition never held: see TableExchangeOperator.
        out.push_back(Change{k, static_cast<int64_t>(v), std::move(before), next});
      }
      bool created = false;
      auto& entry = st.upsert(k, [] { return std::pair<Version, MaybeRow>{}; }, created);
      entry = {std::move(v), std::move(next)};
    }
    if constexpr (E == TableEmit::kChangesPerBatch) {
      changes.emit(out, [&](const Key& k) { return st.map().find(k)->second.value.second; });
    }
  }

  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  VersionFn version_;
  RowFn row_;
};

// A table row as it arrives through an exchange at the partition of its group: its key, the
// version of the event, and the row (nullopt: the key left this partition's groups, deleted or
// moved to a group of another partition).
template <class K, class V>
struct RoutedRow {
  K key;
  int64_t version = 0;
  std::optional<V> row;
};
template <class K, class V>
struct RoutedRowValue {
  std::optional<V> operator()(const RoutedRow<K, V>& r) const { return r.row; }
};

// Regroups a table's rows by group(row) through an exchange (exchange.h). Each event the table
// applied is sent to the partition of its new row's group, and, when the row leaves a group (a
// delete, or a move to a group of another partition), a removal to the old group's partition:
// every partition then sees, per key, the versions that concern it, in order (a delete of a key
// the table never held goes to every partition). The records the
// exchange holds from earlier batches are read back and decoded: downstream an AsTableOperator
// keeps, per exchange partition, the row of every key by version, so a record sent twice (a
// replayed batch; an instance fenced after a rebalance) is not applied twice, and a move retracts
// the row the partition holds.
//
// Record layout: key = StateCodec(key); value = 'U' query version StateCodec(row) | 'D' query
// version, where `query` is a hash of the query's id (kept in its checkpoint): a query started
// afresh on a new checkpoint skips what an earlier query of the same name left in the log.
template <class K, class V, class GroupFn>
class TableExchangeOperator final : public BatchOperator<RoutedRow<K, V>> {
  using Group = std::decay_t<std::invoke_result_t<const GroupFn&, const V&>>;

 public:
  TableExchangeOperator(std::unique_ptr<BatchOperator<TableEvent<K, V>>> events, GroupFn group,
                        std::shared_ptr<ExchangeChannel> channel, std::unique_ptr<BatchOperator<LogRecord>> readBack)
      : events_(std::move(events)), group_(std::move(group)), channel_(std::move(channel)),
        readBack_(std::move(readBack)) {}

  void produce(ExecContext& ctx, Batch<RoutedRow<K, V>>& out) override {
    Batch<TableEvent<K, V>> events;
    Batch<LogRecord> received;
    tbb::parallel_invoke([&] { events_->produce(ctx, events); }, [&] { readBack_->produce(ctx, received); });
    out.deadLetters() = std::move(events.deadLetters());
    const uint64_t query = stableHash(ctx.info.queryId);
    send(events, query);
    auto& in = received.partitions();
    auto& parts = out.partitions();
    parts.resize(in.size());
    tbb::parallel_for(size_t{0}, in.size(), [&](size_t i) {
      parts[i].id = in[i].id;
      parts[i].rows.reserve(in[i].rows.size());
      for (const LogRecord& r : in[i].rows) {
        if (auto row = decode(r, query)) parts[i].rows.push_back(std::move(*row));
      }
    });
  }

 private:
  void send(const Batch<TableEvent<K, V>>& events, uint64_t query) {
    const auto partitions = static_cast<uint64_t>(channel_->partitions());
    std::string key, value, groupBytes;
    auto partitionOf = [&](const Group& g) {
      groupBytes.clear();
      StateCodec<Group>::encode(g, groupBytes);
      return static_cast<int32_t>(stableHash(groupBytes) % partitions);
    };
    for (const auto& part : events.partitions()) {
      for (const TableEvent<K, V>& e : part.rows) {
        key.clear();
        StateCodec<K>::encode(e.key, key);
        std::optional<Group> after;
        if (e.after) after = std::invoke(group_, *e.after);
        if (!e.before && !e.after) {
          // A delete of a key this source partition never held: its row may have arrived on
          // another partition (a topic whose partitions were added routes a key anew), so its
          // group is unknown here: every partition gets the removal (where the key is not, it
          // leaves a tombstone of its version).
          header('D', query, e.version, value);
          for (int32_t p = 0; p < static_cast<int32_t>(partitions); ++p) channel_->send(p, key, value);
          continue;
        }
        if (e.before) {
          Group before = std::invoke(group_, *e.before);
          if (!after || !(before == *after)) {
            int32_t p = partitionOf(before);
            if (!after || p != partitionOf(*after)) {
              header('D', query, e.version, value);
              channel_->send(p, key, value);
            }
          }
        }
        if (after) {
          header('U', query, e.version, value);
          StateCodec<V>::encode(*e.after, value);
          channel_->send(partitionOf(*after), key, value);
        }
      }
    }
    channel_->flush();
  }
  static void header(char kind, uint64_t query, int64_t version, std::string& out) {
    out.clear();
    out.push_back(kind);
    StateCodec<uint64_t>::encode(query, out);
    StateCodec<int64_t>::encode(version, out);
  }
  // The row of a record, or nullopt for one an earlier query left.
  static std::optional<RoutedRow<K, V>> decode(const LogRecord& r, uint64_t query) {
    try {
      std::string_view key = r.key, value = r.value;
      if (value.empty() || (value[0] != 'U' && value[0] != 'D')) throw std::out_of_range("kind");
      const bool upsert = value[0] == 'U';
      value.remove_prefix(1);
      if (StateCodec<uint64_t>::decode(value) != query) return std::nullopt;
      RoutedRow<K, V> out{StateCodec<K>::decode(key), StateCodec<int64_t>::decode(value), std::nullopt};
      if (upsert) out.row = StateCodec<V>::decode(value);
      return out;
    } catch (const std::exception& e) {
      throw InternalError("exchange " + std::string(r.topic) + " partition " + std::to_string(r.partition) + " offset " +
                          std::to_string(r.offset) + ": not a table row (" + e.what() +
                          "); the log is shared with something else, or was written by another version of the query");
    }
  }

  std::unique_ptr<BatchOperator<TableEvent<K, V>>> events_;
  GroupFn group_;
  std::shared_ptr<ExchangeChannel> channel_;
  std::unique_ptr<BatchOperator<LogRecord>> readBack_;
};

// The partition that holds the state of an operator whose groups span every source partition
// (a table aggregation regroups rows by a key the source is not partitioned by).
inline PartitionId allPartitions() { return PartitionId{"_all", 0}; }

// groupBy(newKey).agg(...) over a table: each change retracts the old row from its group and adds
// the new row to its group (the same or another), so the aggregates stay exact under updates and
// deletes; a group whose last row left is deleted. Without an exchange the groups span the source
// partitions, so their state is one partition (allPartitions()), updated by one task, and the
// query runs in one process. Behind a TableExchangeOperator (`byPartition`), each input partition
// holds whole groups: state per partition, partitions in parallel, and the query can scale out.
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
  using Input = std::vector<typename Batch<TableChange<K, V>>::Partition>;

 public:
  TableAggregateOperator(std::unique_ptr<BatchOperator<TableChange<K, V>>> input, GroupFn group, A aggregate,
                         bool byPartition = false)
      : input_(std::move(input)), group_(std::move(group)), agg_(std::move(aggregate)), byPartition_(byPartition) {}

  std::string operatorName() const override { return "tableAggregate"; }
  bool stateFollowsPartitions() const override { return byPartition_; }

  void produce(ExecContext& ctx, Batch<Change>& out) override {
    Batch<TableChange<K, V>> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto& parts = in.partitions();
    if (!byPartition_) {
      out.partitions().resize(1);
      out.partitions()[0].id = allPartitions();
      apply(state_.get(allPartitions()), parts.begin(), parts.end(), out.partitions()[0].rows);
      return;
    }
    auto slots = this->slotsFor(in);
    out.partitions().resize(parts.size());
    tbb::parallel_for(size_t{0}, parts.size(), [&](size_t i) {
      out.partitions()[i].id = parts[i].id;
      apply(*slots[i], parts.begin() + static_cast<ptrdiff_t>(i), parts.begin() + static_cast<ptrdiff_t>(i + 1),
            out.partitions()[i].rows);
    });
  }

 private:
  // Applies the changes of input partitions [first, last) to one slot's groups.
  void apply(Slot& slot, typename Input::const_iterator first, typename Input::const_iterator last,
             std::vector<Change>& out) {
    auto& st = slot.state;
    st.load([&](auto&& need) {
      for (auto part = first; part != last; ++part) {
        for (const auto& c : part->rows) {
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
    for (auto part = first; part != last; ++part) {
      for (const auto& c : part->rows) {
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
    changes.emit(out, [&](const Group& g) {
      auto it = st.map().find(g);
      std::optional<Out> now = result(it);
      if (it != st.map().end() && it->second.value.first == 0) st.erase(it);  // the group is empty: gone
      return now;
    });
  }

  std::unique_ptr<BatchOperator<TableChange<K, V>>> input_;
  GroupFn group_;
  A agg_;
  bool byPartition_;
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
