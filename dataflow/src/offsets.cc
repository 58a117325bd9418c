// Offsets arithmetic and Spark's JSON form.
#include "dataflow/offsets.h"

#include <boost/json.hpp>

#include <algorithm>
#include <charconv>

#include "dataflow/error.h"

namespace dataflow {

int64_t Offsets::get(const PartitionId& partition, int64_t fallback) const {
  auto it = offsets_.find(partition);
  return it == offsets_.end() ? fallback : it->second;
}

int64_t Offsets::distanceTo(const Offsets& other) const {
  int64_t total = 0;
  for (const auto& [partition, end] : other.offsets_) {
    int64_t start = get(partition, 0);
    if (end > start) total += end - start;
  }
  return total;
}

Offsets limitRecords(const Offsets& start, const Offsets& target, std::optional<int64_t> limit) {
  Offsets end;
  int64_t total = 0;
  for (const auto& [p, t] : target.partitions()) {
    int64_t s = start.get(p, t);
    if (t > s) total += t - s;
  }
  for (const auto& [p, s] : start.partitions()) end.set(p, s);
  if (!limit || total <= *limit) {
    for (const auto& [p, t] : target.partitions()) end.set(p, std::max(t, start.get(p, t)));
    return end;
  }
  int64_t budget = *limit;
  int64_t assigned = 0;
  for (const auto& [p, t] : target.partitions()) {
    int64_t s = start.get(p, t);
    if (t <= s) continue;
    int64_t share = static_cast<int64_t>(static_cast<long double>(budget) * (t - s) / total);
    end.set(p, s + share);
    assigned += share;
  }
  // Hand out the rounding remainder one record at a time so every batch makes progress.
  for (const auto& [p, t] : target.partitions()) {
    if (assigned >= budget) break;
    int64_t e = end.get(p, t);
    if (e < t) {
      end.set(p, e + 1);
      ++assigned;
    }
  }
  return end;
}

std::string Offsets::toJson() const {
  boost::json::object root;
  for (const auto& [partition, offset] : offsets_) {
    auto& topic = root[partition.topic];
    if (!topic.is_object()) topic = boost::json::object();
    topic.as_object()[std::to_string(partition.partition)] = offset;
  }
  return boost::json::serialize(root);
}

Offsets Offsets::fromJson(std::string_view json) {
  boost::json::error_code ec;
  boost::json::value root = boost::json::parse(json, ec);
  if (ec || !root.is_object()) {
    throw CheckpointError("offsets are not a JSON object of topics: " + std::string(json.substr(0, 200)));
  }
  Offsets out;
  for (const auto& [topic, partitions] : root.as_object()) {
    if (!partitions.is_object()) {
      throw CheckpointError("offsets of topic '" + std::string(topic) + "' are not an object");
    }
    for (const auto& [key, value] : partitions.as_object()) {
      int32_t partition = 0;
      auto [ptr, err] = std::from_chars(key.data(), key.data() + key.size(), partition);
      if (err != std::errc() || ptr != key.data() + key.size() || !value.is_int64()) {
        throw CheckpointError("bad offset entry '" + std::string(key) + "' in topic '" +
                              std::string(topic) + "'");
      }
      out.set({std::string(topic), partition}, value.as_int64());
    }
  }
  return out;
}

void RecordSizeEstimate::observe(int64_t records, int64_t bytes) {
  if (records <= 0) return;
  std::lock_guard lock(mu_);
  // Halve the history per read: the last few reads decide.
  records_ = records_ / 2 + static_cast<double>(records);
  bytes_ = bytes_ / 2 + static_cast<double>(bytes);
  last_ = static_cast<double>(bytes) / static_cast<double>(records);
}

double RecordSizeEstimate::bytesPerRecord() const {
  std::lock_guard lock(mu_);
  if (records_ <= 0) return kAssumedRecordBytes;
  return std::max({1.0, last_, bytes_ / records_});
}

int64_t RecordSizeEstimate::recordsWithin(int64_t budgetBytes) const {
  return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(budgetBytes) / bytesPerRecord()));
}

}  // namespace dataflow
