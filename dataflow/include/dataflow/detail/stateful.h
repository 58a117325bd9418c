// Runtime of stateful operators: the typed per-partition state they keep, the untyped interface
// the engine drives at batch boundaries (restore, encode the batch's changes, commit, progress),
// and the event-time statistics the watermark operators collect.
#pragma once

#include <absl/container/btree_map.h>
#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>

#include <sys/mman.h>

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
#include "dataflow/window.h"

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

  // Scale-out: whether every change of the operator's state in a batch comes from that batch's
  // records of the same source partition (no watermark, timers or cross-partition state), so that
  // a partition's state can move with the partition to another process.
  virtual bool stateFollowsPartitions() const { return false; }
  // Scale-out: forgets a partition's state (revoked, or to be restored again).
  virtual void dropPartition(const PartitionId& /*partition*/) {}

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

// Allocates large blocks (the backing arrays of big state tables) on 2 MiB pages where the
// kernel allows it (transparent huge pages in "madvise" mode, Debian's default): a lookup of a
// random key in a table of hundreds of megabytes otherwise pays a TLB miss on top of the cache
// miss. Small blocks come from the ordinary allocator.
template <class T>
struct LargePageAllocator {
  using value_type = T;
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kThreshold = size_t{4} << 20;

  LargePageAllocator() = default;
  template <class U>
  LargePageAllocator(const LargePageAllocator<U>&) noexcept {}  // NOLINT: rebinding

  T* allocate(size_t n) {
    size_t bytes = n * sizeof(T);
    if (bytes < kThreshold) return std::allocator<T>{}.allocate(n);
    size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (!p) throw std::bad_alloc();
    ::madvise(p, rounded, MADV_HUGEPAGE);  // advice only: without huge pages it still works
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) noexcept {
    if (n * sizeof(T) < kThreshold) {
      std::allocator<T>{}.deallocate(p, n);
    } else {
      std::free(p);
    }
  }
  template <class U>
  bool operator==(const LargePageAllocator<U>&) const noexcept { return true; }
};

// The state of one operator in one partition: keys K to values V in a flat hash map, with the
// keys changed and removed since the last collectChanges(). Used by one task at a time.
template <class K, class V>
class PartitionState {
 public:
  struct Slot {
    V value;
    uint32_t touched = 0;  // the epoch in which the value last changed (0: not since encoded)
  };
  using Map = absl::flat_hash_map<K, Slot, absl::Hash<K>, std::equal_to<K>,
                                  LargePageAllocator<std::pair<const K, Slot>>>;

  Map& map() { return map_; }
  const Map& map() const { return map_; }

  // The value of `key`, created with init() when absent, marked changed in this batch. `created`
  // says whether it was absent.
  template <class Init>
  V& upsert(const K& key, Init&& init, bool& created) {
    created = false;
    auto it = map_.lazy_emplace(key, [&](const typename Map::constructor& ctor) {
      created = true;
      ctor(key, Slot{init(), 0});
    });
    touch(it);
    return it->second.value;
  }
  void touch(typename Map::iterator it) {
    if (it->second.touched != epoch_) {
      it->second.touched = epoch_;
      // A slot's address holds until the map grows (or loses an element): remember it, and
      // from which change on the remembered addresses are still good.
      if (map_.capacity() != capacityAtLastChange_) {
        capacityAtLastChange_ = map_.capacity();
        pointersValidFrom_ = changed_.size();
      }
      changed_.push_back(it->first);
      changedSlots_.push_back(&*it);
    }
  }
  // Inserts `key` with `value` unless present; returns whether it was inserted.
  bool insertNew(const K& key, V value) {
    auto [it, inserted] = map_.try_emplace(key, Slot{std::move(value), 0});
    if (inserted) touch(it);
    return inserted;
  }
  void erase(typename Map::iterator it) {
    removed_.push_back(it->first);
    map_.erase(it);
    ++removedCount_;
    pointersValidFrom_ = std::numeric_limits<size_t>::max();  // a remembered slot may be gone
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
    visitChanged(*this, [&](const K& k, const Slot& slot) { fn(k, slot.value); });
  }
  static constexpr size_t kLookahead = 8;
  size_t changedCount() const { return changed_.size(); }
  int64_t removedCount() const { return removedCount_; }

