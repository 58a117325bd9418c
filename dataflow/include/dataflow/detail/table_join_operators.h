// Operators of foreign-key joins of two tables (Table::join, table.h): in one process, over the
// tables' changes, or scaled out, both tables sent through one exchange log by the key they meet
// on, so that each exchange partition holds whole foreign keys: a customer and its orders.
#pragma once

#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_invoke.h>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "dataflow/detail/table_operators.h"

namespace dataflow::detail {

// The left keys of a join by the right key their rows name; derived from the left rows (rebuilt
// after a restore, never checkpointed).
template <class RK, class LK>
class ForeignKeyIndex {
 public:
  void add(const RK& rk, const LK& lk) { index_[rk].push_back(lk); }
  void remove(const RK& rk, const LK& lk) {
    auto it = index_.find(rk);
    if (it == index_.end()) return;
    std::erase(it->second, lk);
    if (it->second.empty()) index_.erase(it);
  }
  // The left keys naming `rk`, or nullptr.
  const std::vector<LK>* find(const RK& rk) const {
    auto it = index_.find(rk);
    return it == index_.end() ? nullptr : &it->second;
  }
  void clear() { index_.clear(); }

 private:
  absl::flat_hash_map<RK, std::vector<LK>> index_;
};

// The joined value of a left row: combine(left, right), or for a left join combine(left,
// nullptr) when the row names no right row; nullopt for an inner join without one.
template <class Out, class L, class R, class F>
std::optional<Out> joinRow(const F& combine, JoinType type, const L& left, const R* right) {
  if (!right && type == JoinType::kInner) return std::nullopt;
  return std::invoke(combine, left, right);
}

// A foreign-key join of two tables (table.h): each left row with the right row its foreign key
// names. The result of a left key changes when its row changes (or moves to another right key)
// and when the right row it names changes, appears or goes: a customer's new email updates every
// one of that customer's enriched orders. State: both tables' rows and, derived from them, the
// left keys by foreign key (rebuilt on restore). Like a table aggregation without an exchange, it
// spans the source partitions: one state partition, one task, one process.
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
        if (const auto* lks = byForeignKey_.find(c.key)) {
          for (const LK& lk : *lks) changes.note(lk, result(lk));
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
        if (auto it = leftRows_.map().find(c.key); it != leftRows_.map().end()) {
          byForeignKey_.remove(std::invoke(fk_, it->second.value), c.key);
        }
        if (c.after) {
          bool created = false;
          leftRows_.upsert(c.key, [] { return L{}; }, created) = *c.after;
          byForeignKey_.add(std::invoke(fk_, *c.after), c.key);
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
    for (const auto& [lk, slot] : leftRows_.map()) byForeignKey_.add(std::invoke(fk_, slot.value), lk);
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
    return joinRow<Out>(combine_, type_, l->second.value, r == rightRows_.map().end() ? nullptr : &r->second.value);
  }

  std::unique_ptr<BatchOperator<TableChange<LK, L>>> left_;
  std::unique_ptr<BatchOperator<TableChange<RK, R>>> right_;
  FkFn fk_;
  F combine_;
  JoinType type_;
  PartitionState<LK, L> leftRows_;
  PartitionState<RK, R> rightRows_;
  ForeignKeyIndex<RK, LK> byForeignKey_;  // derived from leftRows_
  StateOperatorProgress progress_;
};

// A row of either table of a join as it arrives through the join's exchange: index 0 the left
// table (routed by the foreign key its row names), 1 the right one (routed by its key).
template <class LK, class L, class RK, class R>
using JoinRoutedRow = std::variant<RoutedRow<LK, L>, RoutedRow<RK, R>>;

// Sends both tables of a foreign-key join through one exchange log, by the right key: a left
// row to the partition of the right key it names (a removal to the old one when it names another
// partition's key, or goes), a right row to its own key's partition. So each partition holds the
// right rows of its keys and every left row naming them, and one log keeps the two in one order
// per partition: the instance that owns a partition owns both sides of it (two logs would need
// their partitions assigned alike). Reads back what earlier batches sent, decoded by side.
template <class LK, class L, class RK, class R, class FkFn>
class TableJoinExchangeOperator final : public BatchOperator<JoinRoutedRow<LK, L, RK, R>> {
  static constexpr ExchangeRecordKind kLeft{'U', 'D'};
  static constexpr ExchangeRecordKind kRight{'u', 'd'};

 public:
  TableJoinExchangeOperator(std::unique_ptr<BatchOperator<TableEvent<LK, L>>> left,
                            std::unique_ptr<BatchOperator<TableEvent<RK, R>>> right, FkFn foreignKey,
                            std::shared_ptr<ExchangeChannel> channel, std::unique_ptr<BatchOperator<LogRecord>> readBack)
      : left_(std::move(left)), right_(std::move(right)), fk_(std::move(foreignKey)), channel_(std::move(channel)),
        readBack_(std::move(readBack)) {}

