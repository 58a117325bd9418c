// The hash map that holds a partition's keyed state, and the allocator behind its arrays.
//
// An open-addressing table in the SwissTable design (Abseil's flat_hash_map): a control byte per
// slot holds 6 bits of the key's hash, and lookups compare 16 control bytes at once (SSE2; byte
// by byte where there is none) before touching a slot. What it adds is one bit per entry, the
// "changed in this batch" mark, kept in the control byte that a lookup reads anyway: the state
// knows which keys a batch changed (the delta it checkpoints) without a field in each entry.
// With a field, an int64 -> {count, sum} entry took 32 bytes instead of 24, and a million of them
// 69 bytes each (slots at load 0.48 right after the table doubled, plus control bytes) where 52
// now do (bench/state_bench.cc, BM_Restore).
#pragma once

#include <absl/hash/hash.h>
#if defined(__SSE2__)
#include <emmintrin.h>  // part of x86-64
#endif
#include <sys/mman.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <new>
#include <utility>

namespace dataflow::detail {

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

// Keys K to values V, iterated as std::pair<const K, V>. The interface is the part of
// absl::flat_hash_map the state uses, plus the marks (mark/marked/unmark by slot). Iterators and
// slot numbers stay valid until the table is rehashed, which an insert may do (to grow, or in
// place to drop the tombstones of erased entries: the capacity then stays the same, so ask
// layout()); an erase leaves the other entries where they are. Not thread-safe.
template <class K, class V, class Hash = absl::Hash<K>, class Eq = std::equal_to<K>>
class StateMap {
 public:
  using key_type = K;
  using mapped_type = V;
  using value_type = std::pair<const K, V>;

  template <bool kConst>
  class Iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = StateMap::value_type;
    using difference_type = std::ptrdiff_t;
    using reference = std::conditional_t<kConst, const value_type&, value_type&>;
    using pointer = std::conditional_t<kConst, const value_type*, value_type*>;

    Iterator() = default;
    operator Iterator<true>() const { return {map_, slot_}; }  // NOLINT: iterator -> const_iterator
    reference operator*() const { return map_->slots_[slot_]; }
    pointer operator->() const { return &map_->slots_[slot_]; }
    Iterator& operator++() {
      slot_ = map_->nextFull(slot_ + 1);
      return *this;
    }
    Iterator operator++(int) {
      Iterator before = *this;
      ++*this;
      return before;
    }
    bool operator==(const Iterator& other) const { return slot_ == other.slot_; }
    size_t slot() const { return slot_; }

   private:
    friend class StateMap;
    template <bool>
    friend class Iterator;
    using Map = std::conditional_t<kConst, const StateMap, StateMap>;
    Iterator(Map* map, size_t slot) : map_(map), slot_(slot) {}
    Map* map_ = nullptr;
    size_t slot_ = 0;
  };
  using iterator = Iterator<false>;
  using const_iterator = Iterator<true>;

