// For tests of scaled-out queries: a partitioned log shared by the instances and who owns each of
// its partitions (the test stands in for the consumer group that assigns them, as Kafka's does),
// and a pause that holds an instance's first batch as a stopped process would be held.
#pragma once

#include <dataflow/dataflow.h>

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace dataflow::group_testing {

template <class T>
struct GroupLog {
  std::mutex mu;
  std::string topic;
  std::vector<std::vector<T>> partitions;
  std::map<int32_t, int> owner;  // partition -> instance

  GroupLog(std::string name, int n) : topic(std::move(name)), partitions(static_cast<size_t>(n)) {}
  void assign(int32_t partition, int instance) {
    std::lock_guard lock(mu);
    owner[partition] = instance;
  }
  void append(int32_t partition, const std::vector<T>& rows) {
    std::lock_guard lock(mu);
    auto& part = partitions.at(static_cast<size_t>(partition));
    part.insert(part.end(), rows.begin(), rows.end());
  }
};

// One instance's view of a GroupLog: the partitions assigned to it.
template <class T>
class Member final : public TypedSource<T> {
 public:
  Member(std::shared_ptr<GroupLog<T>> log, int instance, bool fedByQuery = false)
      : log_(std::move(log)), instance_(instance), fedByQuery_(fedByQuery) {}
  std::string description() const override { return "Member[" + log_->topic + "]"; }
  bool isCoordinated() const override { return true; }
  bool fedByQuery() const override { return fedByQuery_; }
  Offsets initialOffsets() override {
    Offsets o = latestOffsets();
    for (auto& [p, offset] : o.partitions()) offset = 0;
    return o;
  }
  Offsets latestOffsets() override {
    std::lock_guard lock(log_->mu);
    Offsets o;
    for (const auto& [p, who] : log_->owner) {
      if (who == instance_) o.set({log_->topic, p}, static_cast<int64_t>(log_->partitions[static_cast<size_t>(p)].size()));
    }
    return o;
  }
  void read(const PartitionId& p, int64_t from, int64_t until, std::vector<T>& out) override {
    std::lock_guard lock(log_->mu);
    const auto& v = log_->partitions.at(static_cast<size_t>(p.partition));
    out.insert(out.end(), v.begin() + from, v.begin() + until);
  }
  void onPartitionsFenced(const std::vector<PartitionId>& partitions) override {
    std::lock_guard lock(mu_);
    fenced_.insert(fenced_.end(), partitions.begin(), partitions.end());
  }
  std::vector<PartitionId> fenced() {
    std::lock_guard lock(mu_);
    return fenced_;
  }

 private:
  std::shared_ptr<GroupLog<T>> log_;
  int instance_;
  bool fedByQuery_;
  std::mutex mu_;
  std::vector<PartitionId> fenced_;
};

// Holds an instance's first batch before its commit, as a paused process would be, until resumed.
struct PauseFirstBatch {
  std::mutex mu;
  std::condition_variable cv;
  bool paused = false, resumed = false;
  std::function<void(const BatchInfo&)> gate() {
    return [this](const BatchInfo&) {
      std::unique_lock lock(mu);
      if (paused) return;  // only the first batch
      paused = true;
      cv.notify_all();
      cv.wait(lock, [&] { return resumed; });
    };
  }
  void awaitPaused() {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return paused; });
  }
  void resume() {
    {
      std::lock_guard lock(mu);
      resumed = true;
    }
    cv.notify_all();
  }
};

}  // namespace dataflow::group_testing
