// customer-order-stats: the orders changelog read as a table -> per-customer aggregates in
// customer_order_stats.
//
// Each order event updates the table of current orders (newest LSN per order wins; a delete
// carries only the key, its old row comes from state). Grouped by customer, count, sum, avg and max
// of the amount and the first and last order time are kept exact under updates, deletes, cascades
// and orders moved to another customer: the old row is retracted, the new one added. Each batch
// upserts the customers it changed (a customer left without orders is soft-deleted), writes its
// dead letters, its operator state and its checkpoint commit in one transaction. TABLE_DELETES=hard
// deletes a customer's row instead of marking it is_deleted.
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

#include <charconv>

namespace {

using Stats = std::tuple<int64_t, int64_t, double, int64_t, int64_t, int64_t, int64_t>;
using StatsChange = dataflow::TableChange<int64_t, Stats>;

// Cents as numeric text ("-12.05"); to_chars, not printf: this runs for every changed customer.
std::string money(int64_t cents) {
  char buf[32];
  char* p = buf;
  if (cents < 0) *p++ = '-';
  const uint64_t magnitude = cents < 0 ? uint64_t{0} - static_cast<uint64_t>(cents) : static_cast<uint64_t>(cents);
  p = std::to_chars(p, buf + sizeof buf, magnitude / 100).ptr;
  *p++ = '.';
  *p++ = static_cast<char>('0' + magnitude % 100 / 10);
  *p++ = static_cast<char>('0' + magnitude % 10);
  return std::string(buf, p);
}

dataflow::postgres::UpsertRow toUpsert(const StatsChange& c, int64_t version) {
  if (!c.after) {
    return {cdc::upsertValues(std::to_string(c.key), std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
                              std::nullopt, std::nullopt),
            version, true};
  }
  const auto& [count, total, avgCents, maxCents, first, last, lsn] = *c.after;
  char avg[64];
  const auto written = std::to_chars(avg, avg + sizeof avg, avgCents / 100.0, std::chars_format::fixed, 6);
  namespace dbz = dataflow::debezium;
  return {cdc::upsertValues(std::to_string(c.key), std::to_string(count), money(total), std::string(avg, written.ptr),
                            money(maxCents), dbz::Timestamp{first}.toString(), dbz::Timestamp{last}.toString(),
                            std::to_string(lsn)),
          version, false};
}

}  // namespace

int main(int argc, char** argv) {
  return cdc::runJob(argc, argv, {
      .program = "customer_order_stats",
      .queryName = "customer-order-stats",
      .topics = {{"--topic", "ORDERS_TOPIC", "dbserver1.public.orders"}},
  }, [](cdc::Job& job) {
    using cdc::OrderFact;
    using cdc::OrderRow;
    auto stats = job.session.readStream(cdc::changeSource(job.config))
                     .filter(cdc::notTombstone)
                     .parse(cdc::orderFact)
                     .deadLettersHandledBySink()
                     .asTable(&OrderFact::id, &OrderFact::lsn,
                              [](const OrderFact& f) { return f.deleted ? std::nullopt : std::optional<OrderRow>(f.row); })
                     .groupBy(&OrderRow::customerId)
                     .agg(dataflow::count(), dataflow::sum(&OrderRow::amountCents), dataflow::avg(&OrderRow::amountCents),
                          dataflow::max(&OrderRow::amountCents), dataflow::min(&OrderRow::createdAtMicros),
                          dataflow::max(&OrderRow::createdAtMicros), dataflow::max(&OrderRow::lsn));
    return job.writer(stats.toChangelog())
        .foreachBatch([&job, table = dataflow::postgres::UpsertTable(cdc::withTableDeletes(cdc::customerOrderStats()))](
                          const auto& batch, const dataflow::BatchInfo& info) {
          cdc::writeTableChanges(job.warehouse, table, batch, info, job.monitoring, toUpsert);
        })
        .start();
  });
}
