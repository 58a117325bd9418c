// Prometheus metrics and an HTTP endpoint for a running query: /metrics (Prometheus text format),
// /healthz (200 while the query is active), /progress (its recent progress records as JSON) and
// /deadletters (the latest dead letters) and /source (source-side health), for the supervisor's
// status page.
//
//   auto metrics = std::make_shared<monitoring::QueryMetrics>();
//   writer.addListener(metrics);                       // rows, batch durations, lag, commits
//   ... in foreachBatch: metrics->recordDeadLetters(batch.deadLetters());
//   auto query = writer.start();
//   monitoring::MonitoringServer server(*metrics, query, {.port = 9402});
#pragma once

#include <memory>
#include <span>
#include <string>
#include <thread>

#include "dataflow/batch.h"
#include "dataflow/query.h"

namespace prometheus {
class Registry;
}

namespace dataflow::monitoring {

// Thread-safety: listener callbacks come from the query's driver thread; recordDeadLetters and
// scrapes may come from any thread.
class QueryMetrics final : public QueryListener {
 public:
  QueryMetrics();
  ~QueryMetrics() override;

  void onQueryStarted(const Started& event) override;
  void onQueryProgress(const QueryProgress& progress) override;
  void onQueryTerminated(const Terminated& event) override;

  // Counts dead letters by error kind (dataflow_dead_letters_total{kind=...}).
  void recordDeadLetters(std::span<const DeadLetter> letters);

  // The metrics in Prometheus' text exposition format.
  std::string scrape() const;
  // Source-side health (CDC): replication slot lag in bytes (-1: slot missing), whether the slot is
  // in use, and the state of the Debezium connector and its tasks ("" when not watched).
  struct SourceHealth {
    std::string slot;
    int64_t slotLagBytes = -1;
    bool slotActive = false;
    std::string connector;
    std::string connectorState;  // RUNNING, PAUSED, FAILED, UNASSIGNED, or "unreachable"
    int failedTasks = 0;
  };
  void recordSourceHealth(const SourceHealth& health);
  // The latest SourceHealth as JSON ({} before the first check).
  std::string sourceHealthJson() const;

  // The latest dead letters (at most 20, newest last) as a JSON array: topic, partition, offset,
  // kind, message. Payloads are not included.
  std::string recentDeadLettersJson() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct MonitoringServerOptions {
  // Interface to listen on. Default: loopback only ("127.0.0.1"): the endpoints are unauthenticated.
  // A container publishing the port sets "0.0.0.0" (METRICS_HOST in the runner image).
  std::string host = "127.0.0.1";
  // Port; 0 disables the server. Default: 0.
  int port = 0;
};

// Serves /metrics, /healthz and /progress on a thread of its own until destroyed. Throws
// ConfigurationError naming the port when it cannot listen.
class MonitoringServer {
 public:
  MonitoringServer(const QueryMetrics& metrics, const StreamingQuery& query, MonitoringServerOptions options);
  ~MonitoringServer();
  MonitoringServer(const MonitoringServer&) = delete;
  MonitoringServer& operator=(const MonitoringServer&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dataflow::monitoring
