// The in-memory checkpoint store. Entries go through the same text form as the directory store,
// so tests of the in-memory store also exercise serialization. Its scale-out part follows the
// same rules as the PostgreSQL store's, so that engine tests can run several instances of one
// query in one process.
#include <map>
#include <mutex>

#include "dataflow/checkpoint.h"
#include "dataflow/error.h"

namespace dataflow {
namespace {

class MemoryCheckpointStore final : public CheckpointStore {
 public:
  std::string describe() const override { return "memory"; }

  std::optional<QueryMetadata> readMetadata() override {
    std::lock_guard lock(mu_);
    if (!metadata_) return std::nullopt;
    return parseMetadata(*metadata_, "memory:metadata");
  }
  void writeMetadata(const QueryMetadata& metadata) override {
    std::lock_guard lock(mu_);
    metadata_ = serializeMetadata(metadata);
  }
  void writeOffsets(const OffsetLogEntry& entry) override {
    std::lock_guard lock(mu_);
    offsets_[entry.batchId] = serializeOffsetLogEntry(entry);
  }
  std::optional<OffsetLogEntry> latestOffsets() override {
    std::lock_guard lock(mu_);
    if (offsets_.empty()) return std::nullopt;
    auto it = std::prev(offsets_.end());
    return parseOffsetLogEntry(it->second, "memory:offsets/" + std::to_string(it->first));
  }
  std::optional<OffsetLogEntry> readOffsets(int64_t batchId) override {
    std::lock_guard lock(mu_);
    auto it = offsets_.find(batchId);
    if (it == offsets_.end()) return std::nullopt;
    return parseOffsetLogEntry(it->second, "memory:offsets/" + std::to_string(batchId));
  }
  void writeCommit(const CommitLogEntry& entry) override {
    std::lock_guard lock(mu_);
    commits_[entry.batchId] = entry;
    // Keep the store bounded like the directory store's retention.
    while (commits_.size() > 100) commits_.erase(commits_.begin());
    while (offsets_.size() > 101) offsets_.erase(offsets_.begin());
  }
  std::optional<CommitLogEntry> latestCommit() override {
    std::lock_guard lock(mu_);
    if (commits_.empty()) return std::nullopt;
    return std::prev(commits_.end())->second;
  }

  bool supportsState() const override { return true; }
  void writeStateFiles(const StateChanges& changes) override {
    std::lock_guard lock(mu_);
    for (const auto& f : changes.files) state_[f.id] = f.bytes;
  }
  std::vector<StateFileId> listStateFiles(int operatorId) override {
    std::lock_guard lock(mu_);
    std::vector<StateFileId> out;
    for (const auto& [id, bytes] : state_) {
      if (id.operatorId == operatorId) out.push_back(id);
    }
    return out;
  }
  std::string readStateFile(const StateFileId& id) override {
    std::lock_guard lock(mu_);
    auto it = state_.find(id);
    if (it == state_.end()) throw CheckpointError("state file memory:" + id.path() + " is missing");
    return it->second;
  }
  void deleteStateFiles(const std::vector<StateFileId>& ids) override {
    std::lock_guard lock(mu_);
    for (const auto& id : ids) state_.erase(id);
  }

  bool supportsScaleOut() const override { return true; }
  void join(const QueryMetadata&) override {}

  PartitionLeases leasePartitions(size_t source, const std::vector<PartitionId>& partitions) override {
    std::lock_guard lock(mu_);
    PartitionLeases out;
    for (const auto& [key, state] : partitions_) {
      if (key.first == source && state.committed) out.sourceHasCommits = true;
    }
    for (const auto& p : partitions) {
      PartitionState& state = partitions_[{source, p}];
      ++state.epoch;
      out.leases.push_back({p, state.epoch, state.committed});
    }
    return out;
  }

  void commitPartitions(const BatchInfo& batch) override {
    std::lock_guard lock(mu_);
    std::vector<PartitionId> fenced;
    std::vector<std::pair<PartitionState*, int64_t>> updates;
    for (size_t i = 0; i < batch.sources.size(); ++i) {
      const SourceRange& range = batch.sources[i];
      for (const auto& [p, end] : range.end.partitions()) {
        int64_t start = range.start.get(p, end);
        if (end <= start) continue;
        auto it = partitions_.find({i, p});
        int64_t epoch = -1;
        if (i < batch.leaseEpochs.size()) {
          if (auto e = batch.leaseEpochs[i].find(p); e != batch.leaseEpochs[i].end()) epoch = e->second;
        }
        // Committed == end: this batch was already committed by the sink, in its own step.
        auto committed = it == partitions_.end() ? std::nullopt : it->second.committed;
        if (it == partitions_.end() || it->second.epoch != epoch ||
            (committed && *committed != start && *committed != end)) {
          fenced.push_back(p);
        } else {
          updates.emplace_back(&it->second, end);
        }
      }
    }
    if (!fenced.empty()) {
      std::string names;
      for (const auto& p : fenced) names += (names.empty() ? "" : ", ") + p.toString();
      throw PartitionsFencedError("checkpoint memory: batch " + std::to_string(batch.batchId) +
                                      " lost the lease of " + names + " to another instance",
                                  fenced);
    }
    for (auto& [state, end] : updates) state->committed = end;
    // The batch's state changes become visible with its offsets, in the same step: a fenced
    // instance writes neither.
    if (batch.stateChanges) {
      for (const auto& f : batch.stateChanges->files) state_[f.id] = f.bytes;
    }
  }

 private:
  struct PartitionState {
    int64_t epoch = 0;
    std::optional<int64_t> committed;
  };
  std::map<std::pair<size_t, PartitionId>, PartitionState> partitions_;
  std::map<StateFileId, std::string> state_;
  std::mutex mu_;
  std::optional<std::string> metadata_;
  std::map<int64_t, std::string> offsets_;
  std::map<int64_t, CommitLogEntry> commits_;
};

}  // namespace

std::shared_ptr<CheckpointStore> memoryCheckpoint() { return std::make_shared<MemoryCheckpointStore>(); }

}  // namespace dataflow
