#include "dataflow/rocksdb/rocksdb_state_backend.h"

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <atomic>
#include <climits>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "dataflow/error.h"

namespace dataflow::rocksdb {
namespace {

namespace fs = std::filesystem;

void putBigEndian32(uint32_t v, std::string& out) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

// The smallest key greater than every key that starts with `prefix`.
std::string prefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    auto& last = prefix.back();
    if (static_cast<uint8_t>(last) != 0xFF) {
      ++last;
      return prefix;
    }
    prefix.pop_back();
  }
  throw InternalError("rocksdb state: a table prefix of 0xFF bytes only");
}

class RocksDbBackend;

// One operator's state in one partition, in the keys that start with the table's prefix: a number
// the backend gives each table it opens (4 bytes, big-endian: a table's keys are one range, and
// short keys keep the memtable's comparisons cheap).
//
// The state's keys are grouped into buckets by a hash of their bytes (its top bits), and a bucket
// is one RocksDB value: its entries, in hash order (then key order, for equal hashes), so that
// batches sort and merge their keys by one integer comparison instead of comparing bytes. A
// batch of a large state changes keys all over it, and RocksDB's cost is per key it reads or
// writes (a skip-list search in each memtable, a bloom probe and an index search in each file):
// 650 k changed keys of 1 M cost 3.8 s per batch one RocksDB key each, and 0.3-0.4 s as 16 384
// buckets (bench/README.md). A value of
// kApartValueBytes or more stays under a key of its own (the bucket keeps a marker), so that a
// bucket stays small however large some values are (a join's buffered rows, a list state).
//
//   <prefix> 0x00 <bucket: 4 bytes, big-endian>  ->  entries: varint key length, key,
//                                                    varint (value length << 1 | apart), value
//   <prefix> 0x01 <key>                          ->  the value of an entry marked apart
class RocksDbTable final : public StateTable {
 public:
  RocksDbTable(std::shared_ptr<RocksDbBackend> backend, std::string prefix, uint32_t buckets);
  ~RocksDbTable() override;

  void multiGet(const std::vector<std::string_view>& keys,
                const std::function<void(size_t, std::string_view)>& found) override;
  void apply(const StateFileReader& changes) override;
  void scan(const std::function<void(std::string_view, std::string_view)>& fn) override;
  int64_t memoryBytes() const override;

  static constexpr size_t kApartValueBytes = 1024;

 private:
  void deleteAll();
  static uint64_t hashOf(std::string_view key) { return std::hash<std::string_view>{}(key); }
  uint32_t bucketOf(uint64_t hash) const { return bucketBits_ == 0 ? 0 : static_cast<uint32_t>(hash >> (64 - bucketBits_)); }
  void bucketKey(uint32_t bucket, std::string& k) const {
    k.assign(prefix_);
    k.push_back('\x00');
    putBigEndian32(bucket, k);
  }
  std::string apartKey(std::string_view key) const {
    std::string k = prefix_;
    k.push_back('\x01');
    k.append(key);
    return k;
  }
  // Reads `keys` (sorted, unique) in chunks; calls got(i, value) for each one stored.
  void readSorted(const std::vector<std::string>& keys, const std::function<void(size_t, std::string_view)>& got);

  std::shared_ptr<RocksDbBackend> backend_;
  std::string prefix_, end_;
  int bucketBits_;  // log2 of the number of buckets
  // Kept from batch to batch (a table is used by one task at a time): a large batch fills tens of
  // megabytes of them, which freshly allocated memory pays for again in page faults each time.
  std::vector<std::string> bucketKeys_, buckets_;
  std::vector<size_t> firstOfBucket_;
  ::rocksdb::WriteBatch batch_;
};

// One entry of a bucket's value, its bytes in the value it was read from.
struct BucketEntry {
  std::string_view key, value;
  bool apart = false;
};

// The order of a bucket's entries: by hash, then by key.
bool before(uint64_t hashA, std::string_view a, uint64_t hashB, std::string_view b) {
  return hashA != hashB ? hashA < hashB : a < b;
}

// Calls fn(entry) for each entry of a bucket's value, in their order.
template <class F>
void forEachEntry(std::string_view bucket, F&& fn) {
  while (!bucket.empty()) {
    BucketEntry e;
    e.key = state_detail::take(bucket, state_detail::getVarint(bucket));
    uint64_t tagged = state_detail::getVarint(bucket);
    e.apart = (tagged & 1) != 0;
    e.value = state_detail::take(bucket, tagged >> 1);
    fn(e);
  }
}

void appendEntry(std::string_view key, std::string_view value, bool apart, std::string& out) {
  state_detail::putVarint(key.size(), out);
  out.append(key);
  const uint64_t length = apart ? 0 : value.size();
  state_detail::putVarint(length << 1 | (apart ? 1 : 0), out);
  if (!apart) out.append(value);
}

