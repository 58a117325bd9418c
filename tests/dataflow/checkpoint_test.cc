// Checkpoint stores: Spark's layout, crash-safe writes, retention, and clear errors on damage.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace dataflow {
namespace {

namespace fs = std::filesystem;

class DirectoryCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dataflow-ckpt-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  static std::string read(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static void write(const fs::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::trunc);
    out << s;
  }
  static OffsetLogEntry entry(int64_t id) {
    return {id, 1000 + id, {{"MemoryStream[x]", Offsets({{{"x", 0}, id}}), Offsets({{{"x", 0}, id + 1}})}}};
  }
  fs::path dir_;
};

TEST_F(DirectoryCheckpointTest, UsesSparkLayoutAndLeavesNoTemporaryFiles) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("x");
  in->addData({1, 2, 3});
  session.readStream(in).writeStream().checkpointLocation(dir_).trigger(Trigger::once())
      .sink(std::make_shared<MemorySink<int>>()).start().awaitTermination();
  EXPECT_TRUE(fs::exists(dir_ / "metadata"));
  ASSERT_TRUE(fs::exists(dir_ / "offsets" / "0"));
  ASSERT_TRUE(fs::exists(dir_ / "commits" / "0"));
  std::string offsets = read(dir_ / "offsets" / "0");
  EXPECT_EQ(offsets.substr(0, 3), "v1\n");
  EXPECT_NE(offsets.find("\n{\"x\":{\"0\":3}}\n"), std::string::npos) << offsets;
  for (const auto& e : fs::recursive_directory_iterator(dir_)) {
    EXPECT_EQ(e.path().extension(), "") << e.path();
  }
}

// A full filesystem: writes into /dev/full fail with ENOSPC, and the store writes through a
// symbolic link left at its temporary file's path.
TEST_F(DirectoryCheckpointTest, AFullFilesystemIsRetriableAndLeavesNothingBehind) {
  auto store = directoryCheckpoint(dir_);
  store->writeMetadata({"abc", {"MemoryStream[x]"}});
  fs::create_directories(dir_ / "offsets");
  fs::create_symlink("/dev/full", dir_ / "offsets" / "0.tmp");
  try {
    store->writeOffsets(entry(0));
    FAIL() << "writing to a full filesystem succeeded";
  } catch (const ConnectorError& e) {
    EXPECT_TRUE(e.retriable());
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(fs::symlink_status(dir_ / "offsets" / "0.tmp"))) << "the failed attempt's file is left";
  EXPECT_FALSE(store->latestOffsets().has_value());
  store->writeOffsets(entry(0));  // space is back
  EXPECT_EQ(store->latestOffsets()->batchId, 0);
}

TEST_F(DirectoryCheckpointTest, AQueryRidesOutAFullFilesystemWithoutStopping) {
  fs::create_directories(dir_ / "commits");
  fs::create_symlink("/dev/full", dir_ / "commits" / "0.tmp");
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("x");
  in->addData({1, 2, 3});
  auto sink = std::make_shared<MemorySink<int>>();
  session.readStream(in).writeStream().checkpointLocation(dir_).trigger(Trigger::once()).sink(sink).start().awaitTermination();
  EXPECT_EQ(sink->rows(), (std::vector<int>{1, 2, 3}));
  EXPECT_TRUE(fs::exists(dir_ / "commits" / "0"));
}

TEST_F(DirectoryCheckpointTest, EntriesRoundTrip) {
  auto store = directoryCheckpoint(dir_);
  EXPECT_FALSE(store->latestOffsets().has_value());
  EXPECT_FALSE(store->latestCommit().has_value());
  store->writeMetadata({"abc", {"MemoryStream[x]"}});
  store->writeOffsets(entry(0));
  store->writeOffsets(entry(1));
  store->writeCommit({0, 5});
  auto reopened = directoryCheckpoint(dir_);
  EXPECT_EQ(reopened->readMetadata()->id, "abc");
  auto latest = reopened->latestOffsets();
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->batchId, 1);
  EXPECT_EQ(latest->sources[0].start.get({"x", 0}, -1), 1);
  EXPECT_EQ(latest->sources[0].end.get({"x", 0}, -1), 2);
  EXPECT_EQ(reopened->latestCommit()->batchId, 0);
}

TEST_F(DirectoryCheckpointTest, TruncatedOffsetsFileGivesClearError) {
  auto store = directoryCheckpoint(dir_);
  store->writeOffsets(entry(0));
  std::string text = read(dir_ / "offsets" / "0");
  write(dir_ / "offsets" / "0", text.substr(0, text.size() / 2));
  try {
    store->latestOffsets();
    FAIL() << "expected CheckpointError";
  } catch (const CheckpointError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find((dir_ / "offsets" / "0").string()), std::string::npos) << what;
    EXPECT_NE(what.find("corrupt"), std::string::npos) << what;
  }
}

