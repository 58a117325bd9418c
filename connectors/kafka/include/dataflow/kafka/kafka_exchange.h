// An exchange (dataflow/exchange.h) over Kafka: each channel is an internal topic, named after the
// query and the regrouping as Kafka Streams names its repartition topics, written by the
// idempotent producer and read back by a KafkaSource. Scaled out, the topic's partitions are
// shared among the query's instances by a consumer group of their own.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "dataflow/exchange.h"

namespace dataflow::kafka {

struct KafkaExchangeOptions {
  // Required: "host:port,...".
  std::string bootstrapServers;
  // Partitions of a topic this exchange creates: the most instances that share the regrouped
  // state. 0: as many as `partitionsLike` has (Kafka Streams sizes its repartition topics by the
  // source topic), or 1 without it. A topic that exists keeps its partitions: rows are routed by
  // their number, so it is never resized. Default: 0.
  int32_t partitions = 0;
  std::string partitionsLike;
  // Replication factor of a topic this exchange creates; -1: the broker's default. Default: -1.
  int16_t replicationFactor = -1;
  // Scale-out: the topics are read in this consumer group (each channel in "<group>.<topic>"), as
  // the query's source is in its own group. Empty: this process reads every partition.
  std::string consumerGroup;
  // Records per batch read back over all partitions; 0: unlimited. Default: 0.
  int64_t maxOffsetsPerTrigger = 0;
  // How long a flush may take before the batch attempt fails (retriably). Default: 60 s.
  std::chrono::milliseconds flushTimeout{60000};
  // librdkafka properties for the producer, the admin requests and the reader (security.protocol,
  // sasl.*, ssl.*).
  std::map<std::string, std::string> kafka;
};

class KafkaExchange final : public Exchange {
 public:
  explicit KafkaExchange(KafkaExchangeOptions options);
  ~KafkaExchange() override;

  // Creates the topic `name` when missing (with `partitions` partitions and infinite retention:
  // what the query has not committed must not expire), then returns its channel. `name` must be a
  // legal topic name (letters, digits, '.', '_', '-'); a query name with other characters is
  // refused, naming it.
  std::shared_ptr<ExchangeChannel> channel(const std::string& name) override;
  std::string description() const override;

  struct Impl;  // shared with its channels

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace dataflow::kafka
