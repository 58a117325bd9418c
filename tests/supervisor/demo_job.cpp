// A job for the status-page test: a rate source, a parse step that rejects every 40th record
// (dead letters), a watermark and a count per residue (state), and the monitoring endpoint on
// METRICS_PORT; runs until SIGTERM.
#include <dataflow/dataflow.h>
#include <dataflow/monitoring/query_metrics.h>

#include <csignal>
#include <cstdlib>
#include <thread>

namespace {
volatile std::sig_atomic_t stopRequested = 0;
}

int main() {
  std::signal(SIGTERM, [](int) { stopRequested = 1; });
  dataflow::Session session({.workerThreads = 1});
  auto metrics = std::make_shared<dataflow::monitoring::QueryMetrics>();
  auto query = session.readStream(std::make_shared<dataflow::RateSource>(dataflow::RateSourceOptions{.rowsPerSecond = 2000}))
                   .parse([](const dataflow::RateRow& r) -> dataflow::Result<dataflow::RateRow> {
                     if (r.value % 40 == 0) return dataflow::parseError("demo_error", "value " + std::to_string(r.value) + " is a multiple of 40");
                     return r;
                   })
                   .withWatermark(&dataflow::RateRow::timestampMs, std::chrono::seconds(1))
                   .groupByKey([](const dataflow::RateRow& r) { return r.value % 10; })
                   .count()
                   .deadLettersHandledBySink()
                   .writeStream()
                   .queryName("demo")
                   .outputMode(dataflow::OutputMode::kUpdate)
                   .trigger(dataflow::Trigger::processingTime(std::chrono::milliseconds(200)))
                   .addListener(metrics)
                   .foreachBatch([&](const dataflow::Batch<dataflow::KeyValue<int64_t, int64_t>>& batch,
                                     const dataflow::BatchInfo&) {
                     metrics->recordDeadLetters(batch.deadLetters());
                   })
                   .start();
  const char* port = std::getenv("METRICS_PORT");
  dataflow::monitoring::MonitoringServer server(*metrics, query, {.port = port ? std::atoi(port) : 0});
  while (!stopRequested && query.isActive()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  query.stop();
  return 0;
}
