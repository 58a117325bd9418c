// The in-memory checkpoint store. Entries go through the same text form as the directory store,
// so tests of the in-memory store also exercise serialization.
#include <map>
#include <mutex>

#include "dataflow/checkpoint.h"

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

 private:
  std::mutex mu_;
  std::optional<std::string> metadata_;
  std::map<int64_t, std::string> offsets_;
  std::map<int64_t, CommitLogEntry> commits_;
};

}  // namespace

std::shared_ptr<CheckpointStore> memoryCheckpoint() { return std::make_shared<MemoryCheckpointStore>(); }

}  // namespace dataflow
