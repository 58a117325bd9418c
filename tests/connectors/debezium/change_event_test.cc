// The parser against real events captured from Debezium 3.6.1 (tests/data/debezium, schema on with
// precise decimals and schema off with string decimals) and against malformed input.
#include <dataflow/debezium/change_event.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <fstream>

namespace dataflow::debezium {
namespace {

struct Customer {
  int64_t id = 0;
  std::string email;
  std::optional<std::string> country;
  std::optional<Timestamp> updatedAt;
};
struct Order {
  int64_t id = 0;
  int64_t customerId = 0;
  Decimal amount;
  std::string status;
};
struct Types {
  int64_t id = 0;
  std::optional<bool> flag;
  std::optional<int32_t> small;
  std::optional<int64_t> big;
  std::optional<double> ratio;
  std::optional<Decimal> price, exact, anyscale;
  std::optional<Date> day;
  std::optional<int64_t> atTime;
  std::optional<Timestamp> ts, tsMs, tstz;
  std::optional<std::string> payload, uid, raw, note;
};

const auto kCustomers = TableMapping<Customer>()
                            .key("id", &Customer::id)
                            .column("email", &Customer::email)
                            .column("country", &Customer::country)
                            .column("updated_at", &Customer::updatedAt);
const auto kOrders = TableMapping<Order>()
                         .key("id", &Order::id)
                         .column("customer_id", &Order::customerId)
                         .column("amount", &Order::amount)
                         .column("status", &Order::status);
const auto kTypes = TableMapping<Types>()
                        .key("id", &Types::id)
                        .column("flag", &Types::flag)
                        .column("small", &Types::small)
                        .column("big", &Types::big)
                        .column("ratio", &Types::ratio)
                        .column("price", &Types::price)
                        .column("exact", &Types::exact)
                        .column("anyscale", &Types::anyscale)
                        .column("day", &Types::day)
                        .column("at_time", &Types::atTime)
                        .column("ts", &Types::ts)
                        .column("ts_ms", &Types::tsMs, {.integerTimestamp = IntegerTimestamp::kMillis})
                        .column("tstz", &Types::tstz)
                        .column("payload", &Types::payload)
                        .column("uid", &Types::uid)
                        .column("raw", &Types::raw)
                        .column("note", &Types::note);

struct Record {
  std::optional<std::string> key, value;
};

std::vector<Record> golden(const std::string& name) {
  std::ifstream in(std::string(DATAFLOW_TEST_DATA) + "/debezium/" + name + ".jsonl");
  EXPECT_TRUE(in) << name;
  std::vector<Record> out;
  std::string line;
  while (std::getline(in, line)) {
    auto o = boost::json::parse(line).as_object();
    Record r;
    if (o["key"].is_string()) r.key = std::string(o["key"].as_string());
    if (o["payload"].is_string()) r.value = std::string(o["payload"].as_string());
    out.push_back(std::move(r));
  }
  return out;
}

class GoldenEvents : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenEvents, CustomersDecodeAsSnapshotInsertUpdateDeleteAndTombstone) {
  auto records = golden(GetParam() + "-customers");
  std::vector<std::string> ops;
  std::vector<ChangeEvent<Customer>> events;
  for (const auto& r : records) {
    if (!r.value) {
      ops.push_back("tombstone");
      continue;
    }
    auto e = kCustomers.decode(*r.value);
    ASSERT_TRUE(e.ok()) << e.error().kind << ": " << e.error().message;
    ops.push_back(std::string(toString(e.value().op)));
    events.push_back(e.value());
  }
  EXPECT_EQ(ops, (std::vector<std::string>{"r", "c", "u", "d", "tombstone"}));
  EXPECT_EQ(events[0].row.email, "golden-snapshot@example.com");
  EXPECT_TRUE(events[0].source.isSnapshot());
  EXPECT_EQ(events[1].row.country, "SE");
  EXPECT_FALSE(events[1].source.isSnapshot());
  EXPECT_EQ(events[2].row.country, "FI");
  EXPECT_EQ(events[3].row.id, events[1].row.id);
  EXPECT_TRUE(events[3].isDelete());
  EXPECT_EQ(events[1].source.table, "customers");
  EXPECT_EQ(events[1].source.connector, "postgresql");
  ASSERT_TRUE(events[2].source.lsn && events[1].source.lsn);
  EXPECT_GT(*events[2].source.lsn, *events[1].source.lsn);
  ASSERT_TRUE(events[1].row.updatedAt);
  EXPECT_GT(events[1].row.updatedAt->micros, 1700000000000000LL);
  EXPECT_GT(events[1].tsMs, 0);
}

TEST_P(GoldenEvents, OrderAmountsAreExactWhateverTheDecimalMode) {
  std::vector<std::string> amounts;
  for (const auto& r : golden(GetParam() + "-orders")) {
    if (!r.value) continue;
    auto e = kOrders.decode(*r.value);
    ASSERT_TRUE(e.ok()) << e.error().kind << ": " << e.error().message;
    if (!e.value().isDelete()) amounts.push_back(e.value().row.amount.text);
  }
  EXPECT_EQ(amounts, (std::vector<std::string>{"12.34", "99.99", "99.99"}));
}

TEST_P(GoldenEvents, ColumnTypesDecodeWithDebeziumDefaultEncodings) {
  std::vector<Types> rows;
  for (const auto& r : golden(GetParam() + "-golden_types")) {
    if (!r.value) continue;
    auto e = kTypes.decode(*r.value);
    ASSERT_TRUE(e.ok()) << e.error().kind << ": " << e.error().message;
    if (!e.value().isDelete()) rows.push_back(e.value().row);
  }
  ASSERT_EQ(rows.size(), 3u);  // snapshot of row 1, insert of row 2, update of row 1
  const Types& a = rows[0];
  EXPECT_EQ(a.flag, true);
  EXPECT_EQ(a.small, 7);
  EXPECT_EQ(a.big, 9007199254740993LL);
  EXPECT_EQ(a.ratio, 0.25);
  EXPECT_EQ(a.price->text, "30.50");
  EXPECT_EQ(a.exact->text, "22.2200");
  EXPECT_EQ(a.anyscale->text, "3.14159");
  EXPECT_EQ(a.day->toString(), "2024-02-29");
  EXPECT_EQ(a.atTime, 49530123456LL);
  EXPECT_EQ(a.ts->toString(), "2024-02-29T13:45:30.123456Z");
  EXPECT_EQ(a.tsMs->toString(), "2024-02-29T13:45:30.123000Z");
  EXPECT_EQ(a.tstz->toString(), "2024-02-29T11:45:30.123456Z");
  EXPECT_EQ(a.payload, R"({"a": [1, 2]})");
  EXPECT_EQ(a.uid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  EXPECT_EQ(a.raw, "3q2+7w==");
  const Types& b = rows[1];
  EXPECT_EQ(b.price->text, "-1.10");
  EXPECT_EQ(b.exact->text, "0.0000");
  EXPECT_EQ(b.tstz->special, Timestamp::Special::kInfinity);
  EXPECT_EQ(b.day->toString(), "1970-01-01");
  EXPECT_FALSE(b.uid.has_value());
  EXPECT_EQ(b.note->size(), 3000u);
  EXPECT_EQ(rows[2].price->text, "1234567890.12");
  EXPECT_EQ(rows[2].note, "updated");
}

// Timestamps print as ISO 8601 in UTC with microseconds, before the epoch and at the ends of the
// four-digit years too; years beyond them keep the general form.
TEST(TimestampText, PrintsEveryRange) {
  auto text = [](int64_t micros) { return Timestamp{.micros = micros}.toString(); };
  EXPECT_EQ(text(0), "1970-01-01T00:00:00.000000Z");
  EXPECT_EQ(text(-1), "1969-12-31T23:59:59.999999Z");
  EXPECT_EQ(text(1709214330123456), "2024-02-29T13:45:30.123456Z");
  EXPECT_EQ(text(253402300799999999), "9999-12-31T23:59:59.999999Z");
  EXPECT_EQ(text(253402300800000000), "10000-01-01T00:00:00.000000Z");
  EXPECT_EQ(text(-62167219200000000), "0000-01-01T00:00:00.000000Z");
  EXPECT_EQ(text(-62167219200000001), "-001-12-31T23:59:59.999999Z");
}

INSTANTIATE_TEST_SUITE_P(SchemaOnAndOff, GoldenEvents, ::testing::Values("plain", "schema"));

std::string kindOf(std::string_view payload) {
  auto e = kCustomers.decode(payload);
  return e.ok() ? "ok" : e.error().kind;
}

TEST(ChangeEventErrors, EachMalformedInputHasItsOwnKind) {
  const std::string good = *golden("plain-customers")[1].value;
  EXPECT_EQ(kindOf(good), "ok");
  EXPECT_EQ(kindOf(""), "empty_payload");
  EXPECT_EQ(kindOf(good.substr(0, good.size() / 2)), "truncated_json");
  EXPECT_EQ(kindOf("not json"), "malformed_json");
  EXPECT_EQ(kindOf("{\"op\": \"c\",}"), "malformed_json");
  std::string latin1 = good;
  latin1.replace(latin1.find("golden"), 1, "\xe9");
  EXPECT_EQ(kindOf(latin1), "invalid_utf8");
  // Well-formed sequences that are still not UTF-8 (found by fuzz.pgoutput: they were reported as
  // malformed JSON): a code point past U+10FFFF, an overlong form, a surrogate.
  for (std::string bad : {"\xf6\xa3\x87\x9b", "\xc0\xaf", "\xed\xa0\x80"}) {
    std::string event = good;
    event.replace(event.find("golden"), 1, bad);
    EXPECT_EQ(kindOf(event), "invalid_utf8");
  }
  EXPECT_EQ(kindOf("[1, 2]"), "malformed_envelope");
  EXPECT_EQ(kindOf(R"({"schema": {}, "payload": null})"), "malformed_envelope");
  EXPECT_EQ(kindOf(R"({"after": {"id": 1, "email": "x"}, "source": {"lsn": 1}})"), "missing_field");
  EXPECT_EQ(kindOf(R"({"op": "x", "after": {"id": 1, "email": "x"}, "source": {"lsn": 1}})"), "unknown_operation");
  EXPECT_EQ(kindOf(R"({"op": 1, "after": {"id": 1, "email": "x"}, "source": {"lsn": 1}})"), "wrong_type");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": null, "source": {"lsn": 1}})"), "missing_field");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": "1", "email": "x"}, "source": {"lsn": 1}})"), "wrong_type");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": 1}, "source": {"lsn": 1}})"), "missing_field");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": 1, "email": null}, "source": {"lsn": 1}})"), "missing_field");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": 1, "email": "x"}, "source": {}})"), "missing_field");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": 1, "email": "x", "updated_at": "yesterday"}, "source": {"lsn": 1}})"), "wrong_type");
  EXPECT_EQ(kindOf(R"({"op": "c", "after": {"id": 1, "email": "x", "country": 7}, "source": {"lsn": 1}})"), "wrong_type");
}

