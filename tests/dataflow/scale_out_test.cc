// Scale-out: several instances of one query share partitions handed out by a coordinator (here
// the test, standing in for a Kafka consumer group) and one checkpoint store that keeps offsets
// per partition and fences instances that lost a partition.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>

namespace dataflow {
namespace {

using namespace std::chrono_literals;

// A partitioned log and who owns each partition, like a consumer group's assignment.
struct SharedLog {
  std::mutex mu;
  std::vector<std::vector<int>> partitions;
  std::map<int32_t, int> owner;  // partition -> instance; absent: unassigned

  void append(int32_t partition, int from, int until) {
    std::lock_guard lock(mu);
    for (int v = from; v < until; ++v) partitions.at(static_cast<size_t>(partition)).push_back(v);
  }
  void assign(int32_t partition, int instance) {
    std::lock_guard lock(mu);
    owner[partition] = instance;
  }
};

class GroupMember final : public TypedSource<int> {
 public:
  GroupMember(std::shared_ptr<SharedLog> log, int instance) : log_(std::move(log)), instance_(instance) {}
  std::string description() const override { return "GroupMember[log]"; }
  bool isCoordinated() const override { return true; }
  Offsets initialOffsets() override {
    Offsets o = latestOffsets();
    for (auto& [p, offset] : o.partitions()) offset = 0;
    return o;
  }
  Offsets latestOffsets() override {
    std::lock_guard lock(log_->mu);
    Offsets o;
    for (const auto& [p, who] : log_->owner) {
      if (who == instance_) o.set({"log", p}, static_cast<int64_t>(log_->partitions[static_cast<size_t>(p)].size()));
    }
    return o;
  }
  void read(const PartitionId& p, int64_t from, int64_t until, std::vector<int>& out) override {
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
  std::shared_ptr<SharedLog> log_;
  int instance_;
  std::mutex mu_;
  std::vector<PartitionId> fenced_;
};

// Like the warehouse sink: rows become visible only when the batch's partition offsets commit,
// in the same step. `gate`, when set, holds a batch before its commit.
struct TransactionalOutput {
  std::mutex mu;
  std::vector<int> rows;
};

class TransactionalSink final : public Sink<int> {
 public:
  TransactionalSink(std::shared_ptr<CheckpointStore> store, std::shared_ptr<TransactionalOutput> out)
      : store_(std::move(store)), out_(std::move(out)) {}
  std::string description() const override { return "TransactionalSink"; }
  void addBatch(const Batch<int>& batch, const BatchInfo& info) override {
    if (gate) gate(info);
    std::lock_guard lock(out_->mu);
    store_->commitPartitions(info);  // throws PartitionsFencedError: nothing becomes visible
    for (int v : batch.rows()) out_->rows.push_back(v);
  }
  std::function<void(const BatchInfo&)> gate;

