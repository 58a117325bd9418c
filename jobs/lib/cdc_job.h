// What every CDC job shares: its settings (environment variables as in the original pipeline,
// overridden by flags; --help lists them all), the Kafka source, the warehouse with its
// exactly-once checkpoint store, per-batch logging, and graceful shutdown on SIGTERM/SIGINT.
#pragma once

#include <dataflow/dataflow.h>
#include <dataflow/kafka/kafka_exchange.h>
#include <dataflow/kafka/kafka_source.h>
#include <dataflow/monitoring/query_metrics.h>
#include <dataflow/postgres/replication_source.h>

#include "lib/source_health.h"
#include <dataflow/postgres/warehouse.h>

#include <functional>
#include <map>
#include <span>
#include <memory>
#include <string>
#include <vector>

namespace cdc {

// A topic setting of a job: the environment variable and the default.
struct TopicSetting {
  std::string flag;         // "--topic"
  std::string environment;  // "CUSTOMERS_TOPIC"
  std::string defaultTopic; // "dbserver1.public.customers"
};

struct JobDefaults {
  std::string program;      // for --help
  std::string queryName;    // "customers-cdc-warehouse"
  std::vector<TopicSetting> topics;
  // Multi-table jobs subscribe by pattern instead (environment CDC_TOPIC_PATTERN).
  std::string topicPattern;
};

struct JobConfig {
  std::string queryName;
  std::string source;                     // CDC_SOURCE: kafka (Debezium's topics, default) or postgres (the replication stream)
  std::string sourcePgUrl;                // SOURCE_PG_URL: the source database for --source=postgres; default: the warehouse's
  std::string replicationSlot;            // REPLICATION_SLOT, default dataflow_<query name>
  std::string publication;                // PUBLICATION, default: the slot's name
  std::vector<std::string> tables;        // CDC_TABLES: schema.table to capture; default: from the topics
  std::string topicPrefix;                // TOPIC_PREFIX, default dbserver1 (Debezium's topic.prefix)
  std::string kafkaBootstrap;             // KAFKA_BOOTSTRAP, default kafka:9092
  std::vector<std::string> topics;
  std::string topicPattern;
  std::string startingOffsets;            // STARTING_OFFSETS, default earliest (backfill)
  int64_t maxOffsetsPerTrigger = 0;       // MAX_OFFSETS_PER_TRIGGER, default 30000 (measured: bench/README.md)
  int64_t maxBytesPerTrigger = 0;         // MAX_BYTES_PER_TRIGGER, default 8 MiB (the memory budget: README)
  int64_t maxRecordBytes = 0;             // MAX_RECORD_BYTES, default 1 MiB: larger events are dead letters
  int64_t triggerIntervalMs = 0;          // TRIGGER_INTERVAL_MS, default 0 (as soon as possible)
  int64_t idlePollMs = 10;                // IDLE_POLL_MS: how often an idle query looks for new data
  std::string checkpointDir;              // CHECKPOINT_DIR; empty: the PostgreSQL store
  std::string pgUrl;                      // PG_URL (else PG_HOST, PG_PORT, PG_DB, PG_USER, PG_PASSWORD[_FILE])
  int workers = 0;                        // WORKERS, default 0 = one per core
  bool overlapBatches = true;             // OVERLAP_BATCHES: read the next batch while one is written
  int rampUpBatches = 3;                  // RAMP_UP_BATCHES: the first ones of a run are smaller
  bool availableNow = false;              // --available-now: drain what exists, then exit
  std::string commitOffsetsToGroup;       // KAFKA_LAG_GROUP: expose lag to a consumer group
  std::string consumerGroup;              // CONSUMER_GROUP: scale out; processes of the job share the partitions
  std::string repartition;                // REPARTITION: auto (kafka when scaled out), kafka or none: where table jobs regroup rows
  int metricsPort = 0;                    // METRICS_PORT: /metrics, /healthz, /progress; 0 = off
  std::string metricsHost = "127.0.0.1";  // METRICS_HOST: the interface they listen on
  std::string connectUrl;                 // CONNECT_URL: watch the Debezium connector's state
  std::string connectorName;              // CDC_CONNECTOR, default postgres-cdc
  std::string slotName;                   // CDC_SLOT, default dataflow_cdc
  int64_t sourceHealthIntervalMs = 10000; // SOURCE_HEALTH_INTERVAL_MS; 0 = off
  int64_t slotLagAlertBytes = 0;          // SLOT_LAG_ALERT_BYTES, default 512 MiB
  std::map<std::string, std::string> kafkaOptions;  // --kafka-option key=value (librdkafka)

