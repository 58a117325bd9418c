// The keyed-state hash map (dataflow/detail/state_map.h) against std::map under random inserts,
// lookups, erases, marks, copies and growth, with string keys (moved on growth) and int keys.
#include <dataflow/detail/state_map.h>
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>
#include <string>

namespace dataflow::detail {
namespace {

template <class K>
K keyOf(uint32_t n) {
  if constexpr (std::is_same_v<K, std::string>) {
    return "key-" + std::to_string(n) + std::string(n % 40, 'x');  // some beyond the small-string buffer
  } else {
    return static_cast<K>(n);
  }
}

template <class K>
void expectSame(const StateMap<K, int64_t>& map, const std::map<K, int64_t>& model, const std::set<K>& marked) {
  ASSERT_EQ(map.size(), model.size());
  std::map<K, int64_t> seen;
  for (auto it = map.begin(); it != map.end(); ++it) {
    EXPECT_TRUE(seen.emplace(it->first, it->second).second) << "each entry once";
    EXPECT_EQ(map.marked(it.slot()), marked.contains(it->first));
  }
  EXPECT_EQ(seen, model);
}

template <class K>
void randomOperations(uint32_t seed) {
  std::mt19937 rng(seed);
  StateMap<K, int64_t> map;
  std::map<K, int64_t> model;
  std::set<K> marked;
  for (int round = 0; round < 40; ++round) {
    const uint32_t keySpace = 1 + rng() % 3000;  // small spaces churn tombstones, large ones grow
    for (int op = 0; op < 2000; ++op) {
      const K key = keyOf<K>(rng() % keySpace);
      switch (rng() % 6) {
        case 0:
        case 1: {
          bool created;
          auto it = map.findOrMake(key, [&](void* where) { ::new (where) std::pair<const K, int64_t>(key, 0); }, created);
          EXPECT_EQ(created, !model.contains(key));
          it->second += 1;
          model[key] += 1;
          if (rng() % 2) {
            map.mark(it.slot());
            marked.insert(key);
          }
          break;
        }
        case 2:
          EXPECT_EQ(map.erase(key), model.erase(key));
          marked.erase(key);
          break;
        case 3: {
          auto it = map.find(key);
          ASSERT_EQ(it != map.end(), model.contains(key));
          if (it != map.end()) {
            EXPECT_EQ(it->second, model[key]);
            EXPECT_EQ(map.marked(it.slot()), marked.contains(key));
            map.unmark(it.slot());
            marked.erase(key);
          }
          break;
        }
        case 4: {
          K moved = key;
          auto [it, inserted] = map.try_emplace(std::move(moved), 7);
          EXPECT_EQ(inserted, !model.contains(key));
          if (inserted) model[key] = 7;
          break;
        }
        default:
          map.prefetch(key);
          EXPECT_EQ(map.contains(key), model.contains(key));
      }
    }
    expectSame(map, model, marked);
    if (round % 10 == 9) {
      StateMap<K, int64_t> copy(map);  // a copy keeps entries and marks, and grows on its own
      expectSame(copy, model, marked);
      bool created;
      copy.findOrMake(keyOf<K>(999999), [&](void* where) { ::new (where) std::pair<const K, int64_t>(keyOf<K>(999999), 1); }, created);
      EXPECT_TRUE(created);
      expectSame(map, model, marked);
    }
    if (round % 13 == 12) {
      map.reserve(map.size() + 5000);
      expectSame(map, model, marked);
    }
  }
  map.clear();
  EXPECT_EQ(map.size(), 0u);
  EXPECT_EQ(map.begin(), map.end());
}

TEST(StateMap, AgreesWithAnOrderedMapUnderRandomOperationsOnIntegerKeys) {
  for (uint32_t seed = 1; seed <= 5; ++seed) randomOperations<int64_t>(seed);
}

TEST(StateMap, AgreesWithAnOrderedMapUnderRandomOperationsOnStringKeys) {
  for (uint32_t seed = 1; seed <= 3; ++seed) randomOperations<std::string>(seed);
}

// Erasing leaves tombstones that a later insert clears by rehashing in place: the capacity stays,
// the entries move, and layout() says so (the state remembers slots by layout).
TEST(StateMap, ARehashInPlaceChangesTheLayoutButNotTheCapacity) {
  StateMap<int64_t, int64_t> map;
  for (int64_t k = 0; k < 100; ++k) map.try_emplace(k, k);
  const size_t capacity = map.capacity();
  const uint64_t layout = map.layout();
  for (int64_t k = 0; k < 90; ++k) map.erase(k);
  EXPECT_EQ(map.layout(), layout) << "an erase moves nothing";
  // New keys take empty slots (or tombstones) until no empty one is left to spare; with 10 live
  // entries the table then rehashes in place.
  int64_t k = 1000;
  while (map.layout() == layout && k < 1200) map.try_emplace(k++, 0);
  EXPECT_NE(map.layout(), layout);
  EXPECT_EQ(map.capacity(), capacity);
  EXPECT_EQ(map.size(), static_cast<size_t>(10 + (k - 1000)));
  StateMap<int64_t, int64_t> other;
  other.try_emplace(1, 1);
  EXPECT_NE(other.layout(), map.layout()) << "no two tables share a layout";
}

// An entry takes its key and value and nothing more, plus one control byte: the mark lives there.
TEST(StateMap, AnEntryOfAnInt64ToTwoWordsTakesTwentyFourBytes) {
  struct CountSum {
    int64_t count;
    double sum;
  };
  EXPECT_EQ(sizeof(StateMap<int64_t, CountSum>::value_type), 24u);
  StateMap<int64_t, CountSum> map;
  map.reserve(1000000);
  EXPECT_LE(map.capacity() * (sizeof(StateMap<int64_t, CountSum>::value_type) + 1), 64u * 1000000);
}

}  // namespace
}  // namespace dataflow::detail