  // Encodes this batch's changes (the final state of every key touched) and starts a new epoch.
  std::string encodeDelta(size_t& entries, size_t& puts) {
    StateFileWriter w(StateFileWriter::Kind::kDelta);
    puts = writeDelta(w, {});
    entries = w.count();
    return entries ? w.finish() : std::string();
  }
  // Writes this epoch's changes into `w`, every key preceded by `keyPrefix` (operators that keep
  // several maps in one file tell them apart by it), and starts a new epoch. Returns the puts.
  size_t writeDelta(StateFileWriter& w, std::string_view keyPrefix) {
    auto& kb = w.keyBuffer();
    auto& vb = w.valueBuffer();
    size_t puts = 0;
    auto put = [&](const K& k, Slot& slot) {
      slot.touched = 0;  // a key changed, removed and re-added appears twice in changed_
      kb.assign(keyPrefix);
      vb.clear();
      StateCodec<K>::encode(k, kb);
      StateCodec<V>::encode(slot.value, vb);
      w.put(kb, vb);
      ++puts;
    };
    visitChanged(*this, put);
    for (const K& k : removed_) {
      if (map_.contains(k)) continue;  // re-added: written above
      kb.assign(keyPrefix);
      StateCodec<K>::encode(k, kb);
      w.remove(kb);
    }
    changed_.clear();
    changedSlots_.clear();
    pointersValidFrom_ = 0;
    capacityAtLastChange_ = map_.capacity();
    removed_.clear();
    removedCount_ = 0;
    if (++epoch_ == 0) epoch_ = 1;
    return puts;
  }
  bool hasChanges() const { return !changed_.empty() || !removed_.empty(); }

  // Restore: applies a snapshot or delta, or one of its entries (key and value bytes).
  void apply(const StateFileReader& file) {
    file.forEach([&](std::string_view key, std::string_view value) { applyPut(key, value); },
                 [&](std::string_view key) { applyRemove(key); });
  }
  void applyPut(std::string_view key, std::string_view value) {
    K k = StateCodec<K>::decode(key);
    V v = StateCodec<V>::decode(value);
    map_.insert_or_assign(std::move(k), Slot{std::move(v), 0});
  }
  void applyRemove(std::string_view key) { map_.erase(StateCodec<K>::decode(key)); }

  // Rough size of the state in memory: slots and control bytes (heap owned by keys and values,
  // e.g. long strings, is not counted).
  int64_t memoryBytes() const {
    return static_cast<int64_t>(map_.capacity() * (sizeof(typename Map::value_type) + 1) +
                                changed_.capacity() * (sizeof(K) + sizeof(void*)));
  }

 private:
  bool scanInstead() const { return changed_.size() * 4 > map_.capacity(); }

  // Calls fn(key, slot) once for every key changed in this epoch and still present: by a scan
  // of the map when the changes are a large part of it, else through the remembered slot
  // addresses where they still hold, else by lookup (prefetched a few keys ahead either way).
  template <class Self, class F>
  static void visitChanged(Self& self, F&& fn) {
    auto& map = self.map_;
    if (self.scanInstead()) {
      for (auto& [k, slot] : map) {
        if (slot.touched == self.epoch_) fn(k, slot);
      }
      return;
    }
    const size_t n = self.changed_.size();
    const bool ahead = self.large();
    const size_t direct = std::min(self.pointersValidFrom_, n);
    for (size_t i = 0; i < direct; ++i) {
      if (ahead && i + kLookahead < direct) map.prefetch(self.changed_[i + kLookahead]);
      auto it = map.find(self.changed_[i]);
      if (it == map.end() || it->second.touched != self.epoch_) continue;  // removed, or seen
      fn(it->first, it->second);
    }
    for (size_t i = direct; i < n; ++i) {
      if (ahead && i + kLookahead < n) __builtin_prefetch(self.changedSlots_[i + kLookahead]);
      auto* entry = self.changedSlots_[i];
      if (entry->second.touched != self.epoch_) continue;  // seen
      fn(entry->first, entry->second);
    }
  }

  Map map_;
  std::vector<K> changed_;
  std::vector<typename Map::value_type*> changedSlots_;  // by change, where the map kept it
  size_t pointersValidFrom_ = 0;      // changedSlots_ from here on are current addresses
  size_t capacityAtLastChange_ = 0;
  std::vector<K> removed_;
  int64_t removedCount_ = 0;
  uint32_t epoch_ = 1;
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
    }
    return *s;
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
      p.numRowsTotal += static_cast<int64_t>(slot->state.map().size());
      p.memoryUsedBytes += slot->state.memoryBytes();
      p.numRowsDroppedByWatermark += slot->droppedLate;
    }
    p.numStatePartitions = static_cast<int64_t>(parts_.size());
  }

 private:
  std::map<PartitionId, std::unique_ptr<Slot>> parts_;
};

}  // namespace dataflow::detail
