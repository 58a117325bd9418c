// Runtime of stateful operators: the typed per-partition state they keep, the untyped interface
// the engine drives at batch boundaries (restore, encode the batch's changes, commit, progress),
// and the event-time statistics the watermark operators collect.
#pragma once

#include <absl/container/btree_map.h>
#include <absl/container/flat_hash_map.h>
#include <absl/container/flat_hash_set.h>
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/progress.h"
#include "dataflow/source.h"
#include "dataflow/state.h"
#include "dataflow/state_backend.h"
#include "dataflow/window.h"
#include "dataflow/detail/state_map.h"

namespace dataflow::detail {

// Event times read by one watermark operator in one batch.
struct EventTimeStats {
  int64_t min = std::numeric_limits<int64_t>::max();
  int64_t max = std::numeric_limits<int64_t>::min();
  double sum = 0;
  int64_t count = 0;
  void add(int64_t t) {
    min = std::min(min, t);
    max = std::max(max, t);
    sum += static_cast<double>(t);
    ++count;
  }
  void merge(const EventTimeStats& o) {
    min = std::min(min, o.min);
    max = std::max(max, o.max);
    sum += o.sum;
    count += o.count;
  }
};

// What the engine knows of a stateful operator. Called from the driver thread, between batches.
class StatefulOperator {
 public:
  virtual ~StatefulOperator() = default;

  int id() const { return id_; }
  void setId(int id) { id_ = id; }

  // For explain() and progress ("stateStoreSave", "dedupe", ...).
  virtual std::string operatorName() const = 0;

  // Restore: drops all state, then is given every file of a partition in version order (its
  // newest snapshot first, if any, then the deltas after it).
  virtual void clearState() = 0;
  virtual void restoreFile(const PartitionId& partition, const StateFileReader& file) = 0;
  // After the last file: rebuild what is derived from the state (eviction indexes).
  virtual void finishRestore() {}

  // After a batch was produced: encodes what it changed, one delta per partition with changes,
  // as version `version`. Also resets the per-batch counters' baseline.
  virtual void collectChanges(int64_t version, StateChanges& out) = 0;

  // The figures of the last batch.
  virtual StateOperatorProgress progress() const = 0;
  // Whether progress reports list the operator (the engine's own state, such as the partitions'
  // event-time clocks, is not one of the query's operators).
  virtual bool visibleInProgress() const { return true; }

  // Whether the next batch may run through this operator while the current one is being written
  // (QueryOptions::overlapBatches): its output and state changes depend only on its state, its
  // input and the batch's watermark, never on the batch's processing time (timers) or id.
  virtual bool runsAhead() const { return false; }

  // Scale-out: whether every change of the operator's state in a batch comes from that batch's
  // records of the same source partition (no watermark, timers or cross-partition state), so that
  // a partition's state can move with the partition to another process.
  virtual bool stateFollowsPartitions() const { return false; }
  // Scale-out: forgets a partition's state (revoked, or to be restored again).
  virtual void dropPartition(const PartitionId& /*partition*/) {}

  // Keep the state in `backend` rather than in memory (StateOptions::backend); `scope` tells
  // this query's tables from other queries' in a shared backend. Called before the restore. An
  // operator that keeps its state in memory only refuses, naming itself.
  virtual void useStateBackend(std::shared_ptr<StateBackend> backend, const std::string& /*scope*/,
                               size_t /*cacheKeys*/) {
    throw ConfigurationError(operatorName() + " keeps its state in memory; it cannot use the state backend " +
                             backend->describe() + " (use the in-memory state for this query)");
  }

  // Late records (behind the watermark) become dead letters instead of being only dropped and
  // counted (QueryOptions::lateRecordsToDeadLetters).
  void routeLateRecords(bool toDeadLetters) { lateToDeadLetters_ = toDeadLetters; }
  bool lateToDeadLetters() const { return lateToDeadLetters_; }

  // Whether a batch should run now even without new data (a timer is due at the batch's time
  // `nowMs` or watermark). Watermark-driven emission is the engine's own rule.
  virtual bool wantsBatch(int64_t /*nowMs*/, int64_t /*watermarkMs*/) const { return false; }

