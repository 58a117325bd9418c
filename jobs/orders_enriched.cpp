// orders-enriched: orders joined with their customers, both changelogs read as tables ->
// orders_enriched.
//
// The orders table is joined on customer_id with the customers table (a left join: an order
// whose customer is not known yet, or gone, keeps empty customer columns). An order's row changes
// when the order changes and when its customer does: a customer's new email rewrites every one of
// its orders. Columns an event did not carry (unchanged TOASTed values) are taken from the key's
// previous row. Each batch upserts the orders it changed (deleted ones soft-deleted), with its dead
// letters, operator state and checkpoint commit, in one transaction. TABLE_DELETES=hard deletes
// rows instead of marking them is_deleted.
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

namespace {

using CustomerRow = std::tuple<std::string, std::optional<std::string>>;        // email, country
using OrderRow = std::tuple<int64_t, std::string, std::string>;                 // customer_id, amount, status
using Enriched = std::tuple<int64_t, std::optional<std::string>, std::optional<std::string>, std::string, std::string>;

std::optional<CustomerRow> customerRow(const cdc::CustomerFact& f, const CustomerRow* previous) {
  if (f.deleted) return std::nullopt;
  CustomerRow row = f.row;
  if (previous && (f.unavailable >> 1 & 1)) std::get<0>(row) = std::get<0>(*previous);
  if (previous && (f.unavailable >> 2 & 1)) std::get<1>(row) = std::get<1>(*previous);
  return row;
}

std::optional<OrderRow> orderRow(const cdc::OrderDetail& d, const OrderRow* previous) {
  if (d.deleted) return std::nullopt;
  OrderRow row = d.row;
  if (previous && (d.unavailable >> 3 & 1)) std::get<2>(row) = std::get<2>(*previous);
  return row;
}

Enriched enrich(const OrderRow& o, const CustomerRow* c) {
  return {std::get<0>(o), c ? std::optional(std::get<0>(*c)) : std::nullopt, c ? std::get<1>(*c) : std::nullopt,
          std::get<1>(o), std::get<2>(o)};
}

dataflow::postgres::UpsertRow toUpsert(const dataflow::TableChange<int64_t, Enriched>& c, int64_t version) {
  if (!c.after) {
    return {cdc::upsertValues(std::to_string(c.key), std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt),
            version, true};
  }
  const auto& [customer, email, country, amount, status] = *c.after;
  return {cdc::upsertValues(std::to_string(c.key), std::to_string(customer), email, country, amount, status), version, false};
}

}  // namespace

int main(int argc, char** argv) {
  return cdc::runJob(argc, argv, {
      .program = "orders_enriched",
      .queryName = "orders-enriched",
      .topics = {{"--customers-topic", "CUSTOMERS_TOPIC", "dbserver1.public.customers"},
                 {"--orders-topic", "ORDERS_TOPIC", "dbserver1.public.orders"}},
  }, [](cdc::Job& job) {
    if (job.config.topics.size() != 2) throw dataflow::ConfigurationError("orders_enriched reads two topics: customers and orders");
    // One source per table (with --source=postgres, one replication slot each).
    auto customers = job.session.readStream(cdc::changeSource(job.config, {job.config.topics[0]}, "customers"))
                         .filter(cdc::notTombstone)
                         .parse(cdc::customerFact)
                         .deadLettersHandledBySink()
                         .asTable(&cdc::CustomerFact::id, &cdc::CustomerFact::lsn, customerRow);
    auto enriched = job.session.readStream(cdc::changeSource(job.config, {job.config.topics[1]}, "orders"))
                        .filter(cdc::notTombstone)
                        .parse(cdc::orderDetail)
                        .deadLettersHandledBySink()
                        .asTable(&cdc::OrderDetail::id, &cdc::OrderDetail::lsn, orderRow)
                        .join(customers, [](const OrderRow& o) { return std::get<0>(o); }, enrich, dataflow::JoinType::kLeftOuter);
    return job.writer(enriched.toChangelog())
        .foreachBatch([&job, table = dataflow::postgres::UpsertTable(cdc::withTableDeletes(cdc::ordersEnriched()))](
                          const auto& batch, const dataflow::BatchInfo& info) {
          cdc::writeTableChanges(job.warehouse, table, batch, info, job.monitoring, toUpsert);
        })
        .start();
  });
}