TEST(ChangeEventErrors, MillisecondTimestampsOutOfRangeAreWrongTypeNotOverflow) {
  // Found by the fuzzer: milliseconds * 1000 overflowed int64 (undefined behaviour).
  struct Row { int64_t id; std::optional<Timestamp> at; };
  auto mapping = TableMapping<Row>().key("id", &Row::id).column("at", &Row::at, {.integerTimestamp = IntegerTimestamp::kMillis});
  auto e = mapping.decode(R"({"op": "c", "after": {"id": 1, "at": 17092169494398932}, "source": {"lsn": 1}})");
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().kind, "wrong_type");
  auto ok = mapping.decode(R"({"op": "c", "after": {"id": 1, "at": 1709216949439}, "source": {"lsn": 1}})");
  ASSERT_TRUE(ok.ok()) << ok.error().message;
  EXPECT_EQ(ok.value().row.at->micros, 1709216949439000);
}

TEST(ChangeEventErrors, MessagesNameTheColumn) {
  auto e = kCustomers.decode(R"({"op": "c", "after": {"id": 1, "email": ["x"]}, "source": {"lsn": 1}})");
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("'email'"), std::string::npos) << e.error().message;
}

TEST(ChangeEvent, UnknownFieldsAndNewColumnsAreIgnoredAndDroppedOptionalColumnsAreNull) {
  auto e = kCustomers.decode(R"({"op": "u", "after": {"id": 9, "email": "a@b", "loyalty": 3},
                                  "source": {"lsn": 5, "snapshot": true, "origin_lsn": 1}, "extra": {}})");
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_FALSE(e.value().row.country.has_value());
  EXPECT_EQ(e.value().source.snapshot, "true");  // the documented boolean form
}

