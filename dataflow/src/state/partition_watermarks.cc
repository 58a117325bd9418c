#include "dataflow/detail/partition_watermarks.h"

#include <algorithm>

#include "dataflow/error.h"
#include "dataflow/state.h"
#include "dataflow/window.h"

namespace dataflow::detail {
namespace {

// A partition's clock is one entry of its state: [watermark, newest event time by operator...].
constexpr std::string_view kClockKey = "clock";

}  // namespace

PartitionWatermarks::PartitionWatermarks(std::vector<int64_t> delaysMs) : delaysMs_(std::move(delaysMs)) {}

PartitionWatermarks::Clock PartitionWatermarks::fresh() const {
  return Clock{kNoWatermark, std::vector<int64_t>(delaysMs_.size(), kNoWatermark)};
}

int64_t PartitionWatermarks::watermarkOf(const Clock& clock, const std::vector<int64_t>* observed) const {
  // The minimum over the watermark operators that have read the partition (Spark's default
  // policy, per partition); never moving back.
  bool any = false;
  int64_t candidate = 0;
  for (size_t i = 0; i < delaysMs_.size(); ++i) {
    int64_t newest = clock.newestEventMs[i];
    if (observed) newest = std::max(newest, (*observed)[i]);
    if (newest == kNoWatermark) continue;
    int64_t w = newest - delaysMs_[i];
    candidate = any ? std::min(candidate, w) : w;
    any = true;
  }
  return any ? std::max(clock.watermarkMs, candidate) : clock.watermarkMs;
}

void PartitionWatermarks::observe(size_t index, const PartitionId& partition, int64_t maxEventMs) {
  std::lock_guard lock(mu_);
  auto [it, inserted] = observed_.try_emplace(partition);
  if (inserted) it->second.assign(delaysMs_.size(), kNoWatermark);
  it->second.at(index) = std::max(it->second.at(index), maxEventMs);
}

int64_t PartitionWatermarks::current(const PartitionId& partition) const {
  std::lock_guard lock(mu_);
  auto it = clocks_.find(partition);
  return it == clocks_.end() ? kNoWatermark : it->second.watermarkMs;
}

int64_t PartitionWatermarks::next(const PartitionId& partition) const {
  std::lock_guard lock(mu_);
  auto seen = observed_.find(partition);
  auto it = clocks_.find(partition);
  Clock clock = it == clocks_.end() ? fresh() : it->second;
  return watermarkOf(clock, seen == observed_.end() ? nullptr : &seen->second);
}

void PartitionWatermarks::beginBatch() {
  std::lock_guard lock(mu_);
  observed_.clear();
}

void PartitionWatermarks::advance() {
  std::lock_guard lock(mu_);
  for (auto& [partition, observed] : observed_) {
    auto [it, inserted] = clocks_.try_emplace(partition, fresh());
    Clock& clock = it->second;
    clock.watermarkMs = watermarkOf(clock, &observed);
    for (size_t i = 0; i < observed.size(); ++i) clock.newestEventMs[i] = std::max(clock.newestEventMs[i], observed[i]);
    changed_.push_back(partition);
  }
  observed_.clear();
}

int64_t PartitionWatermarks::lowest() const {
  std::lock_guard lock(mu_);
  bool any = false;
  int64_t low = kNoWatermark;
  for (const auto& [partition, clock] : clocks_) {
    if (clock.watermarkMs == kNoWatermark) continue;
    low = any ? std::min(low, clock.watermarkMs) : clock.watermarkMs;
    any = true;
  }
  return low;
}

void PartitionWatermarks::clearState() {
  std::lock_guard lock(mu_);
  clocks_.clear();
  observed_.clear();
  changed_.clear();
}

void PartitionWatermarks::restoreFile(const PartitionId& partition, const StateFileReader& file) {
  std::lock_guard lock(mu_);
  file.forEach(
      [&](std::string_view key, std::string_view value) {
        if (key != kClockKey) return;
        std::string_view in = value;
        auto fields = StateCodec<std::vector<int64_t>>::decode(in);
        if (fields.size() != delaysMs_.size() + 1) {
          throw CheckpointError("the event-time clock of partition " + partition.toString() + " in " + file.origin() +
                                " tracks " + std::to_string(fields.empty() ? 0 : fields.size() - 1) +
                                " watermark operator(s), but this query has " + std::to_string(delaysMs_.size()) +
                                "; use a new checkpoint location");
        }
        Clock clock{fields[0], std::vector<int64_t>(fields.begin() + 1, fields.end())};
            clocks_.insert_or_assign(partition, std::move(clock));
      },
      [&](std::string_view key) {
        if (key == kClockKey) clocks_.erase(partition);
      });
}

void PartitionWatermarks::collectChanges(int64_t version, StateChanges& out) {
  std::lock_guard lock(mu_);
  std::sort(changed_.begin(), changed_.end());
  changed_.erase(std::unique(changed_.begin(), changed_.end()), changed_.end());
  for (const PartitionId& partition : changed_) {
    auto it = clocks_.find(partition);
    if (it == clocks_.end()) continue;
    std::vector<int64_t> fields{it->second.watermarkMs};
    fields.insert(fields.end(), it->second.newestEventMs.begin(), it->second.newestEventMs.end());
    std::string value;
    StateCodec<std::vector<int64_t>>::encode(fields, value);
    StateFileWriter w(StateFileWriter::Kind::kDelta);
    w.put(kClockKey, value);
    out.files.push_back({StateFileId{id(), partition, version, false}, w.finish()});
  }
  changed_.clear();
}

StateOperatorProgress PartitionWatermarks::progress() const {
  std::lock_guard lock(mu_);
  StateOperatorProgress p;
  p.operatorName = operatorName();
  p.numRowsTotal = static_cast<int64_t>(clocks_.size());
  p.numStatePartitions = static_cast<int64_t>(clocks_.size());
  return p;
}

void PartitionWatermarks::dropPartition(const PartitionId& partition) {
  std::lock_guard lock(mu_);
  clocks_.erase(partition);
  observed_.erase(partition);
  std::erase(changed_, partition);
}

}  // namespace dataflow::detail
