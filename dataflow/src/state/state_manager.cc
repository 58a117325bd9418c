#include "state/state_manager.h"

#include <absl/container/flat_hash_set.h>
#include <absl/hash/hash.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>

#include "dataflow/error.h"

namespace dataflow::detail {

namespace {

// The newest put of each key over a chain of state files, kept as references into the files'
// bytes (which must not move): a key is found by the bytes it refers to, and its value follows
// it in the file.
class FoldIndex {
 public:
  explicit FoldIndex(const std::vector<std::string>& files) : set_(0, Hash{&files}, Eq{&files}), files_(&files) {}

  bool empty() const { return set_.empty(); }
  void reserve(size_t n) { set_.reserve(n); }
  void clear() { set_ = {}; }
  // `key` views the bytes of file `file` (a put's key).
  void put(uint32_t file, std::string_view key) {
    Ref ref{file, static_cast<uint32_t>(key.size()),
            static_cast<uint64_t>(key.data() - (*files_)[file].data())};
    auto [it, inserted] = set_.insert(ref);
    // The same key bytes, so the same hash and equality: the newer put replaces the reference.
    if (!inserted) const_cast<Ref&>(*it) = ref;
  }
  void remove(std::string_view key) { set_.erase(key); }
  template <class F>
  void forEach(F&& fn) const {
    for (const Ref& r : set_) {
      std::string_view after = std::string_view((*files_)[r.file]).substr(r.offset + r.keyLength);
      auto length = state_detail::getVarint(after);
      fn(keyOf(*files_, r), after.substr(0, length));
    }
  }

 private:
  struct Ref {
    uint32_t file;
    uint32_t keyLength;
    uint64_t offset;
  };
  static std::string_view keyOf(const std::vector<std::string>& files, const Ref& r) {
    return std::string_view(files[r.file]).substr(r.offset, r.keyLength);
  }
  struct Hash {
    using is_transparent = void;
    const std::vector<std::string>* files;
    size_t operator()(std::string_view k) const { return absl::Hash<std::string_view>{}(k); }
    size_t operator()(const Ref& r) const { return (*this)(keyOf(*files, r)); }
  };
  struct Eq {
    using is_transparent = void;
    const std::vector<std::string>* files;
    std::string_view view(std::string_view k) const { return k; }
    std::string_view view(const Ref& r) const { return keyOf(*files, r); }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const { return view(a) == view(b); }
  };

