// The contract every checkpoint store that keeps operator state must meet, run against each
// provider: in memory and directory (tests/dataflow) and PostgreSQL (tests/connectors/postgres).
#pragma once

#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <memory>
#include <string>

namespace dataflow::testing_util {

using StoreFactory = std::function<std::shared_ptr<CheckpointStore>()>;

inline void stateFilesRoundTrip(const StoreFactory& fresh) {
  auto store = fresh();
  ASSERT_TRUE(store->supportsState());
  store->writeMetadata({"query-id", {"MemoryStream[events]"}});  // a store may tie state to its query
  std::string binary("\x00\x01\xff\xfe" "DFST\n\r\\'\"", 13);
  StateChanges changes;
  changes.files.push_back({StateFileId{0, {"orders", 0}, 3, false}, binary});
  changes.files.push_back({StateFileId{0, {"orders", 1}, 3, false}, "p1"});
  changes.files.push_back({StateFileId{0, {"odd/topic%", 2}, 4, true}, "snap"});
  changes.files.push_back({StateFileId{1, {"orders", 0}, 3, false}, "other operator"});
  store->writeStateFiles(changes);

  auto ids = store->listStateFiles(0);
  std::sort(ids.begin(), ids.end());
  std::vector<StateFileId> expected{changes.files[0].id, changes.files[1].id, changes.files[2].id};
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(store->readStateFile(changes.files[0].id), binary) << "bytes come back exactly";
  EXPECT_EQ(store->readStateFile(changes.files[2].id), "snap");
  EXPECT_EQ(store->listStateFiles(1).size(), 1u);
  EXPECT_TRUE(store->listStateFiles(7).empty());

  // A version written again (a replayed batch) replaces the file.
  StateChanges again;
  again.files.push_back({changes.files[1].id, "p1 replayed"});
  store->writeStateFiles(again);
  EXPECT_EQ(store->readStateFile(changes.files[1].id), "p1 replayed");

  store->deleteStateFiles({changes.files[0].id, changes.files[2].id});
  EXPECT_EQ(store->listStateFiles(0), (std::vector<StateFileId>{changes.files[1].id}));
  EXPECT_THROW(store->readStateFile(changes.files[0].id), CheckpointError);

  // Files of large states (a store may move them in pieces): every byte value, at sizes around
  // a MiB boundary, written, read, and written again by a replay.
  for (size_t size : {size_t{1} << 20, (size_t{1} << 20) + 1, (size_t{5} << 20) + 12345}) {
    std::string big(size, '\0');
    for (size_t i = 0; i < size; ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
    StateChanges large;
    StateFileId id{2, {"orders", 0}, static_cast<int64_t>(size), true};
    large.files.push_back({id, big});
    store->writeStateFiles(large);
    EXPECT_TRUE(store->readStateFile(id) == big) << size << " bytes come back exactly";
    big[size / 2] ^= 0x5a;
    large.files[0].bytes = big;
    store->writeStateFiles(large);
    EXPECT_TRUE(store->readStateFile(id) == big) << size << " bytes written again replace the file";
  }
  EXPECT_EQ(store->listStateFiles(2).size(), 3u);
}

inline void watermarksRoundTrip(const StoreFactory& fresh) {
  auto store = fresh();
  QueryMetadata meta{"query-id", {"MemoryStream[events]"}};
  store->writeMetadata(meta);
  store->acquire(meta);
  OffsetLogEntry entry{0, 1000, {{"MemoryStream[events]", Offsets({{{"events", 0}, 0}}), Offsets({{{"events", 0}, 5}})}}};
  entry.batchWatermarkMs = INT64_MIN;
  store->writeOffsets(entry);
  EXPECT_EQ(store->latestOffsets()->batchWatermarkMs, INT64_MIN);
  store->writeCommit({0, 2000, 123456});
  EXPECT_EQ(store->latestCommit()->nextBatchWatermarkMs, 123456);
  entry.batchId = 1;
  entry.batchWatermarkMs = 123456;
  store->writeOffsets(entry);
  EXPECT_EQ(store->latestOffsets()->batchWatermarkMs, 123456);
  store->writeCommit({1, 3000, INT64_MIN});
  EXPECT_EQ(store->latestCommit()->nextBatchWatermarkMs, INT64_MIN);
}

struct ContractEvent {
  int64_t key = 0;
  int64_t ts = 0;
};

// A windowed count runs in two queries on the same store: the second continues the first's
// state and watermark.
// With `backends`, each query keeps its state in a backend of its own (a new process: nothing
// of the first query's working state is left but what the store kept).
inline void queryStateSurvivesARestart(const StoreFactory& fresh,
                                       const std::function<std::shared_ptr<StateBackend>()>& backends = nullptr) {
  using namespace std::chrono_literals;
  using Row = KeyValue<Windowed<int64_t>, int64_t>;
  auto store = fresh();
  auto in = std::make_shared<MemoryStream<ContractEvent>>("events", MemoryStreamOptions{.partitions = 2});
  auto run = [&] {
    Session session;
    std::shared_ptr<StateBackend> backend = backends ? backends() : nullptr;
    std::vector<Row> rows;
    auto query = session.readStream(in)
                     .withWatermark(&ContractEvent::ts, 0ms)
                     .groupByKey(&ContractEvent::key)
                     .window(tumbling(10s), &ContractEvent::ts)
                     .count()
                     .writeStream()
                     .outputMode(OutputMode::kAppend)
                     .checkpoint(store)
                     .stateBackend(backend)
                     .option("state.minDeltasForSnapshot", "2")
                     .trigger(Trigger::availableNow())
                     .foreachBatch([&](const Batch<Row>& b, const BatchInfo&) {
                       for (const auto& r : b.rows()) rows.push_back(r);
                     })
                     .start();
    query.awaitTermination();
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.key < b.key; });
    return rows;
  };
  in->addData({{1, 1000}, {1, 2000}, {2, 15000}}, 0);
  in->addData({{1, 3000}, {3, 12000}}, 1);
  auto first = run();
  EXPECT_EQ(first, (std::vector<Row>{{{{0, 10000}, 1}, 2}, {{{0, 10000}, 1}, 1}}))
      << "partition 0 and 1 keep their own state for key 1";
  in->addData({{2, 16000}, {9, 5000}, {2, 30000}}, 0);  // 5000 is late; 30000 closes [10s, 20s)
  in->addData({{3, 13000}}, 1);
  auto second = run();
  EXPECT_EQ(second, (std::vector<Row>{{{{10000, 20000}, 2}, 2}, {{{10000, 20000}, 3}, 2}}));
}

}  // namespace dataflow::testing_util