  // Parses flags over environment variables. Prints help and exits 0 for --help; prints an error
  // naming the bad flag or variable and exits 2 otherwise.
  static JobConfig fromArgs(int argc, char** argv, const JobDefaults& defaults);
};

// Call first in main(): blocks SIGINT and SIGTERM in every thread started later, so that
// runUntilSignalled() receives them.
void blockTerminationSignals();

// The Kafka source the settings describe (also validated by JobConfig::fromArgs).
dataflow::kafka::KafkaSourceOptions kafkaSourceOptions(const JobConfig& config);
std::shared_ptr<dataflow::kafka::KafkaSource> kafkaSource(const JobConfig& config);

// The direct PostgreSQL source the settings describe, for `topics` (default: the job's): the
// tables are the topics' "<schema>.<table>" after the prefix, or CDC_TABLES. A job with several
// sources gives each a `slotSuffix`: a replication slot has one reader.
dataflow::postgres::ReplicationSourceOptions replicationSourceOptions(const JobConfig& config,
                                                                      const std::vector<std::string>& topics = {},
                                                                      const std::string& slotSuffix = "");

// The job's change events from the configured source (CDC_SOURCE): Debezium's topics in Kafka, or
// PostgreSQL's replication stream read directly; the records are alike (dataflow/record.h).
using ChangeSource = dataflow::TypedSource<dataflow::LogRecord>;
std::shared_ptr<ChangeSource> changeSource(const JobConfig& config, const std::vector<std::string>& topics = {},
                                           const std::string& slotSuffix = "");
dataflow::Trigger trigger(const JobConfig& config);
// Where table aggregations regroup their rows (REPARTITION): an internal Kafka topic per
// regrouping, read in the job's consumer group when it is scaled out; null for none.
std::shared_ptr<dataflow::Exchange> exchange(const JobConfig& config);

struct Warehouse {
  std::shared_ptr<dataflow::CheckpointStore> checkpoint;
  std::shared_ptr<dataflow::postgres::Warehouse> writer;
};
// With CHECKPOINT_DIR, a directory checkpoint (at-least-once; the LSN guard and the DLQ's unique
// key make replays harmless). Otherwise the checkpoint lives in the warehouse and every batch
// commits with its rows (exactly-once).
Warehouse openWarehouse(const JobConfig& config);

// Prometheus metrics of the query and, with METRICS_PORT, their HTTP endpoint.
// Also watches the source side (slot lag, connector state) unless SOURCE_HEALTH_INTERVAL_MS=0.
struct Monitoring {
  std::shared_ptr<dataflow::monitoring::QueryMetrics> metrics = std::make_shared<dataflow::monitoring::QueryMetrics>();
  std::unique_ptr<SourceHealthWatcher> sourceHealth;
  std::unique_ptr<dataflow::monitoring::MonitoringServer> server;
  void serve(const JobConfig& config, const dataflow::StreamingQuery& query);
};

// Writes a batch in one transaction: its rows into `table` (newest change per key, under the LSN
// guard), its dead letters into dlq_events, and its checkpoint commit; then counts the dead letters.
void writeToWarehouse(Warehouse& warehouse, const dataflow::postgres::UpsertTable& table,
                      const dataflow::Batch<dataflow::postgres::UpsertRow>& batch, const dataflow::BatchInfo& info,
                      Monitoring& monitoring);
// The same for any upserts (several tables): `upserts` runs inside the batch's transaction.
void writeToWarehouse(Warehouse& warehouse, std::span<const dataflow::DeadLetter> deadLetters,
                      const dataflow::BatchInfo& info, Monitoring& monitoring,
                      const std::function<void(dataflow::postgres::WarehouseTransaction&)>& upserts);

// The version of a table's changes in output partition `partition` of a batch, for the warehouse's
// per-key guard: a newer change must carry a greater version. Behind an exchange a group lives in
// one exchange partition, whose owner may change (scale-out): the partition's end offset in the
// batch grows whoever reads it. Otherwise one process writes every group: batch id + 1.
int64_t tableChangeVersion(const dataflow::PartitionId& partition, const dataflow::BatchInfo& info);

// Writes a table's changes (dataflow::TableChange, table.h) into `table`: toRow(change, version)
// gives each change's upsert or soft delete, versioned by the change's own version where it has
// one (a join behind an exchange), else by tableChangeVersion, written with the batch's dead
// letters and commit in one transaction.
template <class K, class V, class ToRow>
void writeTableChanges(Warehouse& warehouse, const dataflow::postgres::UpsertTable& table,
                       const dataflow::Batch<dataflow::TableChange<K, V>>& batch, const dataflow::BatchInfo& info,
                       Monitoring& monitoring, ToRow toRow) {
  std::vector<dataflow::postgres::UpsertRow> rows;
  for (const auto& part : batch.partitions()) {
    const int64_t version = tableChangeVersion(part.id, info);
    for (const auto& c : part.rows) rows.push_back(toRow(c, c.version != 0 ? c.version : version));
  }
  writeToWarehouse(warehouse, batch.deadLetters(), info, monitoring,
                   [&](dataflow::postgres::WarehouseTransaction& tx) { tx.upsert(table, rows); });
}

// Counts Debezium tombstones (null values after deletes): they are skipped, never dead letters.
bool notTombstone(const dataflow::kafka::KafkaRecord& record);

// Logs one line per batch: rows in, rows written, dead letters, tombstones skipped, lag.
std::shared_ptr<dataflow::QueryListener> batchLogger();

// Waits for SIGINT/SIGTERM (then stops the query gracefully) or for the query to end.
// Returns the process exit code: 0 after a graceful stop or a finished --available-now run.
int runUntilSignalled(dataflow::StreamingQuery& query);

// What a running job has: its settings, session, warehouse (with the checkpoint) and monitoring.
struct Job {
  explicit Job(JobConfig c);
  JobConfig config;
  dataflow::Session session;
  Warehouse warehouse;
  Monitoring monitoring;

  // stream.writeStream() with the job's query name, trigger, batch overlap, checkpoint, batch log
  // and metrics: what remains is the sink.
  template <class S>
  auto writer(const S& stream) {
    auto w = stream.writeStream();
    w.queryName(config.queryName)
        .trigger(trigger(config))
        .overlapBatches(config.overlapBatches)
        .rampUpBatches(config.rampUpBatches)
        .option("idlePollIntervalMs", std::to_string(config.idlePollMs))
        .checkpoint(warehouse.checkpoint)
        .exchange(exchange(config))
        .addListener(batchLogger())
        .addListener(monitoring.metrics);
    return w;
  }
};

// A job's main(): blocks termination signals, reads the settings (a bad one exits 2, named),
// opens the job, lets `start` build and start its query, serves the metrics and runs until
// SIGTERM/SIGINT. A framework error is logged and exits 2 for bad configuration, else 1.
int runJob(int argc, char** argv, const JobDefaults& defaults,
           const std::function<dataflow::StreamingQuery(Job&)>& start);

}  // namespace cdc
