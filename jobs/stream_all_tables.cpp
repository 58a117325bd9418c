// cdc-warehouse: one query for every table of the CDC topics, subscribed by pattern
// (dbserver1.public.*), each topic routed to its table's handler. Topics that appear later are
// picked up; a table without a handler sends its events to the dead-letter table, so nothing is
// dropped. Removes the original's "one job per table" limitation.
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

namespace {

const std::vector<cdc::CdcTable> kTables = {cdc::customersTable(), cdc::ordersTable()};

// Routes a record by its topic's last part: "dbserver1.public.orders" -> orders.
dataflow::Result<cdc::WarehouseChange> route(const dataflow::kafka::KafkaRecord& record) {
  std::string_view table = record.topic.substr(record.topic.rfind('.') + 1);
  for (size_t i = 0; i < kTables.size(); ++i) {
    if (kTables[i].name != table) continue;
    auto row = kTables[i].decode(record);
    if (!row) return std::move(row).error();
    return cdc::WarehouseChange{static_cast<int>(i), std::move(row).value()};
  }
  return dataflow::parseError("unrouted_table", "no handler for table '" + std::string(table) + "'");
}

}  // namespace

int main(int argc, char** argv) {
  return cdc::runJob(argc, argv, {
      .program = "stream_all_tables",
      .queryName = "cdc-warehouse",
      .topicPattern = "dbserver1\\.public\\..*",
  }, [](cdc::Job& job) {
    std::vector<dataflow::postgres::UpsertTable> targets;
    for (const auto& t : kTables) targets.emplace_back(t.target);
    return job.writer(job.session.readStream(cdc::changeSource(job.config))
                          .filter(cdc::notTombstone)
                          .parse(route)
                          .deadLettersHandledBySink())
        .foreachBatch([&job, targets](const dataflow::Batch<cdc::WarehouseChange>& batch, const dataflow::BatchInfo& info) {
          std::vector<std::vector<dataflow::postgres::UpsertRow>> perTable(targets.size());
          for (const auto& change : batch.rows()) perTable[static_cast<size_t>(change.table)].push_back(change.row);
          cdc::writeToWarehouse(job.warehouse, batch.deadLetters(), info, job.monitoring,
                                [&](dataflow::postgres::WarehouseTransaction& tx) {
                                  for (size_t i = 0; i < targets.size(); ++i) tx.upsert(targets[i], perTable[i]);
                                });
        })
        .start();
  });
}
