// customers-cdc-warehouse: Debezium change events of public.customers -> dim_customers.
//
// Reads the topic, drops tombstones, parses and validates each event (invalid ones become dead
// letters with their raw bytes), flattens it into a warehouse row (deletes become soft deletes),
// and upserts each batch under the per-key LSN guard together with its dead letters and its
// checkpoint commit, in one transaction.
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

#include <spdlog/spdlog.h>

int main(int argc, char** argv) {
  cdc::blockTerminationSignals();
  auto config = cdc::JobConfig::fromArgs(argc, argv, {
      .program = "stream_customers",
      .queryName = "customers-cdc-warehouse",
      .topics = {{"--topic", "CUSTOMERS_TOPIC", "dbserver1.public.customers"}},
  });
  try {
    dataflow::Session session({.workerThreads = config.workers});
    auto warehouse = cdc::openWarehouse(config);
    cdc::Monitoring monitoring;
    const dataflow::postgres::UpsertTable dimCustomers(cdc::dimCustomers());

    auto query = session.readStream(cdc::kafkaSource(config))
                     .filter(cdc::notTombstone)
                     .parse(cdc::customerChange)
                     .deadLettersHandledBySink()
                     .writeStream()
                     .queryName(config.queryName)
                     .trigger(cdc::trigger(config))
                     .overlapBatches(config.overlapBatches)
                     .checkpoint(warehouse.checkpoint)
                     .addListener(cdc::batchLogger())
                     .addListener(monitoring.metrics)
                     .foreachBatch([&](const dataflow::Batch<dataflow::postgres::UpsertRow>& batch,
                                       const dataflow::BatchInfo& info) {
                       cdc::writeToWarehouse(warehouse, dimCustomers, batch, info, monitoring);
                     })
                     .start();
    monitoring.serve(config, query);
    return cdc::runUntilSignalled(query);
  } catch (const dataflow::Error& e) {
    spdlog::error("{}: {}", config.queryName, e.what());
    return dynamic_cast<const dataflow::ConfigurationError*>(&e) ? 2 : 1;
  }
}
