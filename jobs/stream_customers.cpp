// customers-cdc-warehouse: Debezium change events of public.customers -> dim_customers.
//
// Reads the topic, drops tombstones, parses and validates each event (invalid ones become dead
// letters with their raw bytes), flattens it into a warehouse row (deletes become soft deletes),
// and upserts each batch under the per-key LSN guard together with its dead letters and its
// checkpoint commit, in one transaction.
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

int main(int argc, char** argv) {
  return cdc::runJob(argc, argv, {
      .program = "stream_customers",
      .queryName = "customers-cdc-warehouse",
      .topics = {{"--topic", "CUSTOMERS_TOPIC", "dbserver1.public.customers"}},
  }, [](cdc::Job& job) {
    return job.writer(job.session.readStream(cdc::changeSource(job.config))
                          .filter(cdc::notTombstone)
                          .parse(cdc::customerChange)
                          .deadLettersHandledBySink())
        .foreachBatch([&job, table = dataflow::postgres::UpsertTable(cdc::dimCustomers())](
                          const dataflow::Batch<dataflow::postgres::UpsertRow>& batch, const dataflow::BatchInfo& info) {
          cdc::writeToWarehouse(job.warehouse, table, batch, info, job.monitoring);
        })
        .start();
  });
}