 private:
  int id_ = 0;
  bool lateToDeadLetters_ = false;
};

// The dead letter of a record that arrived behind the watermark: kind "late_event", with the
// record's source position and raw bytes where its type carries them (SourcePosition; `key` and
// `payload` members, as Kafka records have).
template <class T>
DeadLetter lateDeadLetter(const T& row, int64_t eventMs, int64_t watermarkMs, const std::string& operatorName) {
  DeadLetter d;
  d.errorKind = "late_event";
  d.errorMessage = operatorName + ": event time " + std::to_string(eventMs) + " ms is behind the watermark " +
                   std::to_string(watermarkMs) + " ms";
  if constexpr (SourcePosition<T>) {
    d.topic = std::string(row.topic);
    d.partition = static_cast<int32_t>(row.partition);
    d.offset = static_cast<int64_t>(row.offset);
  }
  if constexpr (requires { { row.payload } -> std::convertible_to<std::string_view>; }) {
    d.payload = std::string(std::string_view(row.payload));
    d.hasPayload = true;
  }
  if constexpr (requires { { row.key } -> std::convertible_to<std::string_view>; }) {
    d.key = std::string(std::string_view(row.key));
    d.hasKey = true;
  }
  return d;
}

// The state of one operator in one partition: keys K to values V in a flat hash map, with the
// keys changed and removed since the last collectChanges(). Used by one task at a time.
//
// With a StateTable attached (a state backend, state_backend.h) the table holds the state and
// the map caches it: an operator calls load() with the keys a batch (or an eviction) is about to
// touch before touching them, and loadAll() before reading every key; persist() applies the
// batch's delta to the table and trims the cache. Without a table these are no-ops.
template <class K, class V>
class PartitionState {
 public:
  struct Slot {
    V value;
  };
  // Whether a key changed in this batch is the map's mark on its entry (state_map.h).
  using Map = StateMap<K, Slot>;

  Map& map() { return map_; }
  const Map& map() const { return map_; }

  // The value of `key`, created with init() when absent, marked changed in this batch. `created`
  // says whether it was absent.
  template <class Init>
  V& upsert(const K& key, Init&& init, bool& created) {
    auto it = map_.findOrMake(key, [&](void* where) { ::new (where) typename Map::value_type(key, Slot{init()}); }, created);
    rows_ += created;
    touch(it);
    return it->second.value;
  }
  void touch(typename Map::iterator it) {
    const size_t slot = it.slot();
    if (!map_.marked(slot)) {
      map_.mark(slot);
      // A slot holds its key until the map is rehashed (or loses an element): remember it, and
      // from which change on the remembered slots are still good.
      if (map_.layout() != layoutAtLastChange_) {
        layoutAtLastChange_ = map_.layout();
        slotsValidFrom_ = changed_.size();
      }
      changed_.push_back(it->first);
      changedSlots_.push_back(slot);
    }
  }
  // Inserts `key` with `value` unless present; returns whether it was inserted.
  bool insertNew(const K& key, V value) {
    auto [it, inserted] = map_.try_emplace(key, Slot{std::move(value)});
    if (inserted) {
      ++rows_;
      touch(it);
    }
    return inserted;
  }
  void erase(typename Map::iterator it) {
    removed_.push_back(it->first);
    map_.erase(it);
    --rows_;
    ++removedCount_;
    slotsValidFrom_ = std::numeric_limits<size_t>::max();  // a remembered slot may hold another key
  }
  bool erase(const K& key) {
    auto it = map_.find(key);
    if (it == map_.end()) return false;
    erase(it);
    return true;
  }

  // Whether lookups should prefetch: the map no longer fits in the caches, so every lookup of a
  // random key waits for memory unless it was requested a few records ahead.
  bool large() const { return map_.capacity() * sizeof(typename Map::value_type) > (1u << 20); }
  void prefetch(const K& key) const { map_.prefetch(key); }

  // The keys changed in this batch and still present: in first-change order, or in map order
  // when they are a large part of the map (a sequential scan then beats random lookups).
  template <class F>
  void forEachChanged(F&& fn) const {
    visitChanged(*this, [&](size_t slot) {
      const auto& entry = map_.at(slot);
      fn(entry.first, entry.second.value);
    });
  }
  // How many records ahead lookups in a large map are prefetched: far enough to cover a memory
  // access at ~3 ns of work per record (8 and 16 measured slower, bench/README.md).
  static constexpr size_t kLookahead = 32;
  size_t changedCount() const { return changed_.size(); }
  int64_t removedCount() const { return removedCount_; }

