// The two CDC tables of the pipeline: how a Debezium change event of public.customers or
// public.orders is validated and turned into a warehouse row of dim_customers or fact_orders.
// Shared by the per-table jobs and the multi-table job.
#pragma once

#include <dataflow/debezium/change_event.h>
#include <dataflow/kafka/kafka_source.h>
#include <dataflow/postgres/warehouse.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <string>
#include <string_view>

namespace cdc {

using dataflow::Result;
using dataflow::kafka::KafkaRecord;
using dataflow::postgres::UpsertRow;
using dataflow::postgres::upsertValues;
using dataflow::postgres::UpsertTableOptions;

// A change ready for the warehouse.
struct WarehouseChange {
  int table = 0;  // index into the job's tables
  UpsertRow row;
};

// Change events over this many bytes become dead letters (`record_too_large`) before any parsing:
// a field of several MB or a runaway record costs no more than its bytes, and never reaches the
// warehouse. Set once at start (runJob, from --max-record-bytes); default 1 MiB, Kafka's default
// record limit.
void setMaxRecordBytes(std::size_t bytes);

// public.customers -> dim_customers (customer_id, email, country, created_at, updated_at, event_time).
UpsertTableOptions dimCustomers();
Result<UpsertRow> customerChange(const KafkaRecord& record);

// public.orders -> fact_orders (order_id, customer_id, amount, status, created_at, updated_at, event_time).
UpsertTableOptions factOrders();
Result<UpsertRow> orderChange(const KafkaRecord& record);

// An order change read as a table row (the table jobs, dataflow/table.h): what the per-customer
// aggregates need, with fixed-size fields only, so that the row is kept in state by its bytes.
struct OrderRow {
  int64_t customerId = 0;
  int64_t amountCents = 0;
  int64_t createdAtMicros = 0;
  int64_t lsn = 0;
};
struct OrderFact {
  int64_t id = 0;
  int64_t lsn = 0;
  bool deleted = false;
  OrderRow row;
};
// The same validation as orderChange; a delete carries the key only.
Result<OrderFact> orderFact(const KafkaRecord& record);

// Customers and orders with their text columns, as table rows for orders_enriched (a row keeps
// what the event did not carry, an unchanged TOASTed value, from the key's previous row).
struct CustomerFact {
  int64_t id = 0;
  int64_t lsn = 0;
  bool deleted = false;
  uint64_t unavailable = 0;  // bit 1: email, bit 2: country (as the Debezium mapping numbers them)
  std::tuple<std::string, std::optional<std::string>> row;  // email, country
};
Result<CustomerFact> customerFact(const KafkaRecord& record);
struct OrderDetail {
  int64_t id = 0;
  int64_t lsn = 0;
  bool deleted = false;
  uint64_t unavailable = 0;  // bit 3: status
  std::tuple<int64_t, std::string, std::string> row;  // customer_id, amount, status
};
Result<OrderDetail> orderDetail(const KafkaRecord& record);

// orders_enriched (sql/007_orders_enriched.sql): order_id, customer_id, email, country, amount,
// status; versioned by batch.
UpsertTableOptions ordersEnriched();

// An order event for orders_per_minute: whether it created the order (an insert or a snapshot
// read), its status, amount and creation time, and its source position and raw bytes (a late
// event becomes a dead letter with them).
struct OrderCreated {
  bool created = false;
  std::string status;
  int64_t amountCents = 0;
  int64_t createdAtMs = 0;
  std::string_view topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::string key, payload;
};
Result<OrderCreated> orderCreated(const KafkaRecord& record);

// orders_per_minute (sql/008_orders_per_minute.sql): window_start, status, window_end,
// order_count, revenue; partial rows (one per source partition) add up.
UpsertTableOptions ordersPerMinute();

// How a table job writes a row whose key left the table (TABLE_DELETES): "soft" (default) sets
// is_deleted, "hard" deletes the row. Throws ConfigurationError naming TABLE_DELETES otherwise.
UpsertTableOptions withTableDeletes(UpsertTableOptions options);

// customer_order_stats (sql/006_customer_order_stats.sql): customer_id, order_count, total_amount,
// avg_amount, max_amount, first_order_at, last_order_at, source_lsn; versioned by batch.
UpsertTableOptions customerOrderStats();

// A table the jobs know: its Debezium table name (the topic's last part), decoder and target.
struct CdcTable {
  std::string name;
  Result<UpsertRow> (*decode)(const KafkaRecord&);
  UpsertTableOptions target;
};
const CdcTable& customersTable();
const CdcTable& ordersTable();

}  // namespace cdc