TEST(ChangeEvent, UnchangedToastedValuesAreMarkedUnavailableNotNullAndNotMissing) {
  // PostgreSQL does not log an unchanged TOASTed value; Debezium sends a placeholder instead.
  auto e = kCustomers.decode(R"({"op": "u", "after": {"id": 9, "email": "__debezium_unavailable_value",
                                  "country": "__debezium_unavailable_value"}, "source": {"lsn": 5}})");
  ASSERT_TRUE(e.ok()) << e.error().message;  // a required column that was not sent is no error
  EXPECT_EQ(e.value().unavailable, (uint64_t{1} << 1) | (uint64_t{1} << 2));  // email, country
  EXPECT_FALSE(e.value().row.country.has_value());
  auto sent = kCustomers.decode(R"({"op": "u", "after": {"id": 9, "email": "a@b"}, "source": {"lsn": 6}})");
  ASSERT_TRUE(sent.ok());
  EXPECT_EQ(sent.value().unavailable, 0u);
  // A key column is always sent: a placeholder there is an error.
  EXPECT_FALSE(kCustomers.decode(R"({"op": "u", "after": {"id": "__debezium_unavailable_value", "email": "a@b"},
                                      "source": {"lsn": 7}})").ok());
}

TEST(ChangeEvent, DeletesNeedOnlyTheKeyAndTruncatesCarryNoRow) {
  auto d = kCustomers.decode(R"({"op": "d", "before": {"id": 4, "email": ""}, "after": null, "source": {"lsn": 7}})");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d.value().row.id, 4);
  EXPECT_TRUE(d.value().hasRow);
  auto t = kCustomers.decode(R"({"op": "t", "source": {"lsn": 8}})");
  ASSERT_TRUE(t.ok());
  EXPECT_FALSE(t.value().hasRow);
}