  absl::flat_hash_set<Ref, Hash, Eq> set_;
  const std::vector<std::string>* files_;
};

}  // namespace
namespace {

using Clock = std::chrono::steady_clock;
int64_t msSince(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// The files that restore `version` of one partition: its newest snapshot at or before it, then
// the deltas after that snapshot up to it, in version order.
std::vector<StateFileId> restoreChain(std::vector<StateFileId> files, int64_t version) {
  std::sort(files.begin(), files.end(), [](const StateFileId& a, const StateFileId& b) {
    return a.version != b.version ? a.version < b.version : a.snapshot > b.snapshot;
  });
  std::optional<int64_t> base;
  for (const auto& f : files) {
    if (f.snapshot && f.version <= version) base = f.version;
  }
  std::vector<StateFileId> chain;
  for (const auto& f : files) {
    if (f.version > version) continue;
    if (base && f.version < *base) continue;
    if (base && f.version == *base) {
      if (f.snapshot) chain.push_back(f);  // the delta of the snapshot's own version is in it
      continue;
    }
    if (!f.snapshot) chain.push_back(f);
  }
  return chain;
}

}  // namespace

StateManager::StateManager(std::vector<StatefulOperator*> operators, std::shared_ptr<CheckpointStore> store,
                           StateOptions options, std::string queryName, const std::string& runId)
    : operators_(std::move(operators)), store_(std::move(store)), options_(options),
      queryName_(std::move(queryName)), commitTimeMs_(operators_.size(), 0), files_(operators_.size()) {
  if (options_.minDeltasForSnapshot < 1) throw ConfigurationError("state option minDeltasForSnapshot must be >= 1");
  if (options_.minVersionsToRetain < 1) throw ConfigurationError("state option minVersionsToRetain must be >= 1");
  if (options_.cachedKeysPerPartition < 1) throw ConfigurationError("state option cachedKeysPerPartition must be >= 1");
  for (size_t i = 0; i < operators_.size(); ++i) {
    operators_[i]->setId(static_cast<int>(i));
    if (options_.backend) {
      operators_[i]->useStateBackend(options_.backend, runId, static_cast<size_t>(options_.cachedKeysPerPartition));
    }
  }
  if (options_.backend) {
    spdlog::info("query {}: operator state kept in {}, at most {} keys per partition cached", queryName_,
                 options_.backend->describe(), options_.cachedKeysPerPartition);
  }
}

StateManager::~StateManager() { waitForMaintenance(); }

void StateManager::waitForMaintenance() {
  if (!maintenance_.valid()) return;
  try {
    maintenance_.get();
  } catch (const std::exception& e) {
    spdlog::warn("query {}: state maintenance failed (it is retried after a later batch): {}", queryName_, e.what());
  }
}

int64_t StateManager::restore(std::optional<int64_t> version) {
  waitForMaintenance();
  auto t0 = Clock::now();
  size_t entries = 0, fileCount = 0;
  for (size_t i = 0; i < operators_.size(); ++i) {
    StatefulOperator& op = *operators_[i];
    op.clearState();
    files_[i].clear();
    std::map<PartitionId, std::vector<StateFileId>> byPartition;
    std::vector<StateFileId> stale;
    for (auto& f : store_->listStateFiles(op.id())) {
      if (!version || f.version > *version) {
        stale.push_back(f);
      } else {
        byPartition[f.partition].push_back(f);
      }
    }
    if (!stale.empty()) store_->deleteStateFiles(stale);
    if (!version) continue;
    for (auto& [partition, files] : byPartition) {
      PartitionFiles& info = files_[i][partition];
      for (const StateFileId& id : restoreChain(std::move(files), *version)) {
        std::string bytes = store_->readStateFile(id);
        StateFileReader reader(bytes, store_->describe() + "/" + id.path());
        op.restoreFile(partition, reader);
        entries += reader.count();
        ++fileCount;
        if (id.snapshot) {
          info.snapshot = id.version;
        } else {
          ++info.deltasSinceSnapshot;
        }
      }
    }
    op.finishRestore();
  }
  int64_t ms = msSince(t0);
  if (version) {
    spdlog::info("query {}: state of {} operator(s) restored at version {} from {} file(s), {} entries, in {} ms",
                 queryName_, operators_.size(), *version, fileCount, entries, ms);
  }
  return ms;
}

void StateManager::restorePartitions(const std::vector<std::pair<PartitionId, std::optional<int64_t>>>& partitions) {
  if (partitions.empty()) return;
  waitForMaintenance();
  for (size_t i = 0; i < operators_.size(); ++i) {
    StatefulOperator& op = *operators_[i];
    std::map<PartitionId, std::vector<StateFileId>> byPartition;
    for (auto& f : store_->listStateFiles(op.id())) byPartition[f.partition].push_back(f);
    for (const auto& [partition, committed] : partitions) {
      op.dropPartition(partition);
      PartitionFiles& info = files_[i][partition];
      info = {};
      if (!committed) continue;  // never committed: no state
      for (const StateFileId& id : restoreChain(byPartition[partition], *committed)) {
        std::string bytes = store_->readStateFile(id);
        op.restoreFile(partition, StateFileReader(bytes, store_->describe() + "/" + id.path()));
        if (id.snapshot) {
          info.snapshot = id.version;
        } else {
          ++info.deltasSinceSnapshot;
        }
        info.lastVersion = std::max(info.lastVersion, id.version);
      }
    }
    op.finishRestore();
  }
}

void StateManager::dropPartitions(const std::vector<PartitionId>& partitions) {
  for (size_t i = 0; i < operators_.size(); ++i) {
    for (const auto& p : partitions) {
      operators_[i]->dropPartition(p);
      files_[i].erase(p);
    }
  }
}

void StateManager::noteWritten(const StateChanges& changes) {
  for (const auto& f : changes.files) {
    auto& info = files_[f.id.operatorId][f.id.partition];
    ++info.deltasSinceSnapshot;
    info.lastVersion = std::max(info.lastVersion, f.id.version);
  }
}

StateChanges StateManager::collect(int64_t version) {
  StateChanges changes;
  collected_.resize(operators_.size());
  for (size_t i = 0; i < operators_.size(); ++i) {
    auto t0 = Clock::now();
    operators_[i]->collectChanges(version, changes);
    commitTimeMs_[i] = msSince(t0);
    collected_[i] = operators_[i]->progress();
  }
  return changes;
}

bool StateManager::runsAhead() const {
  return std::all_of(operators_.begin(), operators_.end(), [](const StatefulOperator* op) { return op->runsAhead(); });
}

void StateManager::write(const StateChanges& changes) {
  if (changes.empty()) return;
  auto t0 = Clock::now();
  store_->writeStateFiles(changes);
  int64_t ms = msSince(t0);
  // The write is one call for every operator: each is charged an equal share of it.
  for (auto& t : commitTimeMs_) t += ms / static_cast<int64_t>(std::max<size_t>(1, commitTimeMs_.size()));
  noteWritten(changes);
}

void StateManager::committed(int64_t version) {
  if (maintenance_.valid() &&
      maintenance_.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    return;  // the previous round is still running; the due partitions stay due
  }
  waitForMaintenance();
  // A partition's snapshot is made at its newest version: the batch id, or in scale-out the
  // partition's offset after its last batch.
  std::vector<std::tuple<int, PartitionId, int64_t>> due;
  for (size_t i = 0; i < files_.size(); ++i) {
    for (auto& [partition, info] : files_[i]) {
      if (info.deltasSinceSnapshot >= options_.minDeltasForSnapshot) {
        int64_t at = info.lastVersion >= 0 ? info.lastVersion : version;
        due.emplace_back(static_cast<int>(i), partition, at);
        info.deltasSinceSnapshot = 0;
        info.snapshot = at;
      }
    }
  }
  if (due.empty()) return;
  maintenance_ = std::async(std::launch::async, [this, due = std::move(due)] {
    for (const auto& [op, partition, at] : due) maintain(op, partition, at);
  });
}

// Folds the partition's newest snapshot and the deltas after it into a snapshot at `version`,
// working on the files' bytes only (never on the live state, which the next batch is changing),
// then deletes the files that no restore within the retention window needs.
void StateManager::maintain(int operatorId, PartitionId partition, int64_t version) {
  std::vector<StateFileId> files;
  for (auto& f : store_->listStateFiles(operatorId)) {
    if (f.partition == partition) files.push_back(f);
  }
  // The newest entry of each key, as a reference into the files' bytes: the snapshot of a large
  // state is made while the next batch runs, next to the state itself, so the fold holds the
  // files once and an index of 16 bytes a key (a copy of each entry in a sorted map took twice
  // the state's size again; views of key and value, 32 bytes a key).
  const auto chain = restoreChain(files, version);
  std::vector<std::string> bytes;
  bytes.reserve(chain.size());  // the references must not move
  FoldIndex entries(bytes);
  for (const StateFileId& id : chain) {
    bytes.push_back(store_->readStateFile(id));
    StateFileReader reader(bytes.back(), store_->describe() + "/" + id.path());
    if (entries.empty()) entries.reserve(reader.count());
    const auto file = static_cast<uint32_t>(bytes.size() - 1);
    reader.forEach([&](std::string_view k, std::string_view) { entries.put(file, k); },
                   [&](std::string_view k) { entries.remove(k); });
  }
  size_t size = 0;
  entries.forEach([&](std::string_view k, std::string_view v) { size += StateFileWriter::putSize(k, v); });
  StateFileWriter w(StateFileWriter::Kind::kSnapshot);
  w.reserve(size);
  entries.forEach([&](std::string_view k, std::string_view v) { w.put(k, v); });
  entries.clear();
  bytes = {};
  StateChanges snapshot;
  snapshot.files.push_back({StateFileId{operatorId, partition, version, true}, w.finish()});
  store_->writeStateFiles(snapshot);

  // Keep everything a restore of the newest `minVersionsToRetain` versions needs: the newest
  // snapshot at or before the oldest such version, and all files after it.
  int64_t oldestKept = version - options_.minVersionsToRetain + 1;
  std::optional<int64_t> base;
  for (const auto& f : files) {
    if (f.snapshot && f.version <= oldestKept && (!base || f.version > *base)) base = f.version;
  }
  if (!base) return;
  std::vector<StateFileId> obsolete;
  for (const auto& f : files) {
    if (f.version < *base) obsolete.push_back(f);
  }
  if (!obsolete.empty()) store_->deleteStateFiles(obsolete);
}

bool StateManager::wantsBatch(int64_t nowMs, int64_t watermarkMs) const {
  return std::any_of(operators_.begin(), operators_.end(),
                     [&](const StatefulOperator* op) { return op->wantsBatch(nowMs, watermarkMs); });
}

std::vector<StateOperatorProgress> StateManager::progress() const {
  std::vector<StateOperatorProgress> out;
  for (size_t i = 0; i < collected_.size(); ++i) {
    if (!operators_[i]->visibleInProgress()) continue;
    auto p = collected_[i];
    p.commitTimeMs = commitTimeMs_[i];
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace dataflow::detail