  // Encodes this batch's changes (the final state of every key touched) and clears the marks.
  std::string encodeDelta(size_t& entries, size_t& puts) {
    StateFileWriter w(StateFileWriter::Kind::kDelta);
    puts = writeDelta(w, {});
    entries = w.count();
    return entries ? w.finish() : std::string();
  }
  // Writes this batch's changes into `w`, every key preceded by `keyPrefix` (operators that keep
  // several maps in one file tell them apart by it), and clears their marks. Returns the puts.
  size_t writeDelta(StateFileWriter& w, std::string_view keyPrefix) {
    auto& kb = w.keyBuffer();
    auto& vb = w.valueBuffer();
    size_t puts = 0;
    kb.assign(keyPrefix);  // every key starts with it: only what follows is rewritten per entry
    auto put = [&](size_t slot) {
      map_.unmark(slot);  // a key changed, removed and re-added appears twice in changed_
      const auto& [k, entry] = map_.at(slot);
      kb.resize(keyPrefix.size());
      vb.clear();
      StateCodec<K>::encode(k, kb);
      StateCodec<V>::encode(entry.value, vb);
      // Keys and values of one size (numbers, tuples of numbers): room for all of them at the
      // first one's size, so that the file is written without the buffer doubling, and copying,
      // its way up. Entries of varying size grow it as they come.
      if constexpr (kFixedSizeState<K> && kFixedSizeState<V>) {
        if (puts == 0) w.reserve(changed_.size() * StateFileWriter::putSize(kb, vb));
      }
      w.put(kb, vb);
      ++puts;
    };
    visitChanged(*this, put);
    for (const K& k : removed_) {
      if (map_.contains(k)) continue;  // re-added: written above
      kb.resize(keyPrefix.size());
      StateCodec<K>::encode(k, kb);
      w.remove(kb);
    }
    changed_.clear();
    changedSlots_.clear();
    slotsValidFrom_ = 0;
    layoutAtLastChange_ = map_.layout();
    removed_.clear();
    removedCount_ = 0;
    return puts;
  }
  bool hasChanges() const { return !changed_.empty() || !removed_.empty(); }

  // Restore: applies a snapshot or delta, or one of its entries (key and value bytes).
  void apply(const StateFileReader& file) {
    if (table_) {
      table_->apply(file);
      return;
    }
    file.forEach([&](std::string_view key, std::string_view value) { applyPut(key, value); },
                 [&](std::string_view key) { applyRemove(key); });
  }
  void applyPut(std::string_view key, std::string_view value) {
    K k = StateCodec<K>::decode(key);
    V v = StateCodec<V>::decode(value);
    map_.insert_or_assign(std::move(k), Slot{std::move(v)});
  }
  void applyRemove(std::string_view key) { map_.erase(StateCodec<K>::decode(key)); }
  // After the last file of a restore: the row count, from the map or a scan of the table.
  void restored() {
    if (!table_) {
      rows_ = static_cast<int64_t>(map_.size());
      return;
    }
    rows_ = 0;
    table_->scan([&](std::string_view, std::string_view) { ++rows_; });
  }

  // ---- a state backend's table behind the map
  // Keeps the state in `table` (empty), with at most `cacheKeys` keys cached between batches.
  void attach(std::unique_ptr<StateTable> table, size_t cacheKeys) {
    table_ = std::move(table);
    cacheKeys_ = cacheKeys;
  }
  bool spills() const { return table_ != nullptr; }

