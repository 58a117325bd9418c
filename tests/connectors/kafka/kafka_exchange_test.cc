// KafkaExchange (label: kafka): a table regrouped through an internal topic equals the
// recomputation from the final table, and two streams joined through one equal the join of the
// whole input, on librdkafka's mock cluster and on the real broker
// (RealBrokerExchange: the topic is created with the partitions asked for, a second exchange finds
// it with the partitions it has, and what committed batches read is deleted from it).
#include <dataflow/dataflow.h>
#include <dataflow/kafka/kafka_exchange.h>
#include <gtest/gtest.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <unistd.h>

#include <thread>

#include "connectors/kafka/real_broker.h"
#include "testing/join_workloads.h"
#include "testing/table_workloads.h"

namespace dataflow::kafka {
namespace {

using namespace table_testing;

KafkaExchangeOptions exchangeOptions(const std::string& bootstrap, int32_t partitions) {
  KafkaExchangeOptions o;
  o.bootstrapServers = bootstrap;
  o.partitions = partitions;
  o.kafka["log_level"] = "0";
  return o;
}

TEST(KafkaExchange, RegroupsATableExactlyAcrossCrashes) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
  rd_kafka_t* handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(handle, 1);
  const std::string bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
  // The mock cluster has no CreateTopics: the topic exists, with more partitions than asked for
  // (an exchange keeps a topic's own count).
  ASSERT_EQ(rd_kafka_mock_topic_create(cluster, "stats-groupBy-1", 3, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  {
    auto changelog = randomChangelog(7, 2, 150);
    auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
    store->arm(CrashingStore::Step::kBeforeCommit, 5);
    int crashes = 0;
    auto exchange = std::make_shared<KafkaExchange>(exchangeOptions(bootstrap, 1));
    EXPECT_EQ(runAggregation(changelog, store, &crashes, -1, nullptr, false, exchange), recompute(changelog));
    EXPECT_EQ(crashes, 1);
    EXPECT_EQ(exchange->channel("stats-groupBy-1")->partitions(), 3);
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(handle);
}

TEST(KafkaExchange, JoinsTwoStreamsExactlyAcrossCrashes) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
  rd_kafka_t* handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(handle, 1);
  const std::string bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
  ASSERT_EQ(rd_kafka_mock_topic_create(cluster, "clicks-buys-join-1", 3, 1), RD_KAFKA_RESP_ERR_NO_ERROR);
  {
    auto w = join_testing::randomWorkload(5, 2, 2, 400);
    for (JoinType type : {JoinType::kInner, JoinType::kLeftOuter}) {
      auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
      store->arm(CrashingStore::Step::kBeforeCommit, 6);
      auto result = join_testing::runJoin(w, type, store, std::make_shared<KafkaExchange>(exchangeOptions(bootstrap, 1)));
      EXPECT_EQ(result.rows, join_testing::oracle(w, type)) << toString(type);
      EXPECT_EQ(result.crashes, 1);
    }
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(handle);
}

TEST(KafkaExchange, RefusesAQueryNameThatIsNoTopicNameAndPropertiesItSetsItself) {
  auto options = exchangeOptions("127.0.0.1:1", 1);
  KafkaExchange exchange(options);
  try {
    exchange.channel("orders per customer-groupBy-1");
    FAIL() << "a name with spaces was accepted";
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("'orders per customer-groupBy-1' is not a legal topic name"), std::string::npos)
        << e.what();
  }
  options.kafka["group.id"] = "mine";
  EXPECT_THROW(KafkaExchange{options}, ConfigurationError);
}

TEST(RealBrokerExchange, CreatesItsTopicRegroupsATableExactlyAndDeletesWhatWasCommitted) {
  REQUIRE_REAL_KAFKA();
  // A fresh name per run: the topic is created by the exchange.
  const std::string query = "exchange-test-" + std::to_string(::getpid());
  auto exchange = std::make_shared<KafkaExchange>(exchangeOptions(realBroker(), 4));
  auto changelog = randomChangelog(11, 3, 200);
  auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
  store->arm(CrashingStore::Step::kAfterOffsets, 4);
  int crashes = 0;
  // runAggregation names its query "stats"; the topic is named after it.
  EXPECT_EQ(runAggregation(changelog, store, &crashes, -1, nullptr, /*overlap=*/true, exchange), recompute(changelog));
  EXPECT_EQ(crashes, 1);
  auto channel = exchange->channel("stats-groupBy-1");
  EXPECT_GE(channel->partitions(), 1);
  // What committed batches read is deleted from the topic (else it would grow forever).
  int64_t deleted = 0;
  {
    char err[512];
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", realBroker().c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    for (int attempt = 0; attempt < 50 && deleted == 0; ++attempt) {
      for (int32_t p = 0; p < channel->partitions(); ++p) {
        int64_t low = 0, high = 0;
        if (rd_kafka_query_watermark_offsets(rk, "stats-groupBy-1", p, &low, &high, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
          deleted += low;
        }
      }
      if (deleted == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    rd_kafka_destroy(rk);
  }
  EXPECT_GT(deleted, 0) << "no committed record of the exchange topic was deleted";

  // Made by this exchange: the partitions it was asked for; another exchange finds the topic.
  auto made = exchange->channel(query);
  EXPECT_EQ(made->partitions(), 4);
  auto other = KafkaExchange(exchangeOptions(realBroker(), 9)).channel(query);
  EXPECT_EQ(other->partitions(), 4) << "an existing topic keeps its partitions";
  made->send(2, "k", "v");
  made->flush();
  auto source = other->source();
  source->open();
  EXPECT_EQ(source->latestOffsets().get({query, 2}, -1), 1);
  EXPECT_TRUE(source->fedByQuery());
  source->close();
}

TEST(RealBrokerExchange, JoinsTwoStreamsExactlyThroughATopicItCreates) {
  REQUIRE_REAL_KAFKA();
  // runJoin names its query "clicks-buys" and the topic after it; what an earlier run left in the
  // topic belongs to another query id and is skipped.
  auto w = join_testing::randomWorkload(13, 3, 2, 500);
  auto store = std::make_shared<CrashingStore>(memoryCheckpoint());
  store->arm(CrashingStore::Step::kAfterState, 5);
  auto result = join_testing::runJoin(w, JoinType::kLeftOuter, store,
                                      std::make_shared<KafkaExchange>(exchangeOptions(realBroker(), 3)), /*overlap=*/true);
  EXPECT_EQ(result.rows, join_testing::oracle(w, JoinType::kLeftOuter));
  EXPECT_EQ(result.crashes, 1);
}

}  // namespace
}  // namespace dataflow::kafka
