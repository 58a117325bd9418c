// Operators of the typed API, their fusion, and the plan they explain.
#include <dataflow/dataflow.h>
#include <gtest/gtest.h>

#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "testing/run_query.h"

namespace dataflow {
namespace {

using testing_util::runToCompletion;

TEST(StreamMap, TransformsEveryRecordInOrder) {
  Session session({.workerThreads = 2, .chunkSize = 3});
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1, 2, 3, 4, 5, 6, 7});
  auto rows = runToCompletion<std::string>(session.readStream(in).map([](int x) { return std::to_string(x * 10); }));
  EXPECT_EQ(rows, (std::vector<std::string>{"10", "20", "30", "40", "50", "60", "70"}));
}

TEST(StreamFilter, DropsRowsFailingPredicate) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({1, 2, 3, 4, 5, 6});
  auto rows = runToCompletion<int>(session.readStream(in).filter([](int x) { return x % 2 == 0; }));
  EXPECT_EQ(rows, (std::vector<int>{2, 4, 6}));
}

TEST(StreamFlatMap, EmitsZeroOrMoreRecordsPerInput) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("in");
  in->addData({0, 1, 2, 3});
  auto rows = runToCompletion<int>(session.readStream(in).flatMap([](int x) { return std::vector<int>(x, x); }));
  EXPECT_EQ(rows, (std::vector<int>{1, 2, 2, 3, 3, 3}));
}

TEST(StreamParse, RoutesFailuresToDeadLettersWithRawBytes) {
  Session session;
  auto in = std::make_shared<MemoryStream<std::string>>("raw");
  in->addData({"7", "x", "9", std::string("\xff\x00z", 3)});
  std::vector<DeadLetter> dead;
  auto stream = session.readStream(in)
                    .parse([](const std::string& s) -> Result<int> {
                      if (s.empty() || !std::isdigit(static_cast<unsigned char>(s[0]))) {
                        return parseError("not_a_number", "not a number");
                      }
                      return std::stoi(s);
                    })
                    .deadLetters([&](std::span<const DeadLetter> d, const BatchInfo&) {
                      dead.insert(dead.end(), d.begin(), d.end());
                    });
  auto rows = runToCompletion<int>(stream);
  EXPECT_EQ(rows, (std::vector<int>{7, 9}));
  ASSERT_EQ(dead.size(), 2u);
  EXPECT_EQ(dead[0].payload, "x");
  EXPECT_EQ(dead[1].payload, std::string("\xff\x00z", 3));
  EXPECT_EQ(dead[1].errorKind, "not_a_number");
  EXPECT_EQ(dead[1].topic, "raw");
  EXPECT_EQ(dead[1].partition, 0);
}

TEST(StreamParse, UnroutedDeadLettersAreRefusedAtStart) {
  Session session;
  auto in = std::make_shared<MemoryStream<std::string>>("raw");
  auto writer = session.readStream(in)
                    .parse([](const std::string& s) -> Result<int> { return static_cast<int>(s.size()); })
                    .foreachBatch([](const Batch<int>&, const BatchInfo&) {});
  try {
    writer.start();
    FAIL() << "expected ConfigurationError";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("not routed"), std::string::npos) << e.what();
  }
}

TEST(StreamParse, SinkCanHandleDeadLettersInTheBatch) {
  Session session;
  auto in = std::make_shared<MemoryStream<std::string>>("raw");
  in->addData({"1", "", "3"});
  auto sink = std::make_shared<MemorySink<int>>();
  auto q = session.readStream(in)
               .parse([](const std::string& s) -> Result<int> {
                 if (s.empty()) return parseError("empty", "empty");
                 return std::stoi(s);
               })
               .deadLettersHandledBySink()
               .writeStream()
               .trigger(Trigger::availableNow())
               .sink(sink)
               .start();
  q.awaitTermination();
  EXPECT_EQ(sink->rows(), (std::vector<int>{1, 3}));
  ASSERT_EQ(sink->deadLetters().size(), 1u);
  EXPECT_EQ(sink->deadLetters()[0].offset, -1);  // plain strings carry no source position
}

TEST(StreamUnion, CombinesBothInputsKeepingPartitionOrder) {
  Session session;
  auto a = std::make_shared<MemoryStream<int>>("a");
  auto b = std::make_shared<MemoryStream<int>>("b");
  a->addData({1, 2, 3});
  b->addData({10, 20});
  auto rows = runToCompletion<int>(session.readStream(a).map([](int x) { return x; }).unionWith(
      session.readStream(b).map([](int x) { return x + 1; })));
  EXPECT_EQ(rows, (std::vector<int>{1, 2, 3, 11, 21}));
}

struct Change {
  int key;
  int64_t lsn;
  std::string value;
  bool operator==(const Change&) const = default;
};

