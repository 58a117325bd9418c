// Metrics through prometheus-cpp (core: types, registry, text serializer); HTTP through
// cpp-httplib, so that /healthz and /progress sit beside /metrics on one port.
#include "dataflow/monitoring/query_metrics.h"

#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <boost/json.hpp>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include <cstdio>
#include <ctime>

#include "dataflow/error.h"

namespace dataflow::monitoring {
namespace {

// Seconds since the epoch of an ISO-8601 UTC timestamp as progress records write them
// ("2026-11-30T14:05:35.123Z"); 0 when it does not parse.
double isoSeconds(const std::string& iso) {
  std::tm tm{};
  int ms = 0;
  if (std::sscanf(iso.c_str(), "%d-%d-%dT%d:%d:%d.%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
                  &tm.tm_sec, &ms) < 6) {
    return 0;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<double>(timegm(&tm)) + ms / 1000.0;
}

}  // namespace


struct QueryMetrics::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& inputRows = prometheus::BuildCounter()
      .Name("dataflow_input_rows_total").Help("Records read from the sources").Register(*registry);
  prometheus::Family<prometheus::Counter>& outputRows = prometheus::BuildCounter()
      .Name("dataflow_output_rows_total").Help("Rows handed to the sink").Register(*registry);
  prometheus::Family<prometheus::Counter>& batches = prometheus::BuildCounter()
      .Name("dataflow_batches_total").Help("Committed micro-batches").Register(*registry);
  prometheus::Family<prometheus::Counter>& deadLetters = prometheus::BuildCounter()
      .Name("dataflow_dead_letters_total").Help("Records sent to the dead-letter sink, by error kind").Register(*registry);
  prometheus::Family<prometheus::Histogram>& batchSeconds = prometheus::BuildHistogram()
      .Name("dataflow_batch_duration_seconds").Help("Trigger execution time per batch").Register(*registry);
  prometheus::Family<prometheus::Histogram>& commitSeconds = prometheus::BuildHistogram()
      .Name("dataflow_checkpoint_commit_seconds").Help("Time to write the commit log per batch").Register(*registry);
  prometheus::Family<prometheus::Histogram>& phaseSeconds = prometheus::BuildHistogram()
      .Name("dataflow_batch_phase_seconds")
      .Help("Where a batch's time goes, by phase: the progress record's durationMs (latestOffset, walCommit, read, "
            "process, addBatch and the sink's own phases such as stage, merge, commit; commitOffsets, triggerExecution)")
      .Register(*registry);
  prometheus::Family<prometheus::Gauge>& behind = prometheus::BuildGauge()
      .Name("dataflow_offsets_behind_latest").Help("Records not yet processed (min, max, avg over partitions)").Register(*registry);
  prometheus::Family<prometheus::Gauge>& partitionBehind = prometheus::BuildGauge()
      .Name("dataflow_partition_offsets_behind_latest").Help("Records not yet processed, per source partition").Register(*registry);
  prometheus::Family<prometheus::Gauge>& assignedPartitions = prometheus::BuildGauge()
      .Name("dataflow_assigned_partitions").Help("Partitions the consumer group assigned to this process (scale-out)").Register(*registry);
  // The per-partition gauges last set: a partition that moved to another process is removed.
  std::map<std::string, prometheus::Gauge*> partitionGauges;
  prometheus::Family<prometheus::Gauge>& restarts = prometheus::BuildGauge()
      .Name("dataflow_job_restarts").Help("Times the supervisor restarted this job after a failure").Register(*registry);
  prometheus::Family<prometheus::Gauge>& lastBatch = prometheus::BuildGauge()
      .Name("dataflow_last_batch_id").Help("Id of the last committed batch").Register(*registry);
  prometheus::Family<prometheus::Gauge>& active = prometheus::BuildGauge()
      .Name("dataflow_query_active").Help("1 while the query runs").Register(*registry);
  prometheus::Family<prometheus::Gauge>& startTime = prometheus::BuildGauge()
      .Name("dataflow_query_start_time_seconds").Help("When this run started (resets() counts restarts)").Register(*registry);
  prometheus::Family<prometheus::Gauge>& slotLag = prometheus::BuildGauge()
      .Name("dataflow_source_slot_lag_bytes").Help("WAL not yet confirmed by the replication slot (-1: no slot)").Register(*registry);
  prometheus::Family<prometheus::Gauge>& slotActive = prometheus::BuildGauge()
      .Name("dataflow_source_slot_active").Help("1 while a consumer (Debezium) holds the slot").Register(*registry);
  prometheus::Family<prometheus::Gauge>& connectorRunning = prometheus::BuildGauge()
      .Name("dataflow_source_connector_running").Help("1 when the connector and all its tasks are RUNNING").Register(*registry);
  prometheus::Family<prometheus::Gauge>& failedTasks = prometheus::BuildGauge()
      .Name("dataflow_source_connector_failed_tasks").Help("Connector tasks in state FAILED").Register(*registry);
  prometheus::Family<prometheus::Gauge>& stateRows = prometheus::BuildGauge()
      .Name("dataflow_state_rows").Help("Keys in the state of a stateful operator").Register(*registry);
  prometheus::Family<prometheus::Gauge>& stateMemory = prometheus::BuildGauge()
      .Name("dataflow_state_memory_bytes").Help("Memory of a stateful operator's state (estimate)").Register(*registry);
  prometheus::Family<prometheus::Counter>& stateUpdated = prometheus::BuildCounter()
      .Name("dataflow_state_rows_updated_total").Help("Keys written by batches, per stateful operator").Register(*registry);
  prometheus::Family<prometheus::Counter>& stateRemoved = prometheus::BuildCounter()
      .Name("dataflow_state_rows_removed_total").Help("Keys removed (evicted by the watermark, expired)").Register(*registry);
  prometheus::Family<prometheus::Counter>& droppedLate = prometheus::BuildCounter()
      .Name("dataflow_rows_dropped_by_watermark_total").Help("Input rows dropped as late, per stateful operator").Register(*registry);
  prometheus::Family<prometheus::Gauge>& stateCommit = prometheus::BuildGauge()
      .Name("dataflow_state_commit_seconds").Help("Time to encode and write the last batch's state changes").Register(*registry);
  prometheus::Family<prometheus::Gauge>& watermark = prometheus::BuildGauge()
      .Name("dataflow_watermark_seconds").Help("The event-time watermark of the last batch (seconds since the epoch)").Register(*registry);
  std::optional<SourceHealth> health;
  std::mutex mu;
  std::string name = "unnamed";
  std::deque<DeadLetter> recent;  // without payloads

