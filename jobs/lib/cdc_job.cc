#include "cdc_job.h"

#include "cdc_tables.h"

#include <CLI/CLI.hpp>
#include <dataflow/postgres/checkpoint_store.h>
#include <oneapi/tbb/scalable_allocator.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <pthread.h>
#include <thread>

namespace cdc {

namespace {
std::atomic<int64_t> tombstones{0};

const CLI::Validator kNonNegative(
    [](std::string& value) -> std::string {
      return !value.empty() && value[0] == '-' ? "must be 0 or more, got " + value : std::string();
    },
    "NONNEGATIVE");
}

JobConfig JobConfig::fromArgs(int argc, char** argv, const JobDefaults& defaults) {
  JobConfig c;
  CLI::App app{defaults.program + ": Debezium change events from Kafka into the PostgreSQL warehouse.\n"
               "Every flag can also be set by the environment variable named in brackets; flags win."};
  app.get_formatter()->column_width(44);
  app.add_option("--query-name", c.queryName, "Query name (checkpoint and logs)")->envname("QUERY_NAME")->default_val(defaults.queryName);
  app.add_option("--source", c.source,
                 "Where change events come from: kafka (Debezium's topics) or postgres (the database's replication "
                 "stream, no Kafka or JVM)")
      ->envname("CDC_SOURCE")->default_val("kafka")->check(CLI::IsMember({"kafka", "postgres"}));
  app.add_option("--source-pg-url", c.sourcePgUrl, "--source=postgres: the source database (default: the warehouse's)")
      ->envname("SOURCE_PG_URL");
  app.add_option("--replication-slot", c.replicationSlot, "--source=postgres: the slot (default dataflow_<query name>)")
      ->envname("REPLICATION_SLOT");
  app.add_option("--publication", c.publication, "--source=postgres: the publication (default: the slot's name)")
      ->envname("PUBLICATION");
  app.add_option("--tables", c.tables, "--source=postgres: schema.table to capture (default: from the topics)")
      ->envname("CDC_TABLES")->delimiter(',');
  app.add_option("--topic-prefix", c.topicPrefix, "Debezium's topic.prefix: topics are <prefix>.<schema>.<table>")
      ->envname("TOPIC_PREFIX")->default_val("dbserver1");
  app.add_option("--kafka-bootstrap", c.kafkaBootstrap, "Kafka bootstrap servers")->envname("KAFKA_BOOTSTRAP")->default_val("kafka:9092");
  c.topics.resize(defaults.topics.size());
  for (size_t i = 0; i < defaults.topics.size(); ++i) {
    const auto& t = defaults.topics[i];
    app.add_option(t.flag, c.topics[i], "Debezium topic")->envname(t.environment)->default_val(t.defaultTopic);
  }
  if (!defaults.topicPattern.empty()) {
    app.add_option("--topic-pattern", c.topicPattern, "Regular expression of the topics to read")
        ->envname("CDC_TOPIC_PATTERN")->default_val(defaults.topicPattern);
  }
  app.add_option("--starting-offsets", c.startingOffsets,
                 "Where a new query starts: earliest (backfill: snapshot + history), latest, or Spark JSON")
      ->envname("STARTING_OFFSETS")->default_val("earliest");
  app.add_option("--max-offsets-per-trigger", c.maxOffsetsPerTrigger, "Records per batch at most (0: unlimited)")
      ->envname("MAX_OFFSETS_PER_TRIGGER")->default_val(30000)->check(kNonNegative);
  app.add_option("--max-bytes-per-trigger", c.maxBytesPerTrigger,
                 "Bytes of change events per batch at most (Kafka: keys and values, at the size of the records "
                 "read lately; 0: unlimited); bounds the job's memory whatever the events' size")
      ->envname("MAX_BYTES_PER_TRIGGER")->default_val(8 << 20)->check(kNonNegative);
  app.add_option("--max-record-bytes", c.maxRecordBytes,
                 "A change event over this many bytes goes to the DLQ (record_too_large) unparsed")
      ->envname("MAX_RECORD_BYTES")->default_val(1 << 20)->check(CLI::PositiveNumber);
  app.add_option("--trigger-interval-ms", c.triggerIntervalMs, "Batch interval (0: next batch as soon as possible)")
      ->envname("TRIGGER_INTERVAL_MS")->default_val(0)->check(kNonNegative);
  app.add_option("--idle-poll-ms", c.idlePollMs,
                 "While there is no new data, look for some this often (ms): the latency floor of a quiet stream")
      ->envname("IDLE_POLL_MS")->default_val(10)->check(CLI::Range(1, 60000));
  app.add_option("--checkpoint-dir", c.checkpointDir,
                 "Directory checkpoint root (at-least-once); unset: checkpoint in the warehouse (exactly-once)")
      ->envname("CHECKPOINT_DIR");
  app.add_option("--pg-url", c.pgUrl, "Warehouse connection URL (else PG_HOST, PG_PORT, PG_DB, PG_USER, PG_PASSWORD)")
      ->envname("PG_URL");
  app.add_option("--workers", c.workers, "Worker threads (0: one per core)")->envname("WORKERS")->default_val(0)->check(kNonNegative);
  app.add_option("--overlap-batches", c.overlapBatches,
                 "Read and parse the next batch while the warehouse writes the current one (more memory)")
      ->envname("OVERLAP_BATCHES")->default_val(true);
  app.add_option("--ramp-up-batches", c.rampUpBatches,
                 "The first N batches of a run take 1/2^N, ..., 1/2 of --max-offsets-per-trigger: a backlog's "
                 "first rows commit sooner and reading overlaps writing from the start (0: off)")
      ->envname("RAMP_UP_BATCHES")->default_val(3)->check(CLI::Range(0, 16));
  app.add_flag("--available-now", c.availableNow, "Process what is in the topics now, then exit (a backfill run)");
  app.add_option("--kafka-lag-group", c.commitOffsetsToGroup, "Commit processed offsets to this consumer group (lag tools)")
      ->envname("KAFKA_LAG_GROUP");
  app.add_option("--consumer-group", c.consumerGroup,
                 "Scale out: every process started with this group shares the topics' partitions (Kafka assigns "
                 "them); offsets stay per partition in the warehouse checkpoint")
      ->envname("CONSUMER_GROUP");
  app.add_option("--repartition", c.repartition,
                 "Where table jobs regroup rows by a key their topic is not partitioned by: kafka (an internal topic "
                 "per regrouping, so that scaled-out processes share the groups), none (one process keeps every "
                 "group), auto (kafka with --consumer-group, else none)")
      ->envname("REPARTITION")->default_val("auto")->check(CLI::IsMember({"auto", "kafka", "none"}));
  app.add_option("--metrics-port", c.metricsPort, "Serve /metrics, /healthz and /progress on this port (0: off)")
      ->envname("METRICS_PORT")->default_val(0)->check(CLI::Range(0, 65535));
  app.add_option("--metrics-host", c.metricsHost,
                 "Interface the metrics endpoints listen on (they have no authentication: 0.0.0.0 only where a container publishes them)")
      ->envname("METRICS_HOST")->default_val("127.0.0.1");
  app.add_option("--connect-url", c.connectUrl, "Kafka Connect REST URL: watch the connector's state")->envname("CONNECT_URL");
  app.add_option("--connector", c.connectorName, "Debezium connector to watch")->envname("CDC_CONNECTOR")->default_val("postgres-cdc");
  app.add_option("--slot", c.slotName, "Replication slot to watch")->envname("CDC_SLOT")->default_val("dataflow_cdc");
  app.add_option("--source-health-interval-ms", c.sourceHealthIntervalMs, "How often the source side is checked (0: never)")
      ->envname("SOURCE_HEALTH_INTERVAL_MS")->default_val(10000)->check(kNonNegative);
  app.add_option("--slot-lag-alert-bytes", c.slotLagAlertBytes, "Warn when the slot lags more than this and keeps growing")
      ->envname("SLOT_LAG_ALERT_BYTES")->default_val(int64_t{512} << 20)->check(kNonNegative);
  std::vector<std::string> kafkaOptions;
  app.add_option("--kafka-option", kafkaOptions, "librdkafka property key=value (TLS, SASL, ...); repeatable")
      ->envname("KAFKA_OPTIONS")->delimiter(',');
  std::string logLevel;
  app.add_option("--log-level", logLevel, "trace, debug, info, warn, error")->envname("LOG_LEVEL")->default_val("info")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    std::exit(app.exit(e) == 0 ? 0 : 2);
  }
  spdlog::set_level(spdlog::level::from_str(logLevel));
  for (const auto& kv : kafkaOptions) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << defaults.program << ": --kafka-option expects key=value, got '" << kv << "'\n";
      std::exit(2);
    }
    c.kafkaOptions[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  auto refuse = [&](const std::string& message) {
    std::cerr << defaults.program << ": " << message << "\n";
    std::exit(2);
  };
  if (!c.consumerGroup.empty() && !c.checkpointDir.empty()) {
    refuse("--consumer-group (CONSUMER_GROUP) needs the warehouse checkpoint, which keeps offsets per partition; "
           "unset --checkpoint-dir (CHECKPOINT_DIR)");
  }
  if (!c.consumerGroup.empty() && c.availableNow) {
    refuse("--available-now cannot be combined with --consumer-group (CONSUMER_GROUP): what is available depends on "
           "the group's assignment");
  }
  if (c.repartition == "auto") c.repartition = c.consumerGroup.empty() ? "none" : "kafka";
  if (c.source == "postgres") {
    if (!c.consumerGroup.empty()) {
      refuse("--consumer-group (CONSUMER_GROUP) needs --source=kafka: a replication slot has a single reader");
    }
    if (c.startingOffsets != "earliest" && c.startingOffsets != "latest") {
      refuse("--starting-offsets (STARTING_OFFSETS) with --source=postgres is earliest (snapshot, then changes) or "
             "latest (changes only), not '" + c.startingOffsets + "'");
    }
    if (c.replicationSlot.empty()) {
      c.replicationSlot = "dataflow_";
      for (char ch : c.queryName) {
        ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        c.replicationSlot += (std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_');
      }
      c.replicationSlot.resize(std::min<size_t>(c.replicationSlot.size(), 56));  // room for a suffix
    }
    // Unless set, the health watcher watches the job's own slot.
    if (std::getenv("CDC_SLOT") == nullptr && c.slotName == "dataflow_cdc") c.slotName = c.replicationSlot;
  }
  // Fail fast on settings the sources reject, naming them.
  try {
    if (c.source == "postgres") {
      replicationSourceOptions(c).validate();
    } else {
      kafkaSourceOptions(c).validate();
    }
  } catch (const dataflow::Error& e) {
    refuse(e.what());
  }
  return c;
}

void blockTerminationSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

dataflow::kafka::KafkaSourceOptions kafkaSourceOptions(const JobConfig& c) {
  dataflow::kafka::KafkaSourceOptions o;
  o.bootstrapServers = c.kafkaBootstrap;
  if (c.topicPattern.empty()) o.subscribe = c.topics;
  else o.subscribePattern = c.topicPattern;
  o.startingOffsets = c.startingOffsets;
  o.maxOffsetsPerTrigger = c.maxOffsetsPerTrigger;
  o.maxBytesPerTrigger = c.maxBytesPerTrigger;
  o.commitOffsetsToGroup = c.commitOffsetsToGroup;
  o.consumerGroup = c.consumerGroup;
  o.kafka = c.kafkaOptions;
  return o;
}

std::shared_ptr<dataflow::kafka::KafkaSource> kafkaSource(const JobConfig& c) {
  return std::make_shared<dataflow::kafka::KafkaSource>(kafkaSourceOptions(c));
}

dataflow::postgres::ReplicationSourceOptions replicationSourceOptions(const JobConfig& c,
                                                                      const std::vector<std::string>& topics,
                                                                      const std::string& slotSuffix) {
  dataflow::postgres::ReplicationSourceOptions o;
  o.connection = dataflow::postgres::ConnectionConfig::fromEnvironment();
  if (!c.pgUrl.empty()) o.connection.conninfo = c.pgUrl;
  if (!c.sourcePgUrl.empty()) o.connection.conninfo = c.sourcePgUrl;
  o.connection.applicationName = c.queryName + "-source";
  o.topicPrefix = c.topicPrefix;
  if (topics.empty()) o.tables = c.tables;
  if (o.tables.empty()) {
    const std::string prefix = c.topicPrefix + ".";
    for (const auto& topic : topics.empty() ? c.topics : topics) {
      if (!topic.starts_with(prefix) || topic.find('.', prefix.size()) == std::string::npos) {
        throw dataflow::ConfigurationError("--source=postgres: topic '" + topic + "' is not <prefix>.<schema>.<table> with prefix '" +
                                           c.topicPrefix + "' (set TOPIC_PREFIX, or the tables with CDC_TABLES)");
      }
      o.tables.push_back(topic.substr(prefix.size()));
    }
    if (o.tables.empty() && !c.topicPattern.empty()) o.tables = {"public.customers", "public.orders"};
  }
  o.slotName = c.replicationSlot + (slotSuffix.empty() ? "" : "_" + slotSuffix);
  o.publicationName = c.publication.empty() ? std::string() : c.publication + (slotSuffix.empty() ? "" : "_" + slotSuffix);
  o.snapshot = c.startingOffsets != "latest";
  // The jobs parse changes through debezium::TableMapping only: no JSON between pgoutput and the row.
  o.compactValues = true;
  o.maxRecordsPerBatch = c.maxOffsetsPerTrigger;
  o.maxBytesPerBatch = c.maxBytesPerTrigger;
  return o;
}

std::shared_ptr<ChangeSource> changeSource(const JobConfig& c, const std::vector<std::string>& topics,
                                           const std::string& slotSuffix) {
  if (c.source == "postgres") {
    return std::make_shared<dataflow::postgres::ReplicationSource>(replicationSourceOptions(c, topics, slotSuffix));
  }
  auto options = kafkaSourceOptions(c);
  if (!topics.empty()) {
    options.subscribe = topics;
    options.subscribePattern.clear();
  }
  return std::make_shared<dataflow::kafka::KafkaSource>(options);
}

dataflow::Trigger trigger(const JobConfig& c) {
  if (c.availableNow) return dataflow::Trigger::availableNow();
  return dataflow::Trigger::processingTime(std::chrono::milliseconds(c.triggerIntervalMs));
}

Warehouse openWarehouse(const JobConfig& c) {
  dataflow::postgres::ConnectionConfig pg = dataflow::postgres::ConnectionConfig::fromEnvironment();
  if (!c.pgUrl.empty()) pg.conninfo = c.pgUrl;
  pg.applicationName = c.queryName;
  Warehouse w;
  std::shared_ptr<dataflow::postgres::PostgresCheckpointStore> store;
  if (c.checkpointDir.empty()) {
    store = std::make_shared<dataflow::postgres::PostgresCheckpointStore>(
        dataflow::postgres::PostgresCheckpointOptions{.name = c.queryName, .connection = pg});
    w.checkpoint = store;
  } else {
    w.checkpoint = dataflow::directoryCheckpoint(std::filesystem::path(c.checkpointDir) / c.queryName);
  }
  w.writer = std::make_shared<dataflow::postgres::Warehouse>(dataflow::postgres::WarehouseOptions{.connection = pg}, store);
  spdlog::info("{}: warehouse {}, checkpoint {}", c.queryName, pg.describe(), w.checkpoint->describe());
  return w;
}

void Monitoring::serve(const JobConfig& config, const dataflow::StreamingQuery& query) {
  if (config.sourceHealthIntervalMs > 0) {
    SourceHealthOptions o;
    o.source = dataflow::postgres::ConnectionConfig::fromEnvironment();
    if (!config.pgUrl.empty()) o.source.conninfo = config.pgUrl;
    o.source.applicationName = config.queryName + "-source-health";
    o.slot = config.slotName;
    // The direct source has no connector to watch, only its slot.
    if (config.source == "kafka") o.connectUrl = config.connectUrl;
    o.connector = config.connectorName;
    o.interval = std::chrono::milliseconds(config.sourceHealthIntervalMs);
    o.lagAlertBytes = config.slotLagAlertBytes;
    sourceHealth = std::make_unique<SourceHealthWatcher>(o, metrics);
  }
  if (config.metricsPort == 0) return;
  server = std::make_unique<dataflow::monitoring::MonitoringServer>(
      *metrics, query, dataflow::monitoring::MonitoringServerOptions{.host = config.metricsHost, .port = config.metricsPort});
  spdlog::info("{}: metrics on {}:{}/metrics, /healthz, /progress", config.queryName, config.metricsHost, config.metricsPort);
}

void writeToWarehouse(Warehouse& warehouse, const dataflow::postgres::UpsertTable& table,
                      const dataflow::Batch<dataflow::postgres::UpsertRow>& batch, const dataflow::BatchInfo& info,
                      Monitoring& monitoring) {
  writeToWarehouse(warehouse, batch.deadLetters(), info, monitoring,
                   [&](dataflow::postgres::WarehouseTransaction& tx) { tx.upsert(table, batch); });
}

void writeToWarehouse(Warehouse& warehouse, std::span<const dataflow::DeadLetter> deadLetters,
                      const dataflow::BatchInfo& info, Monitoring& monitoring,
                      const std::function<void(dataflow::postgres::WarehouseTransaction&)>& upserts) {
  warehouse.writer->writeBatch(info, [&](dataflow::postgres::WarehouseTransaction& tx) {
    upserts(tx);
    tx.deadLetters(deadLetters, info);
  });
  monitoring.metrics->recordDeadLetters(deadLetters);
}

bool notTombstone(const dataflow::kafka::KafkaRecord& record) {
  if (record.hasValue) return true;
  tombstones.fetch_add(1, std::memory_order_relaxed);
  return false;
}

namespace {

class BatchLogger final : public dataflow::QueryListener {
 public:
  void onQueryProgress(const dataflow::QueryProgress& p) override {
    std::string lag = "?";
    for (const auto& s : p.sources) {
      for (const auto& [k, v] : s.metrics) {
        if (k == "maxOffsetsBehindLatest") lag = v;
      }
    }
    int64_t skipped = tombstones.exchange(0);
    // Where the time went: the phases of the batch, in the order they run.
    std::string phases;
    for (const char* phase : {"latestOffset", "walCommit", "read", "process", "copy", "stage", "merge", "deadLetters", "commit",
                              "commitOffsets"}) {
      if (auto it = p.durationMs.find(phase); it != p.durationMs.end()) {
        phases += std::string(phases.empty() ? "" : " ") + phase + "=" + std::to_string(it->second);
      }
    }
    spdlog::info("{} batch {}: {} rows in, {} written, {} dead letters, {} tombstones skipped, lag {}, {} ms ({})",
                 p.name, p.batchId, p.numInputRows, p.sink.numOutputRows, p.sink.numDeadLetters, skipped, lag,
                 p.durationMs.count("triggerExecution") ? p.durationMs.at("triggerExecution") : 0, phases);
    // The stateful jobs allocate with oneTBB's allocator (jobs/CMakeLists.txt), which keeps the
    // blocks a batch freed in per-thread caches: handed back after each batch, they do not add up
    // across the threads to the peak. Nothing to do where glibc allocates (the stateless jobs).
    scalable_allocation_command(TBBMALLOC_CLEAN_ALL_BUFFERS, nullptr);
  }
};

}  // namespace

std::shared_ptr<dataflow::QueryListener> batchLogger() { return std::make_shared<BatchLogger>(); }

int runUntilSignalled(dataflow::StreamingQuery& query) {
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    while (!done) {
      timespec timeout{0, 200'000'000};
      int sig = sigtimedwait(&set, nullptr, &timeout);
      if (sig == SIGINT || sig == SIGTERM) {
        spdlog::info("{}: received {}, stopping after the running batch", query.name(), sig == SIGINT ? "SIGINT" : "SIGTERM");
        query.stop();
        return;
      }
    }
  });
  int code = 0;
  try {
    query.awaitTermination();
  } catch (const dataflow::ConfigurationError& e) {
    spdlog::error("{}: configuration error: {}", query.name(), e.what());
    code = 2;
  } catch (const std::exception& e) {
    spdlog::error("{}: failed: {}", query.name(), e.what());
    code = 1;
  }
  done = true;
  waiter.join();
  return code;
}