  StateMap() = default;
  StateMap(const StateMap& other) {
    reserve(other.size_);
    for (size_t i = 0; i < other.capacity_; ++i) {
      if (!isFull(other.ctrl_[i])) continue;
      const size_t slot = insertSlot(hashOf(other.slots_[i].first));
      ::new (&slots_[slot]) value_type(other.slots_[i]);
      setCtrl(slot, other.ctrl_[i]);  // its mark too
      ++size_;
      --growthLeft_;
    }
  }
  StateMap(StateMap&& other) noexcept { swap(other); }
  StateMap& operator=(StateMap other) noexcept {
    swap(other);
    return *this;
  }
  ~StateMap() { release(); }
  void swap(StateMap& other) noexcept {
    std::swap(ctrl_, other.ctrl_);
    std::swap(slots_, other.slots_);
    std::swap(capacity_, other.capacity_);
    std::swap(size_, other.size_);
    std::swap(growthLeft_, other.growthLeft_);
    std::swap(layout_, other.layout_);
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t capacity() const { return capacity_; }
  // Changes whenever entries move to other slots; no two tables share a value.
  uint64_t layout() const { return layout_; }

  iterator begin() { return {this, nextFull(0)}; }
  iterator end() { return {this, capacity_}; }
  const_iterator begin() const { return {this, nextFull(0)}; }
  const_iterator end() const { return {this, capacity_}; }

  iterator find(const K& key) { return {this, findSlot(key, hashOf(key))}; }
  const_iterator find(const K& key) const { return {this, findSlot(key, hashOf(key))}; }
  bool contains(const K& key) const { return findSlot(key, hashOf(key)) != capacity_; }

  // Brings the memory a lookup of `key` will read into the cache: a lookup of a random key in a
  // table larger than the caches waits for memory unless asked for a few lookups ahead.
  void prefetch(const K& key) const {
    if (capacity_ == 0) return;
    const size_t at = (hashOf(key) >> 7) & (capacity_ - 1);
    __builtin_prefetch(ctrl_ + at);
    __builtin_prefetch(slots_ + at);
  }

  // The same for a visit of a known slot: its control byte (the mark) and its entry.
  void prefetchSlot(size_t slot) const {
    __builtin_prefetch(ctrl_ + slot);
    __builtin_prefetch(slots_ + slot);
  }

  // The entry of `key`; when absent, one made by make(where), which constructs a value_type at
  // `where`. `created` says which.
  template <class Make>
  iterator findOrMake(const K& key, Make&& make, bool& created) {
    const size_t hash = hashOf(key);
    size_t slot = findSlot(key, hash);
    created = slot == capacity_;
    if (created) {
      slot = prepareInsert(hash);
      make(static_cast<void*>(&slots_[slot]));
      setCtrl(slot, h2(hash));
      ++size_;
    }
    return {this, slot};
  }
  template <class... Args>
  std::pair<iterator, bool> try_emplace(const K& key, Args&&... args) {
    bool created;
    auto it = findOrMake(key, [&](void* where) {
      ::new (where) value_type(std::piecewise_construct, std::forward_as_tuple(key), std::forward_as_tuple(std::forward<Args>(args)...));
    }, created);
    return {it, created};
  }
  template <class... Args>
  std::pair<iterator, bool> try_emplace(K&& key, Args&&... args) {
    bool created;
    auto it = findOrMake(key, [&](void* where) {
      ::new (where) value_type(std::piecewise_construct, std::forward_as_tuple(std::move(key)), std::forward_as_tuple(std::forward<Args>(args)...));
    }, created);
    return {it, created};
  }
  template <class M>
  std::pair<iterator, bool> insert_or_assign(K&& key, M&& value) {
    auto [it, created] = try_emplace(std::move(key), std::forward<M>(value));
    if (!created) it->second = std::forward<M>(value);
    return {it, created};
  }

  void erase(const_iterator it) {
    const size_t slot = it.slot();
    slots_[slot].~value_type();
    setCtrl(slot, kDeleted);  // a tombstone: probes for other keys go on past it
    --size_;
  }
  size_t erase(const K& key) {
    const size_t slot = findSlot(key, hashOf(key));
    if (slot == capacity_) return 0;
    erase(const_iterator{this, slot});
    return 1;
  }
  void clear() {
    StateMap empty;
    swap(empty);
  }
  // Makes room for `n` entries without growing again.
  void reserve(size_t n) {
    if (n <= size_ + growthLeft_) return;
    size_t capacity = kGroup;
    while (maxEntries(capacity) < n) capacity *= 2;
    resize(capacity);
  }

  // The "changed" mark of an entry (see the top of this file). An insert carries no mark; marks
  // survive growth.
  bool marked(size_t slot) const { return (ctrl_[slot] & kMark) != 0; }
  void mark(size_t slot) { setCtrl(slot, static_cast<int8_t>(ctrl_[slot] | kMark)); }
  void unmark(size_t slot) { setCtrl(slot, static_cast<int8_t>(ctrl_[slot] & ~kMark)); }
  value_type& at(size_t slot) { return slots_[slot]; }
  const value_type& at(size_t slot) const { return slots_[slot]; }
  iterator iteratorAt(size_t slot) { return {this, slot}; }

 private:
  // A control byte: empty, deleted, or, for a full slot, 6 bits of the hash and the mark.
  static constexpr int8_t kEmpty = -128;
  static constexpr int8_t kDeleted = -2;
  static constexpr int8_t kMark = 0x40;
  static constexpr int8_t kHashBits = 0x3F;
  static constexpr size_t kGroup = 16;  // control bytes compared at once

  static bool isFull(int8_t c) { return c >= 0; }
  static size_t hashOf(const K& key) { return Hash{}(key); }
  static int8_t h2(size_t hash) { return static_cast<int8_t>(hash & kHashBits); }
  // At most 7/8 of the slots hold entries or tombstones, so that a probe finds an empty slot
  // within a few groups.
  static size_t maxEntries(size_t capacity) { return capacity - capacity / 8; }

  // The groups a probe for `hash` visits: triangular steps over a power-of-two capacity visit
  // every group.
  struct Probe {
    size_t at, step = 0, mask;
    void next() {
      step += kGroup;
      at = (at + step) & mask;
    }
  };
  Probe probe(size_t hash) const { return {(hash >> 7) & (capacity_ - 1), 0, capacity_ - 1}; }
  // A group's 16 control bytes, and bit i set for each of them that: holds hash bits `h` (marks
  // ignored); is empty; is empty or deleted (the bytes below -1).
#if defined(__SSE2__)
  using Group = __m128i;
  Group group(size_t at) const { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(ctrl_ + at)); }
  static uint32_t matching(Group g, int8_t h) {
    const __m128i unmarked = _mm_and_si128(g, _mm_set1_epi8(static_cast<char>(~kMark)));
    return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(unmarked, _mm_set1_epi8(h))));
  }
  static uint32_t emptyOnes(Group g) {
    return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(g, _mm_set1_epi8(kEmpty))));
  }
  static uint32_t emptyOrDeleted(Group g) {
    return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpgt_epi8(_mm_set1_epi8(-1), g)));
  }
