// Reads Kafka topics as a replayable, partitioned source, with the options of Spark's Kafka
// source. This library is the only one that links librdkafka.
//
// Offsets live in the query's checkpoint, never in a consumer group: each batch reads exactly its
// planned range [from, until) of every partition, so a replay after a restart reads the same
// records. Optionally, committed batches are also committed to a consumer group so that standard
// lag tools (kafka-consumer-groups, Burrow) see the job's lag.
//
// Scale-out (option consumerGroup): several processes of one query join a consumer group and
// Kafka's group protocol (cooperative-sticky by default) decides which partitions each reads. The
// group member only follows the assignment, paused: records are still read by the per-partition
// readers, from the offsets the query's checkpoint keeps per partition, never from the group's.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/record.h"
#include "dataflow/sink.h"
#include "dataflow/source.h"

namespace dataflow::kafka {

// One Kafka record (dataflow/record.h).
using KafkaRecord = dataflow::LogRecord;
using TimestampType = dataflow::TimestampType;

struct KafkaSourceOptions {
  // Required: "host:port,...". Option "kafka.bootstrap.servers".
  std::string bootstrapServers;
  // Exactly one of subscribe, subscribePattern and assign.
  // Topics to read. Option "subscribe" (comma-separated).
  std::vector<std::string> subscribe;
  // A regular expression (ECMAScript); topics and partitions that appear later are picked up.
  // Option "subscribePattern".
  std::string subscribePattern;
  // Explicit partitions. Option "assign" (Spark's JSON: {"topic":[0,1]}).
  std::vector<PartitionId> assign;
  // Where a new query starts: "earliest", "latest" or per-partition JSON
  // ({"topic":{"0":23,"1":-2}}, -2 = earliest, -1 = latest). Ignored when resuming from a
  // checkpoint. Option "startingOffsets". Default: "latest" (Spark's default for streams).
  std::string startingOffsets = "latest";
  // Records per batch over all partitions; 0: unlimited. Option "maxOffsetsPerTrigger".
  int64_t maxOffsetsPerTrigger = 0;
  // Bytes of keys and values per batch, at the size of the records read lately (a batch is
  // planned before it is read; see RecordSizeEstimate); 0: unlimited. With maxOffsetsPerTrigger,
  // whichever is reached first. Bounds the memory a batch takes when records are large.
  // Option "maxBytesPerTrigger".
  int64_t maxBytesPerTrigger = 0;
  // When planned offsets are gone (retention): true fails the query with a clear error; false
  // logs it and continues from the earliest available offset. Option "failOnDataLoss".
  bool failOnDataLoss = true;
  // If set, offsets of committed batches are committed to this consumer group (lag monitoring
  // only: the job never reads them back). Option "commitOffsetsToGroup".
  std::string commitOffsetsToGroup;
  // Scale-out: join this consumer group; Kafka assigns this process its share of the partitions.
  // Needs a checkpoint store that keeps offsets per partition (the PostgreSQL store). Processed
  // offsets are also committed to the group, for lag tools. Session and rebalance settings go
  // through kafka.* (kafka.session.timeout.ms, kafka.partition.assignment.strategy). Not with
  // assign. Option "consumerGroup".
  std::string consumerGroup;
  // How long a read waits for records it knows exist before failing (retriably).
  // Option "kafkaConsumer.pollTimeoutMs". Default: 120 s.
  std::chrono::milliseconds pollTimeout{120000};
  // How long metadata (topics, partitions) is cached. Option "partitionDiscoveryIntervalMs".
  // Default: 1 s.
  std::chrono::milliseconds partitionDiscoveryInterval{1000};
  // Timeout of metadata and watermark requests. Default: 10 s.
  std::chrono::milliseconds requestTimeout{10000};
  // Copy each record's headers into KafkaRecord::headers. Off by default, as in Spark: Debezium
  // adds four headers per record, which would cost memory and time for nothing.
  // Option "includeHeaders". Default: false.
  bool includeHeaders = false;
  // librdkafka properties (security.protocol, sasl.*, ssl.*, ...). Options "kafka.<name>".
  // group.id, enable.auto.commit and auto.offset.reset are rejected: offsets are ours.
  std::map<std::string, std::string> kafka;
  // The query writes these topics itself (an exchange's, KafkaExchange): Trigger.AvailableNow
  // reads them to their end as they grow (Source::fedByQuery). Default: false.
  bool fedByQuery = false;
  // After a batch commits, the records before its end offsets are deleted from the topics
  // (DeleteRecords, asynchronous, at most once per deleteInterval): for topics no one else reads,
  // such as an exchange's, which would otherwise grow forever. Default: false.
  bool deleteCommittedRecords = false;
  std::chrono::milliseconds deleteInterval{1000};

  // Sets an option by Spark's key; throws ConfigurationError naming a bad key or value.
  void set(const std::string& key, const std::string& value);
  // Throws ConfigurationError naming what is wrong.
  void validate() const;
};

class KafkaSource final : public TypedSource<KafkaRecord> {
 public:
  explicit KafkaSource(KafkaSourceOptions options);
  ~KafkaSource() override;

  std::string description() const override;
  void open() override;
  void close() override;
  // A read waiting for records, or a metadata request waiting for the broker, throws ReadInterrupted
  // within one poll (10 ms) or one request slice (1 s).
  void interrupt() override;
  Offsets initialOffsets() override;
  Offsets latestOffsets() override;
  int64_t startOfNewPartition(const PartitionId& partition) override;
  std::optional<int64_t> maxRecordsPerBatch() const override;
  void read(const PartitionId& partition, int64_t from, int64_t until, std::vector<KafkaRecord>& out) override;
  void onBatchCommitted(const Offsets& end) override;
  bool isCoordinated() const override;
  bool fedByQuery() const override;
  void onPartitionsFenced(const std::vector<PartitionId>& partitions) override;
  // minOffsetsBehindLatest, maxOffsetsBehindLatest, avgOffsetsBehindLatest, and with a consumer
  // group assignedPartitions.
  SourceMetrics metrics(const Offsets& end, const Offsets& latest) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Records to write to Kafka. `topic` empty means the sink's default topic.
struct ProducerRecord {
  std::string topic;
  std::optional<std::string> key;
  std::optional<std::string> value;
  std::vector<std::pair<std::string, std::string>> headers;
};

struct KafkaSinkOptions {
  std::string bootstrapServers;  // required
  std::string topic;             // default topic
  // How long a batch may take to be acknowledged before the attempt fails (retriably).
  std::chrono::milliseconds flushTimeout{60000};
  std::map<std::string, std::string> kafka;  // librdkafka producer properties
};

// Writes records with the idempotent producer and waits for every acknowledgement before the
// batch may commit (at-least-once). Usable as a dead-letter topic.
class KafkaSink final : public Sink<ProducerRecord> {
 public:
  explicit KafkaSink(KafkaSinkOptions options);
  ~KafkaSink() override;
  std::string description() const override;
  void addBatch(const Batch<ProducerRecord>& batch, const BatchInfo& info) override;
  // Produces and flushes records directly (e.g. from a dead-letter handler).
  void write(const std::vector<ProducerRecord>& records);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dataflow::kafka
