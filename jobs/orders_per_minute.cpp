// orders-per-minute: orders created per status per minute of their created_at, with revenue ->
// orders_per_minute.
//
// Event-time tumbling windows of one minute with a watermark WATERMARK_DELAY_MS (default 10 s)
// behind the newest created_at seen: a window's row is written once, when the watermark has passed
// its end (append mode), then its state is dropped. Creations (inserts and snapshot reads) count;
// updates and deletes do not. An order whose window was already final is late: counted in the
// progress (numRowsDroppedByWatermark, on /metrics) and, with LATE_EVENTS=deadLetter, written to
// dlq_events with its bytes. Rows, dead letters, state and commit: one transaction per batch.
// Windows are per source partition: a minute's row adds up the partitions' partial rows, so the
// job is exact on any number of partitions and scales out with CONSUMER_GROUP (each partition
// then on its own watermark).
#include "lib/cdc_job.h"
#include "lib/cdc_tables.h"

#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>

namespace {

using Row = dataflow::KeyValue<dataflow::Windowed<std::string>, std::tuple<int64_t, int64_t>>;

// A non-negative integer setting from the environment, or `fallback`; a bad value fails fast.
int64_t settingMs(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  int64_t out = 0;
  auto [p, ec] = std::from_chars(v, v + std::strlen(v), out);
  if (ec != std::errc() || *p != '\0' || out < 0) {
    throw dataflow::ConfigurationError(std::string(name) + ": expected milliseconds >= 0, got '" + v + "'");
  }
  return out;
}

std::string money(int64_t cents) {
  return std::to_string(cents / 100) + "." + (cents % 100 < 10 ? "0" : "") + std::to_string(cents % 100);
}

std::string timestamp(int64_t ms) { return dataflow::debezium::Timestamp{ms * 1000}.toString(); }

}  // namespace

int main(int argc, char** argv) {
  return cdc::runJob(argc, argv, {
      .program = "orders_per_minute",
      .queryName = "orders-per-minute",
      .topics = {{"--topic", "ORDERS_TOPIC", "dbserver1.public.orders"}},
  }, [](cdc::Job& job) {
    const auto delay = std::chrono::milliseconds(settingMs("WATERMARK_DELAY_MS", 10000));
    const char* late = std::getenv("LATE_EVENTS");
    const std::string lateMode = late && *late ? late : "drop";
    if (lateMode != "drop" && lateMode != "deadLetter") {
      throw dataflow::ConfigurationError("LATE_EVENTS: expected drop or deadLetter, got '" + lateMode + "'");
    }
    using cdc::OrderCreated;
    auto perMinute = job.session.readStream(cdc::changeSource(job.config))
                         .filter(cdc::notTombstone)
                         .parse(cdc::orderCreated)
                         .deadLettersHandledBySink()
                         .filter([](const OrderCreated& o) { return o.created; })
                         .withWatermark(&OrderCreated::createdAtMs, delay)
                         .groupByKey(&OrderCreated::status)
                         .window(dataflow::tumbling(std::chrono::minutes(1)), &OrderCreated::createdAtMs)
                         .agg(dataflow::count(), dataflow::sum(&OrderCreated::amountCents));
    return job.writer(perMinute)
        .outputMode(dataflow::OutputMode::kAppend)
        .option("lateRecords", lateMode)
        .foreachBatch([&job, table = dataflow::postgres::UpsertTable(cdc::ordersPerMinute())](
                          const dataflow::Batch<Row>& batch, const dataflow::BatchInfo& info) {
          std::vector<dataflow::postgres::UpsertRow> rows;
          for (const auto& part : batch.partitions()) {
            for (const auto& r : part.rows) {
              const auto& [count, cents] = r.value;
              rows.push_back({{timestamp(r.key.window.startMs), r.key.key, timestamp(r.key.window.endMs),
                               std::to_string(count), money(cents)},
                              info.batchId + 1, false});
            }
          }
          cdc::writeToWarehouse(job.warehouse, batch.deadLetters(), info, job.monitoring,
                                [&](dataflow::postgres::WarehouseTransaction& tx) { tx.upsert(table, rows); });
        })
        .start();
  });
}