 private:
  std::shared_ptr<CheckpointStore> store_;
  std::shared_ptr<TransactionalOutput> out_;
};

std::vector<int> sorted(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::vector<int> iota(int n) {
  std::vector<int> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

struct Fixture {
  std::shared_ptr<SharedLog> log = std::make_shared<SharedLog>();
  std::shared_ptr<CheckpointStore> store = memoryCheckpoint();
  std::shared_ptr<TransactionalOutput> out = std::make_shared<TransactionalOutput>();
  Session session;

  explicit Fixture(int partitions) { log->partitions.resize(static_cast<size_t>(partitions)); }

  struct Instance {
    std::shared_ptr<GroupMember> source;
    std::shared_ptr<TransactionalSink> sink;
    StreamingQuery query;
  };
  Instance start(int instance, std::function<void(const BatchInfo&)> gate = {}) {
    auto source = std::make_shared<GroupMember>(log, instance);
    auto sink = std::make_shared<TransactionalSink>(store, out);
    sink->gate = std::move(gate);
    auto query = session.readStream(source).writeStream().queryName("scaled").checkpoint(store).sink(sink).start();
    return {source, sink, std::move(query)};
  }
  std::vector<int> output() {
    std::lock_guard lock(out->mu);
    return sorted(out->rows);
  }
};

TEST(ScaleOut, InstancesSharePartitionsAndEachRecordIsWrittenOnce) {
  Fixture f(4);
  for (int32_t p = 0; p < 4; ++p) {
    f.log->append(p, p * 1000, p * 1000 + 250);
    f.log->assign(p, p % 2);
  }
  auto a = f.start(0);
  auto b = f.start(1);
  a.query.processAllAvailable();
  b.query.processAllAvailable();
  for (int32_t p = 0; p < 4; ++p) f.log->append(p, p * 1000 + 250, p * 1000 + 500);
  a.query.processAllAvailable();
  b.query.processAllAvailable();
  a.query.stop();
  b.query.stop();
  std::vector<int> expected;
  for (int p = 0; p < 4; ++p) {
    for (int v = p * 1000; v < p * 1000 + 500; ++v) expected.push_back(v);
  }
  EXPECT_EQ(f.output(), expected);
  // Both did work.
  EXPECT_GT(a.query.lastProgress().value().batchId + b.query.lastProgress().value().batchId, 0);
}

TEST(ScaleOut, AReassignedPartitionResumesFromItsCommittedOffset) {
  Fixture f(2);
  f.log->append(0, 0, 100);
  f.log->append(1, 1000, 1100);
  f.log->assign(0, 0);
  f.log->assign(1, 0);
  auto a = f.start(0);
  a.query.processAllAvailable();
  // A second instance joins: the coordinator moves partition 1 to it.
  auto b = f.start(1);
  f.log->assign(1, 1);
  a.query.processAllAvailable();  // A drops partition 1 between batches
  f.log->append(1, 1100, 1200);
  b.query.processAllAvailable();
  // The first instance goes away: everything moves to the second.
  a.query.stop();
  f.log->assign(0, 1);
  f.log->append(0, 100, 200);
  b.query.processAllAvailable();
  b.query.stop();
  std::vector<int> expected = iota(200);
  for (int v = 1000; v < 1200; ++v) expected.push_back(v);
  EXPECT_EQ(f.output(), expected);
}

TEST(ScaleOut, AnInstanceThatLostItsPartitionCannotCommitForIt) {
  Fixture f(1);
  f.log->append(0, 0, 10);
  f.log->assign(0, 0);
  // The zombie: its first batch stops before committing, as if the process were paused.
  std::mutex mu;
  std::condition_variable cv;
  bool paused = false, resume = false;
  auto zombie = f.start(0, [&](const BatchInfo&) {
    std::unique_lock lock(mu);
    if (paused) return;  // only the first batch
    paused = true;
    cv.notify_all();
    cv.wait(lock, [&] { return resume; });
  });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return paused; });
  }
  // Meanwhile the group gives the partition to another instance, which leases it and commits.
  f.log->assign(0, 1);
  auto successor = f.start(1);
  f.log->append(0, 10, 20);
  successor.query.processAllAvailable();
  {
    std::lock_guard lock(mu);
    resume = true;
  }
  cv.notify_all();
  // The zombie's batch is refused and abandoned; the zombie keeps running without the partition.
  for (int i = 0; i < 500 && zombie.source->fenced().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(zombie.source->fenced(), (std::vector<PartitionId>{{"log", 0}}));
  EXPECT_TRUE(zombie.query.isActive());
  successor.query.stop();
  zombie.query.stop();
  EXPECT_EQ(f.output(), iota(20));
}

TEST(ScaleOut, StoresWithoutPerPartitionOffsetsAreRefused) {
  Session session;
  auto log = std::make_shared<SharedLog>();
  log->partitions.resize(1);
  auto dir = std::filesystem::temp_directory_path() / ("dataflow-scale-out-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto sink = std::make_shared<MemorySink<int>>();
  try {
    session.readStream(std::make_shared<GroupMember>(log, 0)).writeStream().checkpoint(directoryCheckpoint(dir)).sink(sink).start();
    FAIL() << "a directory checkpoint was accepted for a scaled-out query";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be shared by several instances"), std::string::npos) << e.what();
  }
  EXPECT_THROW(session.readStream(std::make_shared<GroupMember>(log, 0))
                   .writeStream().trigger(Trigger::availableNow()).checkpoint(memoryCheckpoint()).sink(sink).start(),
               ConfigurationError);
  auto plain = std::make_shared<MemoryStream<int>>("plain");
  EXPECT_THROW(session.readStream(std::make_shared<GroupMember>(log, 0))
                   .unionWith(session.readStream(plain))
                   .writeStream().checkpoint(memoryCheckpoint()).sink(sink).start(),
               ConfigurationError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dataflow