#else  // one byte at a time: the same answers, for targets without SSE2
  using Group = const int8_t*;
  Group group(size_t at) const { return ctrl_ + at; }
  template <class Test>
  static uint32_t bits(Group g, Test&& test) {
    uint32_t out = 0;
    for (size_t i = 0; i < kGroup; ++i) out |= static_cast<uint32_t>(test(g[i]) ? 1 : 0) << i;
    return out;
  }
  static uint32_t matching(Group g, int8_t h) {
    return bits(g, [h](int8_t c) { return static_cast<int8_t>(c & ~kMark) == h; });
  }
  static uint32_t emptyOnes(Group g) { return bits(g, [](int8_t c) { return c == kEmpty; }); }
  static uint32_t emptyOrDeleted(Group g) { return bits(g, [](int8_t c) { return c < -1; }); }
#endif

  size_t findSlot(const K& key, size_t hash) const {
    if (capacity_ == 0) return 0;
    const int8_t h = h2(hash);
    for (Probe p = probe(hash);; p.next()) {
      const Group g = group(p.at);
      for (uint32_t m = matching(g, h); m != 0; m &= m - 1) {
        const size_t slot = (p.at + static_cast<size_t>(std::countr_zero(m))) & p.mask;
        if (Eq{}(slots_[slot].first, key)) return slot;
      }
      if (emptyOnes(g) != 0) return capacity_;
    }
  }
  // A free slot for a new entry of `hash`, growing the table first when it is full.
  size_t prepareInsert(size_t hash) {
    if (growthLeft_ == 0) {
      // Mostly tombstones: rehash in place; else double.
      resize(capacity_ == 0 ? kGroup : size_ * 8 < capacity_ * 5 ? capacity_ : capacity_ * 2);
    }
    const size_t slot = insertSlot(hash);
    if (ctrl_[slot] == kEmpty) --growthLeft_;
    return slot;
  }
  size_t insertSlot(size_t hash) const {
    for (Probe p = probe(hash);; p.next()) {
      const uint32_t free = emptyOrDeleted(group(p.at));
      if (free != 0) return (p.at + static_cast<size_t>(std::countr_zero(free))) & p.mask;
    }
  }
  // Sets a control byte and its copy past the end (a group read near the end reads the first
  // bytes again there, so that no probe wraps within a group).
  void setCtrl(size_t slot, int8_t c) {
    ctrl_[slot] = c;
    if (slot < kGroup) ctrl_[capacity_ + slot] = c;
  }
  size_t nextFull(size_t slot) const {
    while (slot < capacity_ && !isFull(ctrl_[slot])) ++slot;
    return slot;
  }

  void resize(size_t capacity) {
    StateMap grown;
    grown.allocate(capacity);
    for (size_t i = 0; i < capacity_; ++i) {
      if (!isFull(ctrl_[i])) continue;
      value_type& from = slots_[i];
      const size_t slot = grown.insertSlot(hashOf(from.first));
      // The key moves too: the old entry is destroyed right after (as Abseil's maps do it).
      ::new (&grown.slots_[slot]) value_type(std::move(const_cast<K&>(from.first)), std::move(from.second));
      from.~value_type();
      grown.setCtrl(slot, ctrl_[i]);  // its mark too
    }
    grown.size_ = size_;
    grown.growthLeft_ = maxEntries(capacity) - size_;
    // The entries are moved out: only the arrays are left to free.
    deallocateArrays();
    ctrl_ = nullptr;
    slots_ = nullptr;
    capacity_ = size_ = growthLeft_ = 0;
    swap(grown);
  }
  void allocate(size_t capacity) {
    static std::atomic<uint64_t> layouts{0};
    layout_ = layouts.fetch_add(1, std::memory_order_relaxed) + 1;
    capacity_ = capacity;
    ctrl_ = LargePageAllocator<int8_t>{}.allocate(capacity + kGroup);
    std::memset(ctrl_, kEmpty, capacity + kGroup);
    slots_ = LargePageAllocator<value_type>{}.allocate(capacity);
    growthLeft_ = maxEntries(capacity);
  }
  void deallocateArrays() {
    if (capacity_ == 0) return;
    LargePageAllocator<int8_t>{}.deallocate(ctrl_, capacity_ + kGroup);
    LargePageAllocator<value_type>{}.deallocate(slots_, capacity_);
  }
  void release() {
    if constexpr (!std::is_trivially_destructible_v<value_type>) {
      for (size_t i = 0; i < capacity_; ++i) {
        if (isFull(ctrl_[i])) slots_[i].~value_type();
      }
    }
    deallocateArrays();
  }

  int8_t* ctrl_ = nullptr;
  value_type* slots_ = nullptr;
  size_t capacity_ = 0;    // 0, or a power of two of at least kGroup
  size_t size_ = 0;
  size_t growthLeft_ = 0;  // inserts into empty slots before the table must grow
  uint64_t layout_ = 0;    // see layout(); 0: no slots yet
};

}  // namespace dataflow::detail
