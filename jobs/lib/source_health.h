// Watches the source side of the pipeline, as the original told users to: the replication slot's
// lag (pg_current_wal_lsn() - confirmed_flush_lsn) and the Debezium connector's state from the
// Kafka Connect REST API. Exported as metrics (dataflow_source_*) and on /source; a stopped
// connector or a slot whose lag keeps growing past the threshold is logged as a warning.
#pragma once

#include <dataflow/monitoring/query_metrics.h>
#include <dataflow/postgres/connection.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

namespace cdc {

struct SourceHealthOptions {
  dataflow::postgres::ConnectionConfig source;  // the source database
  std::string slot = "dataflow_cdc";            // CDC_SLOT
  std::string connectUrl;                       // CONNECT_URL; empty: the connector is not watched
  std::string connector = "postgres-cdc";       // CDC_CONNECTOR
  std::chrono::milliseconds interval{10000};    // SOURCE_HEALTH_INTERVAL_MS
  int64_t lagAlertBytes = 512LL << 20;          // SLOT_LAG_ALERT_BYTES: warn above this, while growing
};

class SourceHealthWatcher {
 public:
  SourceHealthWatcher(SourceHealthOptions options, std::shared_ptr<dataflow::monitoring::QueryMetrics> metrics);
  ~SourceHealthWatcher();

 private:
  void run();
  void check();

  SourceHealthOptions options_;
  std::shared_ptr<dataflow::monitoring::QueryMetrics> metrics_;
  std::unique_ptr<dataflow::postgres::Connection> conn_;
  int64_t lastLag_ = -1;
  int growing_ = 0;
  std::string lastState_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace cdc