  static prometheus::Histogram::BucketBoundaries buckets() {
    return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  }
};

QueryMetrics::QueryMetrics() : impl_(std::make_unique<Impl>()) {}
QueryMetrics::~QueryMetrics() = default;

void QueryMetrics::onQueryStarted(const Started& event) {
  std::lock_guard lock(impl_->mu);
  if (!event.name.empty()) impl_->name = event.name;
  impl_->active.Add({{"query", impl_->name}}).Set(1);
  // Set by the supervisor (dataflow supervise) for the processes it starts.
  const char* restarts = std::getenv("DATAFLOW_RESTARTS");
  impl_->restarts.Add({{"query", impl_->name}}).Set(restarts ? std::atof(restarts) : 0);
  impl_->startTime.Add({{"query", impl_->name}})
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
}

void QueryMetrics::onQueryTerminated(const Terminated&) {
  std::lock_guard lock(impl_->mu);
  impl_->active.Add({{"query", impl_->name}}).Set(0);
}

void QueryMetrics::onQueryProgress(const QueryProgress& p) {
  std::lock_guard lock(impl_->mu);
  const prometheus::Labels query{{"query", impl_->name}};
  impl_->inputRows.Add(query).Increment(static_cast<double>(p.numInputRows));
  impl_->outputRows.Add(query).Increment(static_cast<double>(p.sink.numOutputRows));
  impl_->batches.Add(query).Increment();
  impl_->lastBatch.Add(query).Set(static_cast<double>(p.batchId));
  if (auto it = p.durationMs.find("triggerExecution"); it != p.durationMs.end()) {
    impl_->batchSeconds.Add(query, Impl::buckets()).Observe(it->second / 1000.0);
  }
  for (const auto& [phase, ms] : p.durationMs) {
    impl_->phaseSeconds.Add({{"query", impl_->name}, {"phase", phase}}, Impl::buckets()).Observe(ms / 1000.0);
  }
  if (auto it = p.durationMs.find("commitOffsets"); it != p.durationMs.end()) {
    impl_->commitSeconds.Add(query, Impl::buckets()).Observe(it->second / 1000.0);
  }
  for (size_t i = 0; i < p.stateOperators.size(); ++i) {
    const auto& op = p.stateOperators[i];
    const prometheus::Labels labels{{"query", impl_->name}, {"operator", std::to_string(i) + ":" + op.operatorName}};
    impl_->stateRows.Add(labels).Set(static_cast<double>(op.numRowsTotal));
    impl_->stateMemory.Add(labels).Set(static_cast<double>(op.memoryUsedBytes));
    impl_->stateUpdated.Add(labels).Increment(static_cast<double>(op.numRowsUpdated));
    impl_->stateRemoved.Add(labels).Increment(static_cast<double>(op.numRowsRemoved));
    impl_->droppedLate.Add(labels).Increment(static_cast<double>(op.numRowsDroppedByWatermark));
    impl_->stateCommit.Add(labels).Set(op.commitTimeMs / 1000.0);
  }
  if (auto it = p.eventTime.find("watermark"); it != p.eventTime.end()) {
    impl_->watermark.Add(query).Set(isoSeconds(it->second));
  }
  std::map<std::string, prometheus::Gauge*> partitionGauges;
  for (const auto& source : p.sources) {
    for (const auto& [key, value] : source.metrics) {
      if (key.starts_with("offsetsBehindLatest.")) {
        auto& gauge = impl_->partitionBehind.Add({{"query", impl_->name}, {"partition", key.substr(20)}});
        gauge.Set(std::stod(value));
        partitionGauges[key.substr(20)] = &gauge;
        continue;
      }
      if (key == "assignedPartitions") {
        impl_->assignedPartitions.Add(query).Set(std::stod(value));
        continue;
      }
      std::string stat = key == "minOffsetsBehindLatest" ? "min" : key == "maxOffsetsBehindLatest" ? "max"
                       : key == "avgOffsetsBehindLatest" ? "avg" : "";
      if (stat.empty()) continue;
      impl_->behind.Add({{"query", impl_->name}, {"source", source.description}, {"stat", stat}}).Set(std::stod(value));
    }
  }
  for (const auto& [partition, gauge] : impl_->partitionGauges) {
    if (!partitionGauges.contains(partition)) impl_->partitionBehind.Remove(gauge);
  }
  impl_->partitionGauges = std::move(partitionGauges);
}

void QueryMetrics::recordDeadLetters(std::span<const DeadLetter> letters) {
  if (letters.empty()) return;
  std::lock_guard lock(impl_->mu);
  for (const auto& d : letters) {
    impl_->deadLetters.Add({{"query", impl_->name}, {"kind", d.errorKind}}).Increment();
    DeadLetter brief{.topic = d.topic, .partition = d.partition, .offset = d.offset,
                     .errorKind = d.errorKind, .errorMessage = d.errorMessage.substr(0, 300)};
    impl_->recent.push_back(std::move(brief));
    if (impl_->recent.size() > 20) impl_->recent.pop_front();
  }
}

void QueryMetrics::recordSourceHealth(const SourceHealth& h) {
  std::lock_guard lock(impl_->mu);
  if (!h.slot.empty()) {
    impl_->slotLag.Add({{"slot", h.slot}}).Set(static_cast<double>(h.slotLagBytes));
    impl_->slotActive.Add({{"slot", h.slot}}).Set(h.slotActive ? 1 : 0);
  }
  if (!h.connector.empty()) {
    impl_->connectorRunning.Add({{"connector", h.connector}}).Set(h.connectorState == "RUNNING" && h.failedTasks == 0 ? 1 : 0);
    impl_->failedTasks.Add({{"connector", h.connector}}).Set(h.failedTasks);
  }
  impl_->health = h;
}

std::string QueryMetrics::sourceHealthJson() const {
  std::lock_guard lock(impl_->mu);
  if (!impl_->health) return "{}";
  const auto& h = *impl_->health;
  return boost::json::serialize(boost::json::object{{"slot", h.slot}, {"slotLagBytes", h.slotLagBytes}, {"slotActive", h.slotActive},
                                                    {"connector", h.connector}, {"connectorState", h.connectorState},
                                                    {"failedTasks", h.failedTasks}});
}

std::string QueryMetrics::recentDeadLettersJson() const {
  std::lock_guard lock(impl_->mu);
  boost::json::array out;
  for (const auto& d : impl_->recent) {
    out.push_back(boost::json::object{{"topic", d.topic}, {"partition", d.partition}, {"offset", d.offset},
                                      {"kind", d.errorKind}, {"message", d.errorMessage}});
  }
  return boost::json::serialize(out);
}

std::string QueryMetrics::scrape() const {
  std::lock_guard lock(impl_->mu);
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

struct MonitoringServer::Impl {
  httplib::Server server;
  std::thread thread;
};

MonitoringServer::MonitoringServer(const QueryMetrics& metrics, const StreamingQuery& query, MonitoringServerOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (options.port == 0) return;
  if (options.port < 0 || options.port > 65535) {
    throw ConfigurationError("metrics port " + std::to_string(options.port) + " is not a port number");
  }
  auto& s = impl_->server;
  s.Get("/metrics", [&metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.scrape(), "text/plain; version=0.0.4");
  });
  s.Get("/healthz", [&query](const httplib::Request&, httplib::Response& res) {
    bool up = query.isActive();
    res.status = up ? 200 : 503;
    res.set_content(up ? "ok\n" : "query not active\n", "text/plain");
  });
  s.Get("/progress", [&query](const httplib::Request&, httplib::Response& res) {
    std::string body = "[";
    bool first = true;
    for (const auto& p : query.recentProgress()) {
      body += (first ? "" : ",") + p.toJson();
      first = false;
    }
    res.set_content(body + "]", "application/json");
  });
  s.Get("/source", [&metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.sourceHealthJson(), "application/json");
  });
  s.Get("/deadletters", [&metrics](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.recentDeadLettersJson(), "application/json");
  });
  if (!s.bind_to_port(options.host, options.port)) {
    throw ConfigurationError("metrics port " + std::to_string(options.port) + " on " + options.host + " is not available");
  }
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
}

MonitoringServer::~MonitoringServer() {
  if (impl_->thread.joinable()) {
    impl_->server.stop();
    impl_->thread.join();
  }
}

}  // namespace dataflow::monitoring