class RocksDbBackend final : public StateBackend, public std::enable_shared_from_this<RocksDbBackend> {
 public:
  explicit RocksDbBackend(RocksDbStateOptions options) : options_(std::move(options)) {
    const uint32_t buckets = options_.bucketsPerTable;
    if (buckets == 0 || (buckets & (buckets - 1)) != 0) {
      throw ConfigurationError("rocksdb state: bucketsPerTable must be a power of two, not " + std::to_string(buckets));
    }
    fs::path parent = options_.directory.empty() ? fs::temp_directory_path() : options_.directory;
    std::random_device rd;
    path_ = parent / ("dataflow-state-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::error_code ec;
    fs::create_directories(parent, ec);
    if (ec) throw ConnectorError("rocksdb state: cannot create the directory " + parent.string() + ": " + ec.message(), false);

    ::rocksdb::Options o;
    o.create_if_missing = true;
    o.error_if_exists = true;
    o.write_buffer_size = options_.writeBufferBytes;
    o.max_background_jobs = 2;
    o.compression = options_.compress ? ::rocksdb::kLZ4Compression : ::rocksdb::kNoCompression;
    ::rocksdb::BlockBasedTableOptions t;
    cache_ = ::rocksdb::NewLRUCache(options_.blockCacheBytes);
    t.block_cache = cache_;
    // A batch looks up many keys that are not stored yet (new groups): the filter answers those
    // without reading a block.
    t.filter_policy.reset(::rocksdb::NewBloomFilterPolicy(10));
    o.table_factory.reset(::rocksdb::NewBlockBasedTableFactory(t));
    // The same for keys still in the memtable (recent batches' writes).
    o.memtable_whole_key_filtering = true;
    o.memtable_prefix_bloom_size_ratio = 0.05;
    ::rocksdb::DB* db = nullptr;
    auto status = ::rocksdb::DB::Open(o, path_.string(), &db);
    if (!status.ok()) {
      throw ConnectorError("rocksdb state: cannot open a database in " + path_.string() + ": " + status.ToString(), false);
    }
    db_.reset(db);
    write_.disableWAL = true;  // the checkpoint store is the durable copy
  }

  ~RocksDbBackend() override {
    db_.reset();
    std::error_code ec;
    fs::remove_all(path_, ec);
    if (ec) spdlog::warn("rocksdb state: could not remove {}: {}", path_.string(), ec.message());
  }

  std::string describe() const override { return "rocksdb(" + path_.string() + ")"; }

  // Every table gets a number never used before in this database, so a table opened again under
  // the same name (a restore) starts empty without deleting anything first.
  std::unique_ptr<StateTable> openTable(std::string_view runId, int operatorId, const PartitionId& partition) override {
    uint32_t number = nextTable_.fetch_add(1);
    if (number == UINT32_MAX) throw InternalError("rocksdb state: out of table numbers");
    std::string prefix;
    putBigEndian32(number, prefix);
    spdlog::debug("rocksdb state: table {} is run {} operator {} partition {}", number, runId, operatorId,
                  partition.toString());
    return std::make_unique<RocksDbTable>(shared_from_this(), std::move(prefix), options_.bucketsPerTable);
  }

  ::rocksdb::DB& db() { return *db_; }
  const ::rocksdb::WriteOptions& writeOptions() const { return write_; }
  std::atomic<int64_t>& tables() { return tables_; }

  void check(const ::rocksdb::Status& s, const char* what) const {
    if (!s.ok()) throw ConnectorError(std::string("rocksdb state (") + path_.string() + "): " + what + ": " + s.ToString(), false);
  }

  int64_t memoryBytes() const {
    uint64_t memtables = 0;
    db_->GetIntProperty(::rocksdb::DB::Properties::kCurSizeAllMemTables, &memtables);
    return static_cast<int64_t>(memtables + cache_->GetUsage());
  }

 private:
  RocksDbStateOptions options_;
  fs::path path_;
  std::shared_ptr<::rocksdb::Cache> cache_;
  std::unique_ptr<::rocksdb::DB> db_;
  ::rocksdb::WriteOptions write_;
  std::atomic<int64_t> tables_{0};
  std::atomic<uint32_t> nextTable_{0};
};

RocksDbTable::RocksDbTable(std::shared_ptr<RocksDbBackend> backend, std::string prefix, uint32_t buckets)
    : backend_(std::move(backend)), prefix_(std::move(prefix)), end_(prefixEnd(prefix_)), bucketBits_(std::countr_zero(buckets)) {
  ++backend_->tables();
}

RocksDbTable::~RocksDbTable() {
  --backend_->tables();
  try {
    deleteAll();
  } catch (const std::exception& e) {
    spdlog::warn("{}", e.what());  // the space is reclaimed when the backend closes
  }
}

void RocksDbTable::deleteAll() {
  auto& db = backend_->db();
  backend_->check(db.DeleteRange(backend_->writeOptions(), db.DefaultColumnFamily(), prefix_, end_), "delete a table");
}

void RocksDbTable::readSorted(const std::vector<std::string>& keys,
                              const std::function<void(size_t, std::string_view)>& got) {
  // In key order and in chunks: each lookup then starts its memtable and block search where the
  // previous one ended, and the pinned values stay bounded.
  constexpr size_t kChunk = 4096;
  const size_t n = keys.size();
  std::vector<::rocksdb::Slice> slices(std::min(n, kChunk));
  std::vector<::rocksdb::PinnableSlice> values(slices.size());
  std::vector<::rocksdb::Status> statuses(slices.size());
  auto& db = backend_->db();
  for (size_t from = 0; from < n; from += kChunk) {
    const size_t m = std::min(kChunk, n - from);
    for (size_t j = 0; j < m; ++j) {
      slices[j] = keys[from + j];
      values[j].Reset();
    }
    db.MultiGet(::rocksdb::ReadOptions(), db.DefaultColumnFamily(), m, slices.data(), values.data(), statuses.data(),
                /*sorted_input=*/true);
    for (size_t j = 0; j < m; ++j) {
      if (statuses[j].IsNotFound()) continue;
      backend_->check(statuses[j], "read state");
      got(from + j, std::string_view(values[j].data(), values[j].size()));
    }
  }
}

void RocksDbTable::multiGet(const std::vector<std::string_view>& keys,
                            const std::function<void(size_t, std::string_view)>& found) {
  const size_t n = keys.size();
  if (n == 0) return;
  // The keys in bucket order (by hash, then key): each bucket read once, its entries walked
  // beside the keys wanted from it.
  struct Wanted {
    uint64_t hash;
    uint32_t index;
  };
  std::vector<Wanted> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = {hashOf(keys[i]), static_cast<uint32_t>(i)};
  std::sort(order.begin(), order.end(),
            [&](const Wanted& a, const Wanted& b) { return before(a.hash, keys[a.index], b.hash, keys[b.index]); });
  auto& bucketKeys = bucketKeys_;
  auto& firstWanted = firstOfBucket_;  // per bucket read: its first position in `order`
  bucketKeys.clear();
  firstWanted.clear();
  for (size_t i = 0; i < n; ++i) {
    if (i == 0 || bucketOf(order[i].hash) != bucketOf(order[i - 1].hash)) {
      bucketKeys.emplace_back();
      bucketKey(bucketOf(order[i].hash), bucketKeys.back());
      firstWanted.push_back(i);
    }
  }
  firstWanted.push_back(n);
  std::vector<std::pair<uint32_t, std::string>> apart;  // (index, key) of values stored apart
  readSorted(bucketKeys, [&](size_t b, std::string_view bucket) {
    size_t w = firstWanted[b];
    const size_t last = firstWanted[b + 1];
    forEachEntry(bucket, [&](const BucketEntry& e) {
      const uint64_t hash = hashOf(e.key);
      while (w < last && before(order[w].hash, keys[order[w].index], hash, e.key)) ++w;
      // Equal keys asked for more than once each get the value.
      for (; w < last && order[w].hash == hash && keys[order[w].index] == e.key; ++w) {
        if (e.apart) {
          apart.emplace_back(order[w].index, apartKey(e.key));
        } else {
          found(order[w].index, e.value);
        }
      }
    });
  });
  if (apart.empty()) return;
  std::sort(apart.begin(), apart.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  std::vector<std::string> apartKeys;
  apartKeys.reserve(apart.size());
  for (auto& [index, key] : apart) apartKeys.push_back(std::move(key));
  readSorted(apartKeys, [&](size_t j, std::string_view value) { found(apart[j].first, value); });
}

void RocksDbTable::apply(const StateFileReader& changes) {
  struct Change {
    std::string_view key, value;
    bool put;
  };
  struct Sorted {  // what the sort moves: 16 bytes
    uint64_t hash;
    uint32_t change;  // index into `changed`, in the file's order
  };
  std::vector<Change> changed;
  changed.reserve(changes.count());
  changes.forEach([&](std::string_view key, std::string_view value) { changed.push_back({key, value, true}); },
                  [&](std::string_view key) { changed.push_back({key, {}, false}); });
  if (changed.empty()) return;
  std::vector<Sorted> order(changed.size());
  for (size_t i = 0; i < changed.size(); ++i) order[i] = {hashOf(changed[i].key), static_cast<uint32_t>(i)};
  // Of two changes of one key, the later one wins: it sorts after the earlier one.
  std::sort(order.begin(), order.end(), [&](const Sorted& a, const Sorted& b) {
    if (a.hash != b.hash) return a.hash < b.hash;
    const std::string_view ka = changed[a.change].key, kb = changed[b.change].key;
    return ka != kb ? ka < kb : a.change < b.change;
  });
  struct Entry {
    uint64_t hash;
    std::string_view key, value;
    bool put;
  };
  std::vector<Entry> entries(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const Change& ch = changed[order[i].change];
    entries[i] = {order[i].hash, ch.key, ch.value, ch.put};
  }
  auto& bucketKeys = bucketKeys_;
  auto& firstChange = firstOfBucket_;  // per bucket changed: its first position in `entries`
  bucketKeys.clear();
  firstChange.clear();
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i == 0 || bucketOf(entries[i].hash) != bucketOf(entries[i - 1].hash)) {
      bucketKeys.emplace_back();
      bucketKey(bucketOf(entries[i].hash), bucketKeys.back());
      firstChange.push_back(i);
    }
  }
  firstChange.push_back(entries.size());
  // Each changed bucket read (its current entries) and written again with the changes merged in,
  // in key order as the memtable likes them; values stored apart are put and deleted beside it.
  auto& stored = buckets_;
  if (stored.size() < bucketKeys.size()) stored.resize(bucketKeys.size());
  for (size_t b = 0; b < bucketKeys.size(); ++b) stored[b].clear();
  readSorted(bucketKeys, [&](size_t b, std::string_view bucket) { stored[b].assign(bucket); });
  auto& batch = batch_;
  batch.Clear();
  std::string merged;
  for (size_t b = 0; b < bucketKeys.size(); ++b) {
    merged.clear();
    size_t c = firstChange[b];
    const size_t last = firstChange[b + 1];
    // Writes the last change of the key at entries[c] (and skips the ones before it); `was`
    // tells whether the bucket held the key's value apart.
    auto applyChange = [&](bool was) {
      while (c + 1 < last && entries[c + 1].hash == entries[c].hash && entries[c + 1].key == entries[c].key) ++c;
      const Entry& ch = entries[c++];
      const bool apart = ch.put && ch.value.size() >= kApartValueBytes;
      if (apart) batch.Put(apartKey(ch.key), ::rocksdb::Slice(ch.value.data(), ch.value.size()));
      if (was && !apart) batch.Delete(apartKey(ch.key));
      if (ch.put) appendEntry(ch.key, ch.value, apart, merged);
    };
    forEachEntry(stored[b], [&](const BucketEntry& e) {
      const uint64_t hash = hashOf(e.key);
      while (c < last && before(entries[c].hash, entries[c].key, hash, e.key)) applyChange(false);
      if (c < last && entries[c].hash == hash && entries[c].key == e.key) {
        applyChange(e.apart);
      } else {
        appendEntry(e.key, e.value, e.apart, merged);
      }
    });
    while (c < last) applyChange(false);
    if (merged.empty()) {
      if (!stored[b].empty()) batch.Delete(bucketKeys[b]);
    } else {
      batch.Put(bucketKeys[b], merged);
    }
  }
  backend_->check(backend_->db().Write(backend_->writeOptions(), &batch), "write state");
  batch.Clear();
}