  // Caches the keys keys(need) passes to need(key) that are stored but not cached. A key removed
  // in this batch stays absent (the table still has it until persist()).
  template <class Keys>
  void load(Keys&& keys) {
    if (!table_) return;
    absl::flat_hash_set<K> gone(removed_.begin(), removed_.end());
    absl::flat_hash_set<K> wanted;
    std::vector<K> missing;
    keys([&](const K& k) {
      if (!map_.contains(k) && !gone.contains(k) && wanted.insert(k).second) missing.push_back(k);
    });
    if (missing.empty()) return;
    std::vector<std::string> encoded(missing.size());
    std::vector<std::string_view> views(missing.size());
    for (size_t i = 0; i < missing.size(); ++i) {
      StateCodec<K>::encode(missing[i], encoded[i]);
      views[i] = encoded[i];
    }
    const uint64_t layout = map_.layout();
    // Grown once for all of them, not doubling step by step while they arrive (the cache was
    // emptied after the last batch when it outgrew its budget).
    map_.reserve(map_.size() + missing.size());
    table_->multiGet(views, [&](size_t i, std::string_view value) {
      map_.try_emplace(std::move(missing[i]), Slot{StateCodec<V>::decode(value)});
    });
    if (map_.layout() != layout) slotsValidFrom_ = std::numeric_limits<size_t>::max();  // slots moved
  }
  // Caches every stored key (complete output mode reads them all).
  void loadAll() {
    if (!table_) return;
    absl::flat_hash_set<K> gone(removed_.begin(), removed_.end());
    const uint64_t layout = map_.layout();
    table_->scan([&](std::string_view key, std::string_view value) {
      K k = StateCodec<K>::decode(key);
      if (gone.contains(k) || map_.contains(k)) return;
      map_.try_emplace(std::move(k), Slot{StateCodec<V>::decode(value)});
    });
    if (map_.layout() != layout) slotsValidFrom_ = std::numeric_limits<size_t>::max();
  }
  // Calls fn(key, value) for every stored key (from the table when there is one: what is
  // derived from the whole state, such as eviction indexes, is rebuilt from it after a restore).
  template <class F>
  void forEachStored(F&& fn) {
    if (!table_) {
      for (const auto& [k, slot] : map_) fn(k, slot.value);
      return;
    }
    table_->scan([&](std::string_view key, std::string_view value) {
      K k = StateCodec<K>::decode(key);
      V v = StateCodec<V>::decode(value);
      fn(k, v);
    });
  }
  // After encodeDelta(): writes the delta `bytes` to the table, then empties the cache if it
  // holds more keys than its budget (every cached key is clean now, so nothing is lost).
  void persist(const std::string& bytes) {
    if (!table_) return;
    if (!bytes.empty()) table_->apply(StateFileReader(bytes, "the batch's state delta"));
    if (map_.size() > cacheKeys_) {
      map_ = Map();
    }
  }
  // Rows in the state (stored, not only cached).
  int64_t rows() const { return table_ ? rows_ : static_cast<int64_t>(map_.size()); }

  // Rough size of the state in memory: slots and control bytes (heap owned by keys and values,
  // e.g. long strings, is not counted).
  int64_t memoryBytes() const {
    return static_cast<int64_t>(map_.capacity() * (sizeof(typename Map::value_type) + 1) +
                                changed_.capacity() * (sizeof(K) + sizeof(size_t))) +
           (table_ ? table_->memoryBytes() : 0);
  }

 private:
  bool scanInstead() const { return changed_.size() * 4 > map_.capacity(); }

  // Calls fn(slot) once for every key changed in this batch and still present (marked): by a
  // scan of the map when the changes are a large part of it, else through the remembered slots
  // where they still hold, else by lookup (prefetched a few keys ahead either way).
  template <class Self, class F>
  static void visitChanged(Self& self, F&& fn) {
    auto& map = self.map_;
    if (self.scanInstead()) {
      for (auto it = map.begin(); it != map.end(); ++it) {
        if (map.marked(it.slot())) fn(it.slot());
      }
      return;
    }
    const size_t n = self.changed_.size();
    const bool ahead = self.large();
    const size_t direct = std::min(self.slotsValidFrom_, n);
    for (size_t i = 0; i < direct; ++i) {
      if (ahead && i + kLookahead < direct) map.prefetch(self.changed_[i + kLookahead]);
      auto it = map.find(self.changed_[i]);
      if (it == map.end() || !map.marked(it.slot())) continue;  // removed, or seen
      fn(it.slot());
    }
    for (size_t i = direct; i < n; ++i) {
      if (ahead && i + kLookahead < n) map.prefetchSlot(self.changedSlots_[i + kLookahead]);
      const size_t slot = self.changedSlots_[i];
      if (!map.marked(slot)) continue;  // seen
      fn(slot);
    }
  }