TEST_F(DirectoryCheckpointTest, CorruptFilesStopTheQueryWithCheckpointError) {
  auto store = directoryCheckpoint(dir_);
  store->writeMetadata({"id", {"MemoryStream[x]"}});
  write(dir_ / "offsets" / "0", "v1\n{not json}\n{}\n");
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("x");
  EXPECT_THROW(session.readStream(in).writeStream().checkpointLocation(dir_)
                   .sink(std::make_shared<MemorySink<int>>()).start(),
               CheckpointError);
  write(dir_ / "metadata", "{\"id\": 3}\n");
  EXPECT_THROW(store->readMetadata(), CheckpointError);
  write(dir_ / "commits" / "0", "v2\n{}\n");
  EXPECT_THROW(store->latestCommit(), CheckpointError);
}

TEST_F(DirectoryCheckpointTest, RetentionKeepsTheNewestEntries) {
  auto store = directoryCheckpoint(dir_, {.retainBatches = 5});
  for (int64_t id = 0; id <= 30; ++id) {
    store->writeOffsets(entry(id));
    store->writeCommit({id, id});
  }
  size_t offsets = 0;
  for (const auto& e : fs::directory_iterator(dir_ / "offsets")) {
    (void)e;
    ++offsets;
  }
  EXPECT_LE(offsets, 15u);
  EXPECT_GE(offsets, 5u);
  EXPECT_EQ(store->latestOffsets()->batchId, 30);
  EXPECT_TRUE(store->readOffsets(26).has_value());
  EXPECT_FALSE(store->readOffsets(0).has_value());
}

TEST(MemoryCheckpoint, BehavesLikeTheDirectoryStore) {
  auto store = memoryCheckpoint();
  EXPECT_FALSE(store->readMetadata());
  store->writeMetadata({"q", {"a", "b"}});
  EXPECT_EQ(store->readMetadata()->sourceDescriptions, (std::vector<std::string>{"a", "b"}));
  store->writeOffsets({3, 1, {}});
  store->writeCommit({3, 2});
  EXPECT_EQ(store->latestOffsets()->batchId, 3);
  EXPECT_EQ(store->latestCommit()->batchId, 3);
}

TEST(CheckpointSerialization, RejectsDamagedText) {
  EXPECT_THROW(parseOffsetLogEntry("", "x"), CheckpointError);
  EXPECT_THROW(parseOffsetLogEntry("v1\n{\"batchId\":1}\n", "x"), CheckpointError);
  EXPECT_THROW(parseCommitLogEntry("v1\n{\"batchId\":\"one\",\"commitTimestampMs\":1}\n", "x"), CheckpointError);
  EXPECT_THROW(parseMetadata("{\"id\":\"\",\"sources\":[]}\n", "x"), CheckpointError);
  OffsetLogEntry e{7, 9, {{"s", Offsets({{{"t", 2}, 5}}), Offsets({{{"t", 2}, 8}})}}};
  auto back = parseOffsetLogEntry(serializeOffsetLogEntry(e), "x");
  EXPECT_EQ(back.batchId, 7);
  EXPECT_EQ(back.sources[0].end, e.sources[0].end);
}

TEST(Offsets, SparkJsonRoundTripAndDistance) {
  Offsets a({{{"t", 0}, 5}, {{"t", 1}, 7}, {{"u", 0}, 1}});
  EXPECT_EQ(a.toJson(), R"({"t":{"0":5,"1":7},"u":{"0":1}})");
  EXPECT_EQ(Offsets::fromJson(a.toJson()), a);
  Offsets b({{{"t", 0}, 9}, {{"t", 1}, 7}, {{"v", 0}, 3}});
  EXPECT_EQ(a.distanceTo(b), 4 + 0 + 3);
  EXPECT_THROW(Offsets::fromJson("[1]"), CheckpointError);
  EXPECT_THROW(Offsets::fromJson(R"({"t":{"x":1}})"), CheckpointError);
  EXPECT_THROW(Offsets::fromJson(R"({"t":{"0":"1"}})"), CheckpointError);
}

// A byte budget becomes a record limit at the recent record size: assumed before any read,
// following a change of size within a few reads, never below one record.
TEST(RecordSizeEstimate, TurnsABudgetIntoRecordsAtTheRecentSize) {
  RecordSizeEstimate sizes;
  EXPECT_EQ(sizes.recordsWithin(1 << 20), (1 << 20) / RecordSizeEstimate::kAssumedRecordBytes);
  sizes.observe(1000, 500 * 1000);
  EXPECT_EQ(sizes.recordsWithin(1 << 20), (1 << 20) / 500);
  sizes.observe(1000, 4000 * 1000);  // the events grew (schemas on): the next batch shrinks at once
  EXPECT_EQ(sizes.bytesPerRecord(), 4000);
  EXPECT_EQ(sizes.recordsWithin(100), 1);
  sizes.observe(0, 0);  // an empty read changes nothing
  EXPECT_EQ(sizes.bytesPerRecord(), 4000);
  sizes.observe(1000, 100 * 1000);  // they shrank: batches grow over a few reads
  EXPECT_GT(sizes.bytesPerRecord(), 1000);
  for (int i = 0; i < 12; ++i) sizes.observe(1000, 100 * 1000);
  EXPECT_NEAR(sizes.bytesPerRecord(), 100, 5);
}

}  // namespace
}  // namespace dataflow