void RocksDbTable::scan(const std::function<void(std::string_view, std::string_view)>& fn) {
  ::rocksdb::ReadOptions read;
  ::rocksdb::Slice upper(end_);
  read.iterate_upper_bound = &upper;
  read.fill_cache = false;  // a full scan would evict the working set
  std::unique_ptr<::rocksdb::Iterator> it(backend_->db().NewIterator(read));
  // The buckets (0x00) come before the values stored apart (0x01).
  const std::string apartFrom = prefix_ + '\x01';
  for (it->Seek(prefix_); it->Valid(); it->Next()) {
    auto k = it->key();
    auto v = it->value();
    std::string_view key(k.data(), k.size());
    if (key.size() > prefix_.size() && key[prefix_.size()] == '\x01') {
      fn(key.substr(apartFrom.size()), std::string_view(v.data(), v.size()));
      continue;
    }
    forEachEntry(std::string_view(v.data(), v.size()), [&](const BucketEntry& e) {
      if (!e.apart) fn(e.key, e.value);
    });
  }
  backend_->check(it->status(), "scan state");
}

int64_t RocksDbTable::memoryBytes() const {
  // Memtables and block cache are shared: each table is charged an equal share.
  return backend_->memoryBytes() / std::max<int64_t>(1, backend_->tables().load());
}

}  // namespace

std::shared_ptr<StateBackend> stateBackend(RocksDbStateOptions options) {
  return std::make_shared<RocksDbBackend>(std::move(options));
}

}  // namespace dataflow::rocksdb