std::shared_ptr<dataflow::Exchange> exchange(const JobConfig& c) {
  if (c.repartition != "kafka") return nullptr;
  dataflow::kafka::KafkaExchangeOptions o;
  o.bootstrapServers = c.kafkaBootstrap;
  if (!c.topics.empty()) o.partitionsLike = c.topics.front();
  else o.partitions = 1;
  o.consumerGroup = c.consumerGroup;
  o.maxOffsetsPerTrigger = c.maxOffsetsPerTrigger;
  o.kafka = c.kafkaOptions;
  return std::make_shared<dataflow::kafka::KafkaExchange>(std::move(o));
}

int64_t tableChangeVersion(const dataflow::PartitionId& partition, const dataflow::BatchInfo& info) {
  for (const auto& range : info.sources) {
    if (int64_t end = range.end.get(partition, -1); end >= 0) return end;
  }
  return info.batchId + 1;
}

Job::Job(JobConfig c)
    : config(std::move(c)), session({.workerThreads = config.workers}), warehouse(openWarehouse(config)) {}

int runJob(int argc, char** argv, const JobDefaults& defaults, const std::function<dataflow::StreamingQuery(Job&)>& start) {
  blockTerminationSignals();
  auto config = JobConfig::fromArgs(argc, argv, defaults);
  setMaxRecordBytes(static_cast<std::size_t>(config.maxRecordBytes));
  const std::string name = config.queryName;
  try {
    Job job(std::move(config));
    auto query = start(job);
    job.monitoring.serve(job.config, query);
    return runUntilSignalled(query);
  } catch (const dataflow::Error& e) {
    spdlog::error("{}: {}", name, e.what());
    return dynamic_cast<const dataflow::ConfigurationError*>(&e) ? 2 : 1;
  }
}

}  // namespace cdc