TEST(ChangeEvent, PreciseDecimalsWithoutSchemaNeedADeclaredScale) {
  struct Row { int64_t id; Decimal amount; };
  auto declared = TableMapping<Row>().key("id", &Row::id).column("amount", &Row::amount, {.decimalScale = 2});
  auto e = declared.decode(R"({"op": "c", "after": {"id": 1, "amount": "C+o="}, "source": {"lsn": 1}})");
  ASSERT_TRUE(e.ok()) << e.error().message;
  EXPECT_EQ(e.value().row.amount.text, "30.50");
  auto negative = declared.decode(R"({"op": "c", "after": {"id": 1, "amount": "kg=="}, "source": {"lsn": 1}})");
  EXPECT_EQ(negative.value().row.amount.text, "-1.10");
  // With a declared scale, decimal.handling.mode=string still decodes.
  auto text = declared.decode(R"({"op": "c", "after": {"id": 1, "amount": "30.50"}, "source": {"lsn": 1}})");
  ASSERT_TRUE(text.ok()) << text.error().message;
  EXPECT_EQ(text.value().row.amount.text, "30.50");
  auto undeclared = TableMapping<Row>().key("id", &Row::id).column("amount", &Row::amount);
  auto bad = undeclared.decode(R"({"op": "c", "after": {"id": 1, "amount": "C+o="}, "source": {"lsn": 1}})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().kind, "wrong_type");
}

TEST(ChangeEventErrors, DeeplyNestedJsonIsRefusedWithoutRecursion) {
  // Hostile input: a million open brackets in an ignored field, and nesting in a column. The
  // parser stops at its depth limit (no stack overflow, no memory growth with the depth).
  for (std::size_t depth : {std::size_t{40}, std::size_t{1} << 20}) {
    std::string nested = std::string(depth, '[') + std::string(depth, ']');
    auto inIgnored = kCustomers.decode(R"({"op": "c", "extra": )" + nested +
                                       R"(, "after": {"id": 1, "email": "x"}, "source": {"lsn": 1}})");
    ASSERT_FALSE(inIgnored.ok()) << depth;
    EXPECT_EQ(inIgnored.error().kind, "malformed_json") << depth;
    EXPECT_NE(inIgnored.error().message.find("deep"), std::string::npos) << inIgnored.error().message;
    auto inColumn = kCustomers.decode(R"({"op": "c", "after": {"id": 1, "email": )" + nested + R"(}, "source": {"lsn": 1}})");
    ASSERT_FALSE(inColumn.ok()) << depth;
    EXPECT_EQ(inColumn.error().kind, "malformed_json") << depth;
  }
  // Unclosed: the same.
  auto open = kCustomers.decode(R"({"op": "c", "after": {"id": 1, "email": )" + std::string(1 << 20, '{'));
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.error().kind, "malformed_json");
}

TEST(ChangeEvent, MultiMegabytePayloadsDecode) {
  std::string big(3 << 20, 'x');
  auto e = kCustomers.decode(R"({"op": "c", "after": {"id": 1, "email": ")" + big + R"("}, "source": {"lsn": 1}})");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e.value().row.email.size(), big.size());
}

}  // namespace
}  // namespace dataflow::debezium
