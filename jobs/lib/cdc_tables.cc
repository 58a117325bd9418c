// Validation and flattening of the two source tables' change events. Required columns and
// operations are checked by the Debezium mapping; here come the checks of values a warehouse row
// must satisfy. Deletes become soft deletes carrying only the key.
#include "cdc_tables.h"

#include <atomic>
#include <charconv>
#include <cstdlib>

namespace cdc {
namespace {

namespace dbz = dataflow::debezium;
using dataflow::parseError;

struct Customer {
  int64_t id = 0;
  std::string email;
  std::optional<std::string> country;
  std::optional<dbz::Timestamp> createdAt, updatedAt;
};

struct Order {
  int64_t id = 0;
  int64_t customerId = 0;
  dbz::Decimal amount;
  std::string status;
  std::optional<dbz::Timestamp> createdAt, updatedAt;
};

const auto kCustomers = dbz::TableMapping<Customer>()
                            .key("id", &Customer::id)
                            .column("email", &Customer::email)
                            .column("country", &Customer::country)
                            .column("created_at", &Customer::createdAt)
                            .column("updated_at", &Customer::updatedAt);

// numeric(12,2): without the schema a precise decimal needs its scale declared.
const auto kOrders = dbz::TableMapping<Order>()
                         .key("id", &Order::id)
                         .column("customer_id", &Order::customerId)
                         .column("amount", &Order::amount, {.decimalScale = 2})
                         .column("status", &Order::status)
                         .column("created_at", &Order::createdAt)
                         .column("updated_at", &Order::updatedAt);

std::optional<std::string> text(const std::optional<dbz::Timestamp>& t) {
  return t ? std::optional<std::string>(t->toString()) : std::nullopt;
}

std::string eventTime(const dbz::SourceInfo& source) { return dbz::Timestamp{source.tsMs * 1000}.toString(); }

// Whether column `index` of the mapping came with the event (see ChangeEvent::unavailable). The
// mappings above declare their columns in the order of the warehouse row's values, so the same
// bits mark the values the sink must keep (UpsertRow::keepStored).
template <class Row>
bool sent(const dbz::ChangeEvent<Row>& e, int index) {
  return ((e.unavailable >> index) & 1) == 0;
}

std::atomic<std::size_t> maxRecordBytes{std::size_t{1} << 20};

template <class Row>
Result<dbz::ChangeEvent<Row>> decode(const dbz::TableMapping<Row>& mapping, const KafkaRecord& record) {
  if (!record.hasValue) return parseError("tombstone", "a tombstone reached the decoder");
  if (std::size_t limit = maxRecordBytes.load(std::memory_order_relaxed); record.value.size() > limit) {
    return parseError("record_too_large", "the change event is " + std::to_string(record.value.size()) +
                                              " bytes, over the limit of " + std::to_string(limit) + " (--max-record-bytes)");
  }
  return mapping.decode(record);
}

}  // namespace

void setMaxRecordBytes(std::size_t bytes) { maxRecordBytes.store(bytes, std::memory_order_relaxed); }

UpsertTableOptions dimCustomers() {
  return {.table = "public.dim_customers",
          .keyColumns = {"customer_id"},
          .valueColumns = {"email", "country", "created_at", "updated_at", "event_time"},
          .versionColumn = "source_lsn",
          .softDeleteColumn = "is_deleted",
          .changeColumns = {"event_time"},
          .insertOnlyColumns = {"first_seen_at"},
          .touchColumns = {"last_seen_at"}};
}

UpsertTableOptions factOrders() {
  return {.table = "public.fact_orders",
          .keyColumns = {"order_id"},
          .valueColumns = {"customer_id", "amount", "status", "created_at", "updated_at", "event_time"},
          .versionColumn = "source_lsn",
          .softDeleteColumn = "is_deleted",
          .changeColumns = {"event_time"},
          .insertOnlyColumns = {"first_seen_at"},
          .touchColumns = {"last_seen_at"}};
}

namespace {

// An event of `table` that carries a row with a positive id (`noun` names a row in errors).
template <class Row>
Result<dbz::ChangeEvent<Row>> rowEvent(const dbz::TableMapping<Row>& mapping, const KafkaRecord& record,
                                       const std::string& table, const std::string& noun) {
  auto event = decode(mapping, record);
  if (!event) return event;
  const auto& e = event.value();
  if (!e.hasRow) return parseError("unsupported_operation", "operation '" + std::string(dbz::toString(e.op)) + "' carries no row");
  if (e.source.table != table && !e.source.table.empty()) {
    return parseError("wrong_table", "event of table '" + e.source.table + "' on the " + table + " topic");
  }
  if (e.row.id <= 0) return parseError("invalid_value", noun + " id " + std::to_string(e.row.id) + " is not positive");
  return event;
}

// A customer event with a row, of the customers table, with a positive id and, unless it is a
// delete or did not carry it, an email with an '@'.
Result<dbz::ChangeEvent<Customer>> customerEvent(const KafkaRecord& record) {
  auto event = rowEvent(kCustomers, record, "customers", "customer");
  if (!event) return event;
  const auto& e = event.value();
  const Customer& c = e.row;
  if (!e.isDelete() && sent(e, 1) && (c.email.empty() || c.email.find('@') == std::string::npos)) {
    return parseError("invalid_value", "customer " + std::to_string(c.id) + ": email '" + c.email.substr(0, 80) + "' has no '@'");
  }
  return event;
}

}  // namespace

Result<UpsertRow> customerChange(const KafkaRecord& record) {
  auto event = customerEvent(record);
  if (!event) return std::move(event).error();
  auto& e = event.value();
  Customer& c = e.row;
  if (e.isDelete()) {
    return UpsertRow{upsertValues(std::to_string(c.id), std::nullopt, std::nullopt, std::nullopt, std::nullopt, eventTime(e.source)),
                     *e.source.lsn, true};
  }
  return UpsertRow{upsertValues(std::to_string(c.id), std::move(c.email), std::move(c.country), text(c.createdAt),
                                text(c.updatedAt), eventTime(e.source)),
                   *e.source.lsn, false, e.unavailable};
}

namespace {

// An order event with a row, of the orders table, with a positive id and, unless it is a delete,
// a positive customer id, an amount that is not negative and a status (where the event carried
// them).
Result<dbz::ChangeEvent<Order>> orderEvent(const KafkaRecord& record) {
  auto event = rowEvent(kOrders, record, "orders", "order");
  if (!event) return event;
  const auto& e = event.value();
  const Order& o = e.row;
  if (e.isDelete()) return event;
  if (sent(e, 1) && o.customerId <= 0) return parseError("invalid_value", "order " + std::to_string(o.id) + ": customer_id is not positive");
  if (o.amount.text.starts_with('-')) return parseError("invalid_value", "order " + std::to_string(o.id) + ": negative amount " + o.amount.text);
  if (sent(e, 3) && o.status.empty()) return parseError("invalid_value", "order " + std::to_string(o.id) + ": empty status");
  return event;
}

}  // namespace

Result<UpsertRow> orderChange(const KafkaRecord& record) {
  auto event = orderEvent(record);
  if (!event) return std::move(event).error();
  auto& e = event.value();
  Order& o = e.row;
  if (e.isDelete()) {
    return UpsertRow{upsertValues(std::to_string(o.id), std::nullopt, std::nullopt, std::nullopt, std::nullopt, std::nullopt,
                                  eventTime(e.source)),
                     *e.source.lsn, true};
  }
  return UpsertRow{upsertValues(std::to_string(o.id), std::to_string(o.customerId), std::move(o.amount.text),
                                std::move(o.status), text(o.createdAt), text(o.updatedAt), eventTime(e.source)),
                   *e.source.lsn, false, e.unavailable};
}

namespace {

// "123.45" (numeric(12,2) as Debezium's string decimal handling gives it) in cents.
std::optional<int64_t> cents(std::string_view text) {
  bool negative = !text.empty() && text.front() == '-';
  if (negative) text.remove_prefix(1);
  auto dot = text.find('.');
  std::string_view whole = text.substr(0, dot), fraction = dot == std::string_view::npos ? "" : text.substr(dot + 1);
  if (whole.empty() || fraction.size() > 2) return std::nullopt;
  int64_t units = 0, hundredths = 0;
  auto [p1, e1] = std::from_chars(whole.data(), whole.data() + whole.size(), units);
  if (e1 != std::errc() || p1 != whole.data() + whole.size()) return std::nullopt;
  if (!fraction.empty()) {
    auto [p2, e2] = std::from_chars(fraction.data(), fraction.data() + fraction.size(), hundredths);
    if (e2 != std::errc() || p2 != fraction.data() + fraction.size()) return std::nullopt;
    if (fraction.size() == 1) hundredths *= 10;
  }
  int64_t v = units * 100 + hundredths;
  return negative ? -v : v;
}

// An order's amount in cents (non-negative) and creation time in microseconds, validated.
// The longest text a job groups rows by (a key column of the warehouse table it writes).
constexpr size_t kMaxGroupKeyBytes = 1024;

Result<std::pair<int64_t, int64_t>> amountAndCreation(const Order& o) {
  auto amount = cents(o.amount.text);
  if (!amount || *amount < 0) {
    return parseError("invalid_value", "order " + std::to_string(o.id) + ": amount '" + o.amount.text.substr(0, 40) +
                                           "' is not a non-negative number with at most two decimals");
  }
  if (!o.createdAt || o.createdAt->special != dbz::Timestamp::Special::kNone) {
    return parseError("invalid_value", "order " + std::to_string(o.id) + ": created_at is missing or infinite");
  }
  return std::pair{*amount, o.createdAt->micros};
}

}  // namespace

Result<OrderFact> orderFact(const KafkaRecord& record) {
  auto event = orderEvent(record);
  if (!event) return std::move(event).error();
  const auto& e = event.value();
  const Order& o = e.row;
  if (e.isDelete()) return OrderFact{o.id, *e.source.lsn, true, {}};
  if (o.customerId <= 0) return parseError("invalid_value", "order " + std::to_string(o.id) + ": customer_id is not positive");
  auto figures = amountAndCreation(o);
  if (!figures) return std::move(figures).error();
  auto [amount, createdAt] = figures.value();
  return OrderFact{o.id, *e.source.lsn, false, OrderRow{o.customerId, amount, createdAt, *e.source.lsn}};
}

Result<CustomerFact> customerFact(const KafkaRecord& record) {
  auto event = customerEvent(record);
  if (!event) return std::move(event).error();
  auto& e = event.value();
  CustomerFact f{e.row.id, *e.source.lsn, e.isDelete(), e.unavailable, {}};
  if (!f.deleted) f.row = {std::move(e.row.email), std::move(e.row.country)};
  return f;
}

Result<OrderDetail> orderDetail(const KafkaRecord& record) {
  auto event = orderEvent(record);
  if (!event) return std::move(event).error();
  auto& e = event.value();
  OrderDetail d{e.row.id, *e.source.lsn, e.isDelete(), e.unavailable, {}};
  if (!d.deleted) d.row = {e.row.customerId, std::move(e.row.amount.text), std::move(e.row.status)};
  return d;
}

Result<OrderCreated> orderCreated(const KafkaRecord& record) {
  auto event = orderEvent(record);
  if (!event) return std::move(event).error();
  const auto& e = event.value();
  OrderCreated out;
  out.topic = record.topic;
  out.partition = record.partition;
  out.offset = record.offset;
  out.created = e.op == dbz::Operation::kCreate || e.op == dbz::Operation::kRead;
  if (!out.created) return out;  // updates and deletes do not create orders
  const Order& o = e.row;
  auto figures = amountAndCreation(o);
  if (!figures) return std::move(figures).error();
  // The status keys a row of orders_per_minute: PostgreSQL cannot index a key of more than about
  // a third of a page (2.7 kB), and such a status is no category to count by anyway.
  if (o.status.size() > kMaxGroupKeyBytes) {
    return parseError("invalid_value", "order " + std::to_string(o.id) + ": its status of " +
                                           std::to_string(o.status.size()) + " bytes is too long to group by (at most " +
                                           std::to_string(kMaxGroupKeyBytes) + ")");
  }
  out.status = o.status;
  out.amountCents = figures.value().first;
  out.createdAtMs = figures.value().second / 1000;
  out.key = record.key;
  out.payload = record.valueBytes();
  return out;
}

UpsertTableOptions withTableDeletes(UpsertTableOptions options) {
  const char* v = std::getenv("TABLE_DELETES");
  std::string mode = v && *v ? v : "soft";
  if (mode == "hard") {
    options.softDeleteColumn.clear();
    options.hardDelete = true;
  } else if (mode != "soft") {
    throw dataflow::ConfigurationError("TABLE_DELETES: expected soft or hard, got '" + mode + "'");
  }
  return options;
}

UpsertTableOptions ordersPerMinute() {
  return {.table = "public.orders_per_minute",
          .keyColumns = {"window_start", "status"},
          .valueColumns = {"window_end", "order_count", "revenue"},
          .versionColumn = "batch_version",
          .insertOnlyColumns = {"first_seen_at"},
          .touchColumns = {"updated_at"},
          // Each source partition closes its own windows (its own watermark when scaled out):
          // a minute's row is the sum of the partitions' partial rows, each written once.
          .accumulateColumns = {"order_count", "revenue"}};
}

UpsertTableOptions ordersEnriched() {
  return {.table = "public.orders_enriched",
          .keyColumns = {"order_id"},
          .valueColumns = {"customer_id", "email", "country", "amount", "status"},
          .versionColumn = "batch_version",
          // Behind an exchange a joined row keeps its order's version when its customer changes.
          .equalVersionReplaces = true,
          .softDeleteColumn = "is_deleted",
          .insertOnlyColumns = {"first_seen_at"},
          .touchColumns = {"updated_at"}};
}

UpsertTableOptions customerOrderStats() {
  return {.table = "public.customer_order_stats",
          .keyColumns = {"customer_id"},
          .valueColumns = {"order_count", "total_amount", "avg_amount", "max_amount", "first_order_at", "last_order_at",
                           "source_lsn"},
          .versionColumn = "batch_version",
          .softDeleteColumn = "is_deleted",
          .insertOnlyColumns = {"first_seen_at"},
          .touchColumns = {"updated_at"}};
}

const CdcTable& customersTable() {
  static const CdcTable t{"customers", &customerChange, dimCustomers()};
  return t;
}

const CdcTable& ordersTable() {
  static const CdcTable t{"orders", &orderChange, factOrders()};
  return t;
}

}  // namespace cdc
