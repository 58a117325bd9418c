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

// One operator's state in one partition: the keys that start with the table's prefix, a number
// the backend gives each table it opens (4 bytes, big-endian: a table's keys are one range, and
// short keys keep the memtable's comparisons cheap).
class RocksDbTable final : public StateTable {
 public:
  RocksDbTable(std::shared_ptr<RocksDbBackend> backend, std::string prefix);
  ~RocksDbTable() override;

  void multiGet(const std::vector<std::string_view>& keys,
                const std::function<void(size_t, std::string_view)>& found) override;
  void apply(const StateFileReader& changes) override;
  void scan(const std::function<void(std::string_view, std::string_view)>& fn) override;
  int64_t memoryBytes() const override;

 private:
  void deleteAll();

  std::shared_ptr<RocksDbBackend> backend_;
  std::string prefix_, end_;
  std::string key_;  // scratch: prefix + key
};

class RocksDbBackend final : public StateBackend, public std::enable_shared_from_this<RocksDbBackend> {
 public:
  explicit RocksDbBackend(RocksDbStateOptions options) : options_(std::move(options)) {
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
    return std::make_unique<RocksDbTable>(shared_from_this(), std::move(prefix));
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

RocksDbTable::RocksDbTable(std::shared_ptr<RocksDbBackend> backend, std::string prefix)
    : backend_(std::move(backend)), prefix_(std::move(prefix)), end_(prefixEnd(prefix_)) {
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

void RocksDbTable::multiGet(const std::vector<std::string_view>& keys,
                            const std::function<void(size_t, std::string_view)>& found) {
  const size_t n = keys.size();
  if (n == 0) return;
  // Looked up in key order, in chunks: each lookup then starts its memtable and block search
  // where the previous one ended, and the pinned values stay bounded.
  std::vector<uint32_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return keys[a] < keys[b]; });
  constexpr size_t kChunk = 4096;
  std::vector<std::string> full(std::min(n, kChunk));
  std::vector<::rocksdb::Slice> slices(full.size());
  std::vector<::rocksdb::PinnableSlice> values(full.size());
  std::vector<::rocksdb::Status> statuses(full.size());
  auto& db = backend_->db();
  for (size_t from = 0; from < n; from += kChunk) {
    const size_t m = std::min(kChunk, n - from);
    for (size_t j = 0; j < m; ++j) {
      std::string_view k = keys[order[from + j]];
      full[j].assign(prefix_).append(k);
      slices[j] = full[j];
      values[j].Reset();
    }
    db.MultiGet(::rocksdb::ReadOptions(), db.DefaultColumnFamily(), m, slices.data(), values.data(), statuses.data(),
                /*sorted_input=*/true);
    for (size_t j = 0; j < m; ++j) {
      if (statuses[j].IsNotFound()) continue;
      backend_->check(statuses[j], "read state");
      found(order[from + j], std::string_view(values[j].data(), values[j].size()));
    }
  }
}

void RocksDbTable::apply(const StateFileReader& changes) {
  // Written in key order (a file has each key once): the memtable then inserts each key next to
  // the previous one instead of searching from the top.
  struct Entry {
    std::string_view key, value;
    bool put;
  };
  std::vector<Entry> entries;
  entries.reserve(changes.count());
  changes.forEach([&](std::string_view key, std::string_view value) { entries.push_back({key, value, true}); },
                  [&](std::string_view key) { entries.push_back({key, {}, false}); });
  if (entries.empty()) return;
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.key < b.key; });
  ::rocksdb::WriteBatch batch;
  for (const auto& e : entries) {
    key_.assign(prefix_).append(e.key);
    if (e.put) {
      batch.Put(key_, ::rocksdb::Slice(e.value.data(), e.value.size()));
    } else {
      batch.Delete(key_);
    }
  }
  backend_->check(backend_->db().Write(backend_->writeOptions(), &batch), "write state");
}

void RocksDbTable::scan(const std::function<void(std::string_view, std::string_view)>& fn) {
  ::rocksdb::ReadOptions read;
  ::rocksdb::Slice upper(end_);
  read.iterate_upper_bound = &upper;
  read.fill_cache = false;  // a full scan would evict the working set
  std::unique_ptr<::rocksdb::Iterator> it(backend_->db().NewIterator(read));
  for (it->Seek(prefix_); it->Valid(); it->Next()) {
    auto k = it->key();
    auto v = it->value();
    fn(std::string_view(k.data() + prefix_.size(), k.size() - prefix_.size()), std::string_view(v.data(), v.size()));
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