  Map map_;
  std::vector<K> changed_;
  std::vector<size_t> changedSlots_;  // by change, where the map kept it
  size_t slotsValidFrom_ = 0;         // changedSlots_ from here on hold their keys
  uint64_t layoutAtLastChange_ = 0;
  std::vector<K> removed_;
  int64_t removedCount_ = 0;
  int64_t rows_ = 0;                  // stored rows, when the map is a cache of table_
  std::unique_ptr<StateTable> table_;  // null: the map is the state
  size_t cacheKeys_ = 0;
};

// The per-partition states of one operator, plus an optional index of keys by an eviction time
// (a window's end, a duplicate's expiry), so that the watermark evicts without scanning all keys.
template <class K, class V>
struct PartitionSlot {
  PartitionId id;
  PartitionState<K, V> state;
  absl::btree_map<int64_t, std::vector<K>> byDeadline;  // eviction time -> keys
  int64_t droppedLate = 0;                                // this batch
  std::vector<DeadLetter> late;                           // this batch, when routed to dead letters
};

// Helper for typed operators: the states by partition, created on the driver thread before a
// batch's parallel section (so tasks never insert into this map concurrently).
template <class K, class V>
class PartitionedState {
 public:
  using Slot = PartitionSlot<K, V>;

  Slot& get(const PartitionId& p) {
    auto& s = parts_[p];
    if (!s) {
      s = std::make_unique<Slot>();
      s->id = p;
      if (backend_) s->state.attach(backend_->openTable(scope_, operatorId_, p), cacheKeys_);
    }
    return *s;
  }
  // Partitions created from now on keep their state in `backend` (StateOptions::backend).
  void useBackend(std::shared_ptr<StateBackend> backend, std::string scope, int operatorId, size_t cacheKeys) {
    backend_ = std::move(backend);
    scope_ = std::move(scope);
    operatorId_ = operatorId;
    cacheKeys_ = cacheKeys;
  }
  std::map<PartitionId, std::unique_ptr<Slot>>& all() { return parts_; }
  void drop(const PartitionId& p) { parts_.erase(p); }
  const std::map<PartitionId, std::unique_ptr<Slot>>& all() const { return parts_; }
  void clear() { parts_.clear(); }

  // Encodes every partition's delta, partitions in parallel (on the caller's arena), and appends
  // the files in partition order.
  void collect(int operatorId, int64_t version, StateChanges& out, StateOperatorProgress& p) {
    struct Encoded {
      std::string bytes;
      size_t entries = 0, puts = 0;
      int64_t removed = 0;
    };
    std::vector<Slot*> slots;
    for (auto& [id, slot] : parts_) slots.push_back(slot.get());
    std::vector<Encoded> encoded(slots.size());
    tbb::parallel_for(size_t{0}, slots.size(), [&](size_t i) {
      auto& st = slots[i]->state;
      encoded[i].removed = st.removedCount();
      if (st.hasChanges()) encoded[i].bytes = st.encodeDelta(encoded[i].entries, encoded[i].puts);
      st.persist(encoded[i].bytes);
    });
    p.numRowsUpdated = p.numRowsRemoved = p.numDeltaBytes = 0;
    for (size_t i = 0; i < slots.size(); ++i) {
      p.numRowsRemoved += encoded[i].removed;
      p.numRowsUpdated += static_cast<int64_t>(encoded[i].puts);
      if (encoded[i].entries == 0) continue;
      p.numDeltaBytes += static_cast<int64_t>(encoded[i].bytes.size());
      out.files.push_back({StateFileId{operatorId, slots[i]->id, version, false}, std::move(encoded[i].bytes)});
    }
  }
  void fillTotals(StateOperatorProgress& p) const {
    p.numRowsTotal = 0;
    p.memoryUsedBytes = 0;
    p.numRowsDroppedByWatermark = 0;
    for (const auto& [id, slot] : parts_) {
      p.numRowsTotal += slot->state.rows();
      p.memoryUsedBytes += slot->state.memoryBytes();
      p.numRowsDroppedByWatermark += slot->droppedLate;
    }
    p.numStatePartitions = static_cast<int64_t>(parts_.size());
  }

 private:
  std::map<PartitionId, std::unique_ptr<Slot>> parts_;
  std::shared_ptr<StateBackend> backend_;  // null: state in memory
  std::string scope_;
  int operatorId_ = 0;
  size_t cacheKeys_ = 0;
};

}  // namespace dataflow::detail
