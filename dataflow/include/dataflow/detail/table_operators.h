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
  // The change's own version where its operator orders a key's changes itself (a join behind an
  // exchange, whose output rows move between partitions); 0: none, the batch orders them.
  int64_t version = 0;
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

// Writes a table's events into an exchange channel and reads them back. An event goes to the
// partition of its new row (`to`) and, when the row leaves a partition (a delete, or a move to a
// row of another partition: `from`), a removal goes to the old one; a delete of a key whose row is
// unknown (`from` -1) goes to every partition.
//
// Record layout: key = StateCodec(key); value = kind query version [StateCodec(row)], where kind
// is the upsert or removal byte of the table (a join sends both of its tables through one log)
// and `query` a hash of the query's id (kept in its checkpoint): a query started afresh on a new
// checkpoint skips what an earlier query of the same name left in the log.
struct ExchangeRecordKind {
  char upsert = 'U';
  char remove = 'D';
};

template <class K, class V>
class TableEventSender {
 public:
  TableEventSender(ExchangeChannel& channel, uint64_t query, ExchangeRecordKind kind)
      : channel_(channel), query_(query), kind_(kind), partitions_(channel.partitions()) {}

  // The partition of a routing value (a group, a foreign key): by the stable hash of its encoding,
  // so that every process routes it alike.
  template <class G>
  int32_t partitionOfValue(const G& g) {
    scratch_.clear();
    StateCodec<G>::encode(g, scratch_);
    return static_cast<int32_t>(stableHash(scratch_) % static_cast<uint64_t>(partitions_));
  }

  void send(const TableEvent<K, V>& e, int32_t from, int32_t to) {
    key_.clear();
    StateCodec<K>::encode(e.key, key_);
    if (!e.before && !e.after && from < 0) {
      // A delete of a key this source partition never held: its row may have arrived on another
      // partition (a topic whose partitions were added routes a key anew), so where it went is
      // unknown here: every partition gets the removal (where the key is not, it leaves a
      // tombstone of its version).
      header(kind_.remove, e.version);
      for (int32_t p = 0; p < partitions_; ++p) channel_.send(p, key_, value_);
      return;
    }
    if (from >= 0 && from != to) {
      header(kind_.remove, e.version);
      channel_.send(from, key_, value_);
    }
    if (to >= 0) {
      header(kind_.upsert, e.version);
      StateCodec<V>::encode(*e.after, value_);
      channel_.send(to, key_, value_);
    }
  }

 private:
  void header(char kind, int64_t version) {
    value_.clear();
    value_.push_back(kind);
    StateCodec<uint64_t>::encode(query_, value_);
    StateCodec<int64_t>::encode(version, value_);
  }

  ExchangeChannel& channel_;
  uint64_t query_;
  ExchangeRecordKind kind_;
  int32_t partitions_;
  std::string key_, value_, scratch_;
};

// A record read back from a table exchange: its kind byte, version and row bytes (after the
// header), or nullopt for one an earlier query left.
struct ExchangeRecord {
  char kind = 0;
  int64_t version = 0;
  std::string_view row;
};
inline InternalError badExchangeRecord(const LogRecord& r, const std::string& why) {
  return InternalError("exchange " + std::string(r.topic) + " partition " + std::to_string(r.partition) + " offset " +
                       std::to_string(r.offset) + ": not a table row (" + why +
                       "); the log is shared with something else, or was written by another version of the query");
}
inline std::optional<ExchangeRecord> readExchangeRecord(const LogRecord& r, uint64_t query, std::string_view kinds) {
  try {
    std::string_view value = r.value;
    if (value.empty() || kinds.find(value[0]) == std::string_view::npos) throw std::out_of_range("kind");
    ExchangeRecord out;
    out.kind = value[0];
    value.remove_prefix(1);
    if (StateCodec<uint64_t>::decode(value) != query) return std::nullopt;
    out.version = StateCodec<int64_t>::decode(value);
    out.row = value;
    return out;
  } catch (const std::exception& e) {
    throw badExchangeRecord(r, e.what());
  }
}
// The routed row of a record whose header was read.
template <class K, class V>
RoutedRow<K, V> decodeRoutedRow(const LogRecord& r, const ExchangeRecord& header, bool upsert) {
  try {
    std::string_view key = r.key, row = header.row;
    RoutedRow<K, V> out{StateCodec<K>::decode(key), header.version, std::nullopt};
    if (upsert) out.row = StateCodec<V>::decode(row);
    return out;
  } catch (const std::exception& e) {
    throw badExchangeRecord(r, e.what());
  }
}

// Decodes what an exchange's log gave a batch, partitions in parallel: decode(record, header,
// rows) appends the row of each record of this query (of a kind in `kinds`) to its partition.
template <class Row, class Decode>
void decodeExchanged(const Batch<LogRecord>& received, Batch<Row>& out, uint64_t query, std::string_view kinds,
                     Decode&& decode) {
  auto& in = received.partitions();
  auto& parts = out.partitions();
  parts.resize(in.size());
  tbb::parallel_for(size_t{0}, in.size(), [&](size_t i) {
    parts[i].id = in[i].id;
    parts[i].rows.reserve(in[i].rows.size());
    for (const LogRecord& r : in[i].rows) {
      if (auto header = readExchangeRecord(r, query, kinds)) decode(r, *header, parts[i].rows);
    }
  });
}

// Regroups a table's rows by group(row) through an exchange (exchange.h). Each event the table
// applied is sent to the partition of its new row's group, and, when the row leaves a group (a
// delete, or a move to a group of another partition), a removal to the old group's partition:
// every partition then sees, per key, the versions that concern it, in order. The records the
// exchange holds from earlier batches are read back and decoded: downstream an AsTableOperator
// keeps, per exchange partition, the row of every key by version, so a record sent twice (a
// replayed batch; an instance fenced after a rebalance) is not applied twice, and a move retracts
// the row the partition holds.
template <class K, class V, class GroupFn>
class TableExchangeOperator final : public BatchOperator<RoutedRow<K, V>> {
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
    TableEventSender<K, V> sender(*channel_, query, {});
    for (const auto& part : events.partitions()) {
      for (const TableEvent<K, V>& e : part.rows) {
        int32_t from = e.before ? sender.partitionOfValue(std::invoke(group_, *e.before)) : -1;
        int32_t to = e.after ? sender.partitionOfValue(std::invoke(group_, *e.after)) : -1;
        sender.send(e, from, to);
      }
    }
    channel_->flush();
    decodeExchanged(received, out, query, "UD", [](const LogRecord& r, const ExchangeRecord& header, auto& rows) {
      rows.push_back(decodeRoutedRow<K, V>(r, header, header.kind == 'U'));
    });
  }

 private:
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

}  // namespace detail
}  // namespace dataflow
