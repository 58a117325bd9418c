// The state file format (dataflow/state.h, src/state/state_file.cc): what a writer puts is what a
// reader gives back, in order, however the writer's buffer grew (ahead of the entries, by
// doubling or by reserve), and a damaged file is refused.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <optional>
#include <random>
#include <string>
#include <vector>

namespace dataflow {
namespace {

struct Entry {
  bool put;
  std::string key, value;
};

std::vector<Entry> readAll(const std::string& bytes) {
  StateFileReader reader(bytes, "test");
  std::vector<Entry> out;
  reader.forEach([&](std::string_view k, std::string_view v) { out.push_back({true, std::string(k), std::string(v)}); },
                 [&](std::string_view k) { out.push_back({false, std::string(k), {}}); });
  EXPECT_EQ(reader.count(), out.size());
  return out;
}

// Keys and values from empty to past a two-byte varint, puts and removes mixed.
std::vector<Entry> someEntries(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Entry> entries;
  for (size_t i = 0; i < n; ++i) {
    const size_t keyLen = rng() % 4 == 0 ? rng() % 300 : rng() % 12;
    const size_t valueLen = rng() % 8 == 0 ? rng() % 20000 : rng() % 24;
    std::string key(keyLen, '\0'), value(valueLen, '\0');
    for (auto& c : key) c = static_cast<char>(rng());
    for (auto& c : value) c = static_cast<char>(rng());
    entries.push_back({rng() % 5 != 0, std::move(key), std::move(value)});
  }
  return entries;
}

void expectSame(const std::vector<Entry>& a, const std::vector<Entry>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].put, b[i].put) << i;
    EXPECT_EQ(a[i].key, b[i].key) << i;
    if (a[i].put) {
      EXPECT_EQ(a[i].value, b[i].value) << i;
    }
  }
}

std::string write(const std::vector<Entry>& entries, size_t reserveBytes) {
  StateFileWriter w(StateFileWriter::Kind::kDelta);
  if (reserveBytes) w.reserve(reserveBytes);
  for (const auto& e : entries) {
    if (e.put) {
      w.put(e.key, e.value);
    } else {
      w.remove(e.key);
    }
  }
  return w.finish();
}

TEST(StateFile, EntriesComeBackInOrderHoweverTheBufferGrew) {
  const auto entries = someEntries(3000, 7);
  size_t exact = 0;
  for (const auto& e : entries) exact += StateFileWriter::putSize(e.key, e.put ? e.value : "") - (e.put ? 0 : 1);
  const std::string grown = write(entries, 0);
  expectSame(readAll(grown), entries);
  // Too little room reserved, exactly enough, and far more: the same file every time (the room
  // not used is not part of it).
  for (size_t reserve : {exact / 3, exact, exact * 4}) {
    const std::string file = write(entries, reserve);
    EXPECT_EQ(file, grown) << "reserve " << reserve;
  }
}

// What a delta may be sized by from its first entry.
static_assert(kFixedSizeState<int64_t> && kFixedSizeState<std::pair<int64_t, double>> &&
              kFixedSizeState<std::tuple<int64_t, double, int32_t>>);
static_assert(!kFixedSizeState<std::string> && !kFixedSizeState<std::tuple<int64_t, std::string>> &&
              !kFixedSizeState<std::optional<int64_t>> && !kFixedSizeState<std::vector<int64_t>>);

TEST(StateFile, AnEmptyFileAndADamagedOne) {
  StateFileWriter empty(StateFileWriter::Kind::kSnapshot);
  const std::string bytes = empty.finish();
  EXPECT_TRUE(readAll(bytes).empty());
  EXPECT_EQ(StateFileReader(bytes, "test").kind(), StateFileWriter::Kind::kSnapshot);

  std::string file = write(someEntries(50, 3), 1 << 20);
  file[file.size() / 2] ^= 0x5a;
  EXPECT_THROW(StateFileReader(file, "test"), CheckpointError);
  EXPECT_THROW(StateFileReader(file.substr(0, 10), "test"), CheckpointError);
}

}  // namespace
}  // namespace dataflow