TEST(StreamLatestByKey, KeepsNewestVersionPerKeyInTheBatch) {
  Session session;
  auto in = std::make_shared<MemoryStream<Change>>("changes", MemoryStreamOptions{.partitions = 2});
  in->addData({{1, 10, "a"}, {2, 11, "b"}, {1, 30, "c"}, {1, 20, "d"}}, 0);
  in->addData({{3, 5, "e"}, {2, 40, "f"}, {3, 5, "g"}}, 1);
  auto rows = runToCompletion<Change>(
      session.readStream(in).latestByKey([](const Change& c) { return c.key; },
                                         [](const Change& c) { return c.lsn; }));
  // Survivors keep partition order: partition 0 then 1. On equal versions the later one wins.
  EXPECT_EQ(rows, (std::vector<Change>{{1, 30, "c"}, {2, 40, "f"}, {3, 5, "g"}}));
}

TEST(StreamFusion, FusedChainMatchesStepByStepEvaluation) {
  Session session({.workerThreads = 2, .chunkSize = 7});
  auto in = std::make_shared<MemoryStream<int>>("in", MemoryStreamOptions{.partitions = 3});
  std::vector<std::vector<int>> data(3);
  for (int p = 0; p < 3; ++p) {
    for (int i = 0; i < 1000; ++i) data[p].push_back(p * 100000 + i);
    in->addData(data[p], p);
  }
  auto f1 = [](int x) { return static_cast<int64_t>(x) * 3; };
  auto f2 = [](int64_t x) { return x % 5 != 0; };
  auto f3 = [](int64_t x) { return std::vector<int64_t>{x, -x}; };
  auto f4 = [](int64_t x) { return x + 1; };
  auto rows = runToCompletion<int64_t>(session.readStream(in).map(f1).filter(f2).flatMap(f3).map(f4));
  std::vector<int64_t> expected;
  for (const auto& part : data) {
    for (int x : part) {
      int64_t a = f1(x);
      if (!f2(a)) continue;
      for (int64_t b : f3(a)) expected.push_back(f4(b));
    }
  }
  EXPECT_EQ(rows, expected);
}

TEST(StreamExplain, ShowsLogicalOperatorsAndFusedStages) {
  Session session;
  auto in = std::make_shared<MemoryStream<int>>("orders");
  auto text = session.readStream(in)
                  .map([](int x) { return x; })
                  .filter([](int x) { return x > 0; })
                  .latestByKey([](int x) { return x; }, [](int x) { return x; })
                  .map([](int x) { return x * 2; })
                  .writeStream()
                  .queryName("q")
                  .foreachBatch([](const Batch<int>&, const BatchInfo&) {})
                  .explain();
  EXPECT_NE(text.find("== Logical Plan =="), std::string::npos) << text;
  EXPECT_NE(text.find("StreamingRelation MemoryStream[orders]"), std::string::npos) << text;
  EXPECT_NE(text.find("*(1) Fused [Map]"), std::string::npos) << text;
  EXPECT_NE(text.find("*(2) Fused [Map -> Filter]"), std::string::npos) << text;
  EXPECT_NE(text.find("LatestByKey"), std::string::npos) << text;
  EXPECT_NE(text.find("query=q"), std::string::npos) << text;
}

TEST(StreamConcepts, AcceptMatchingAndRejectMismatchedLambdas) {
  auto ok = [](int x) { return x + 1; };
  auto wrongArg = [](const std::string& s) { return s.size(); };
  auto noResult = [](int) {};
  static_assert(MapFunction<decltype(ok), int>);
  static_assert(!MapFunction<decltype(wrongArg), int>);
  static_assert(!MapFunction<decltype(noResult), int>);
  static_assert(!ParseFunction<decltype(ok), int>);
  auto batchFn = [](const Batch<int>&, const BatchInfo&) {};
  static_assert(BatchFunction<decltype(batchFn), int>);
  static_assert(!BatchFunction<decltype(batchFn), std::string>);
}

}  // namespace
}  // namespace dataflow

namespace dataflow {
namespace {

TEST(ConsoleSink, PrintsTheBatchHeaderRowsAndDeadLetters) {
  Session session;
  auto in = std::make_shared<MemoryStream<std::string>>("console");
  in->addData({"1", "x", "3"});
  std::ostringstream out;
  auto sink = std::make_shared<ConsoleSink<int>>(ConsoleSinkOptions{.numRows = 1}, out);
  session.readStream(in)
      .parse([](const std::string& s) -> Result<int> {
        if (s == "x") return parseError("nan", "not a number");
        return std::stoi(s);
      })
      .deadLettersHandledBySink()
      .writeStream().trigger(Trigger::once()).sink(sink).start().awaitTermination();
  std::string text = out.str();
  EXPECT_NE(text.find("Batch: 0"), std::string::npos) << text;
  EXPECT_NE(text.find("\n1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("only showing top 1 rows"), std::string::npos) << text;
  EXPECT_NE(text.find("nan: not a number"), std::string::npos) << text;
}

}  // namespace
}  // namespace dataflow