  void produce(ExecContext& ctx, Batch<JoinRoutedRow<LK, L, RK, R>>& out) override {
    Batch<TableEvent<LK, L>> lin;
    Batch<TableEvent<RK, R>> rin;
    Batch<LogRecord> received;
    tbb::parallel_invoke([&] { left_->produce(ctx, lin); }, [&] { right_->produce(ctx, rin); },
                         [&] { readBack_->produce(ctx, received); });
    out.deadLetters() = std::move(lin.deadLetters());
    for (auto& d : rin.deadLetters()) out.deadLetters().push_back(std::move(d));
    const uint64_t query = stableHash(ctx.info.queryId);
    TableEventSender<LK, L> leftSender(*channel_, query, kLeft);
    for (const auto& part : lin.partitions()) {
      for (const auto& e : part.rows) {
        int32_t from = e.before ? leftSender.partitionOfValue(std::invoke(fk_, *e.before)) : -1;
        int32_t to = e.after ? leftSender.partitionOfValue(std::invoke(fk_, *e.after)) : -1;
        leftSender.send(e, from, to);
      }
    }
    TableEventSender<RK, R> rightSender(*channel_, query, kRight);
    for (const auto& part : rin.partitions()) {
      for (const auto& e : part.rows) {
        // A right row never moves: an update goes where the row is, a delete (also of a key never
        // held) removes it there.
        int32_t p = rightSender.partitionOfValue(e.key);
        rightSender.send(e, e.after ? -1 : p, e.after ? p : -1);
      }
    }
    channel_->flush();
    decodeExchanged(received, out, query, "UDud", [](const LogRecord& r, const ExchangeRecord& header, auto& rows) {
      if (header.kind == kLeft.upsert || header.kind == kLeft.remove) {
        rows.emplace_back(std::in_place_index<0>, decodeRoutedRow<LK, L>(r, header, header.kind == kLeft.upsert));
      } else {
        rows.emplace_back(std::in_place_index<1>, decodeRoutedRow<RK, R>(r, header, header.kind == kRight.upsert));
      }
    });
  }

 private:
  std::unique_ptr<BatchOperator<TableEvent<LK, L>>> left_;
  std::unique_ptr<BatchOperator<TableEvent<RK, R>>> right_;
  FkFn fk_;
  std::shared_ptr<ExchangeChannel> channel_;
  std::unique_ptr<BatchOperator<LogRecord>> readBack_;
};

// The foreign-key join behind a TableJoinExchangeOperator: state per exchange partition (both
// tables' rows of its keys, by version, deletes kept as tombstones, so a record read twice is
// applied once), partitions in parallel, and the query can scale out.
//
// A left key's joined row can move between partitions (an order given to a customer of another
// partition), and the partitions' owners write independently, so each change carries its own
// version (TableChange::version), taken from the left row's version v (the LSN): 2v + 1 for a
// joined row (also when only its right row changed: the sink replaces a row of an equal version,
// and only the partition holding the left row at version v writes that version), 2v for its
// removal by the event of version v. A move's removal from the old partition (2v) thus never
// overwrites its row in the new one (2v + 1), in whatever order the two are written.
template <class LK, class L, class RK, class R, class FkFn, class F>
class PartitionedTableJoinOperator final
    : public BatchOperator<TableChange<LK, std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>>>,
      public StatefulOperator {
  using Out = std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>;
  using Change = TableChange<LK, Out>;
  using Routed = JoinRoutedRow<LK, L, RK, R>;
  struct Slot {
    PartitionId id;
    PartitionState<LK, std::pair<int64_t, std::optional<L>>> left;   // version, row (nullopt: removed)
    PartitionState<RK, std::pair<int64_t, std::optional<R>>> right;  // version, row (nullopt: removed)
    ForeignKeyIndex<RK, LK> byForeignKey;                            // derived from `left`
  };

 public:
  PartitionedTableJoinOperator(std::unique_ptr<BatchOperator<Routed>> input, FkFn foreignKey, F combine, JoinType type)
      : input_(std::move(input)), fk_(std::move(foreignKey)), combine_(std::move(combine)), type_(type) {}

  std::string operatorName() const override { return "tableJoin"; }
  bool runsAhead() const override { return true; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<Change>& out) override {
    Batch<Routed> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto& inParts = in.partitions();
    std::vector<Slot*> slots(inParts.size());
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = &slot(inParts[i].id);  // on the driver thread
    auto& outParts = out.partitions();
    outParts.resize(inParts.size());
    tbb::parallel_for(size_t{0}, inParts.size(), [&](size_t i) {
      outParts[i].id = inParts[i].id;
      apply(*slots[i], inParts[i].rows, outParts[i].rows);
    });
  }

  void clearState() override { slots_.clear(); }
  void dropPartition(const PartitionId& p) override { slots_.erase(p); }
  void restoreFile(const PartitionId& p, const StateFileReader& file) override {
    Slot& s = slot(p);
    file.forEach(
        [&](std::string_view key, std::string_view value) {
          if (key.at(0) == 'L') s.left.applyPut(key.substr(1), value);
          else s.right.applyPut(key.substr(1), value);
        },
        [&](std::string_view key) {
          if (key.at(0) == 'L') s.left.applyRemove(key.substr(1));
          else s.right.applyRemove(key.substr(1));
        });
  }
  void finishRestore() override {
    for (auto& [id, s] : slots_) {
      s->left.restored();
      s->right.restored();
      s->byForeignKey.clear();
      for (const auto& [lk, entry] : s->left.map()) {
        if (entry.value.second) s->byForeignKey.add(std::invoke(fk_, *entry.value.second), lk);
      }
    }
  }
  void collectChanges(int64_t version, StateChanges& out) override {
    progress_.numRowsUpdated = progress_.numRowsRemoved = progress_.numDeltaBytes = 0;
    for (auto& [id, s] : slots_) {
      progress_.numRowsRemoved += s->left.removedCount() + s->right.removedCount();
      StateFileWriter w(StateFileWriter::Kind::kDelta);
      progress_.numRowsUpdated += static_cast<int64_t>(s->left.writeDelta(w, "L") + s->right.writeDelta(w, "R"));
      if (w.count() == 0) continue;
      std::string bytes = w.finish();
      progress_.numDeltaBytes += static_cast<int64_t>(bytes.size());
      out.files.push_back({StateFileId{this->id(), id, version, false}, std::move(bytes)});
    }
  }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    p.numRowsTotal = p.memoryUsedBytes = 0;
    for (const auto& [id, s] : slots_) {
      p.numRowsTotal += static_cast<int64_t>(s->left.map().size() + s->right.map().size());
      p.memoryUsedBytes += s->left.memoryBytes() + s->right.memoryBytes();
    }
    p.numStatePartitions = static_cast<int64_t>(slots_.size());
    return p;
  }

 private:
  Slot& slot(const PartitionId& p) {
    auto& s = slots_[p];
    if (!s) {
      s = std::make_unique<Slot>();
      s->id = p;
    }
    return *s;
  }

  // Applies one partition's rows in log order, then emits a change for every left key whose
  // joined row or version the batch changed.
  void apply(Slot& s, const std::vector<Routed>& rows, std::vector<Change>& out) {
    struct Before {
      std::optional<Out> row;
      int64_t version = 0;
    };
    std::vector<std::pair<LK, Before>> touched;
    absl::flat_hash_map<LK, size_t> seen;
    auto note = [&](const LK& lk) {
      if (seen.try_emplace(lk, touched.size()).second) touched.push_back({lk, Before{result(s, lk), version(s, lk)}});
    };
    bool created = false;
    for (const Routed& routed : rows) {
      if (routed.index() == 0) {
        const auto& r = std::get<0>(routed);
        auto it = s.left.map().find(r.key);
        if (it != s.left.map().end() && !(it->second.value.first < r.version)) continue;  // applied already
        note(r.key);
        if (it != s.left.map().end() && it->second.value.second) {
          s.byForeignKey.remove(std::invoke(fk_, *it->second.value.second), r.key);
        }
        s.left.upsert(r.key, [] { return std::pair<int64_t, std::optional<L>>{}; }, created) = {r.version, r.row};
        if (r.row) s.byForeignKey.add(std::invoke(fk_, *r.row), r.key);
      } else {
        const auto& r = std::get<1>(routed);
        auto it = s.right.map().find(r.key);
        if (it != s.right.map().end() && !(it->second.value.first < r.version)) continue;
        if (const auto* lks = s.byForeignKey.find(r.key)) {
          for (const LK& lk : *lks) note(lk);
        }
        s.right.upsert(r.key, [] { return std::pair<int64_t, std::optional<R>>{}; }, created) = {r.version, r.row};
      }
    }
    out.reserve(out.size() + touched.size());
    for (auto& [lk, before] : touched) {
      std::optional<Out> after = result(s, lk);
      const int64_t v = version(s, lk);
      if (!before.row && !after) continue;
      if constexpr (std::equality_comparable<Out>) {
        if (before.row && after && *before.row == *after && before.version == v) continue;
      }
      out.push_back(Change{lk, std::move(before.row), std::move(after), v});
    }
  }

  std::optional<Out> result(const Slot& s, const LK& lk) const {
    auto l = s.left.map().find(lk);
    if (l == s.left.map().end() || !l->second.value.second) return std::nullopt;
    const L& row = *l->second.value.second;
    auto r = s.right.map().find(std::invoke(fk_, row));
    const R* right = r != s.right.map().end() && r->second.value.second ? &*r->second.value.second : nullptr;
    return joinRow<Out>(combine_, type_, row, right);
  }
  // The version of left key lk's output (see the class comment); 0 if the partition never saw it.
  static int64_t version(const Slot& s, const LK& lk) {
    auto l = s.left.map().find(lk);
    if (l == s.left.map().end()) return 0;
    return 2 * l->second.value.first + (l->second.value.second ? 1 : 0);
  }

  std::unique_ptr<BatchOperator<Routed>> input_;
  FkFn fk_;
  F combine_;
  JoinType type_;
  std::map<PartitionId, std::unique_ptr<Slot>> slots_;
  StateOperatorProgress progress_;
};

}  // namespace dataflow::detail
