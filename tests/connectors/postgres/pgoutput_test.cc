// The pgoutput decoder and the Debezium-shaped events made from it, without a server (label:
// unit): hand-built messages as the protocol documentation lays them out, corrupt ones, and the
// events read back by the Debezium parser the jobs use.
#include <dataflow/debezium/change_event.h>
#include <dataflow/postgres/pgoutput.h>
#include <dataflow/postgres/replication_source.h>
#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "debezium_json.h"

namespace dataflow::postgres {
namespace {

using pgoutput::Message;
using pgoutput::ProtocolError;
using pgoutput::Value;

// Big-endian message builder.
struct Bytes {
  std::string s;
  Bytes& u8(uint8_t v) { s += static_cast<char>(v); return *this; }
  Bytes& u16(uint16_t v) { return u8(v >> 8).u8(v & 0xff); }
  Bytes& u32(uint32_t v) { return u16(v >> 16).u16(v & 0xffff); }
  Bytes& u64(uint64_t v) { return u32(static_cast<uint32_t>(v >> 32)).u32(static_cast<uint32_t>(v)); }
  Bytes& str(std::string_view v) { s += v; s += '\0'; return *this; }
  Bytes& text(std::string_view v) { u8('t').u32(static_cast<uint32_t>(v.size())); s += v; return *this; }
};

Bytes relationMessage() {
  Bytes b;
  b.u8('R').u32(16384).str("public").str("orders").u8('d').u16(3);
  b.u8(1).str("id").u32(20).u32(0xffffffff);
  b.u8(0).str("amount").u32(1700).u32((12 << 16 | 2) + 4);
  b.u8(0).str("note").u32(25).u32(0xffffffff);
  return b;
}

TEST(Pgoutput, DecodesTheMessagesOfATransaction) {
  Message m;
  pgoutput::decodeMessage(Bytes().u8('B').u64(0x1A2B3C4D).u64(1000000).u32(742).s, m);
  EXPECT_EQ(m.type, Message::Type::kBegin);
  EXPECT_EQ(m.finalLsn, 0x1A2B3C4Du);
  EXPECT_EQ(m.xid, 742u);
  EXPECT_EQ(m.commitTimeMicros, pgoutput::kPostgresEpochOffsetMicros + 1000000);

  pgoutput::decodeMessage(relationMessage().s, m);
  ASSERT_EQ(m.type, Message::Type::kRelation);
  EXPECT_EQ(m.relation.oid, 16384u);
  EXPECT_EQ(m.relation.schema, "public");
  ASSERT_EQ(m.relation.columns.size(), 3u);
  EXPECT_TRUE(m.relation.columns[0].key);
  EXPECT_FALSE(m.relation.columns[1].key);
  EXPECT_EQ(m.relation.columns[1].typeOid, 1700u);
  EXPECT_EQ(m.relation.columns[2].typeModifier, -1);

  // The message keeps views into its bytes: they must outlive it.
  const std::string insert = Bytes().u8('I').u32(16384).u8('N').u16(3).text("7").text("30.50").u8('n').s;
  pgoutput::decodeMessage(insert, m);
  ASSERT_EQ(m.type, Message::Type::kInsert);
  ASSERT_EQ(m.newTuple.size(), 3u);
  EXPECT_EQ(m.newTuple[0].bytes, "7");
  EXPECT_EQ(m.newTuple[2].kind, Value::Kind::kNull);
  EXPECT_EQ(m.oldKind, 0);

  // An update that changed the key: the old key first ('K'), and an unchanged TOASTed column ('u').
  const std::string update = Bytes().u8('U').u32(16384).u8('K').u16(3).text("7").u8('n').u8('n')
                                 .u8('N').u16(3).text("8").text("1.00").u8('u').s;
  pgoutput::decodeMessage(update, m);
  ASSERT_EQ(m.type, Message::Type::kUpdate);
  EXPECT_EQ(m.oldKind, 'K');
  EXPECT_EQ(m.oldTuple[0].bytes, "7");
  EXPECT_EQ(m.newTuple[0].bytes, "8");
  EXPECT_EQ(m.newTuple[2].kind, Value::Kind::kUnchangedToast);

  const std::string del = Bytes().u8('D').u32(16384).u8('K').u16(3).text("8").u8('n').u8('n').s;
  pgoutput::decodeMessage(del, m);
  ASSERT_EQ(m.type, Message::Type::kDelete);
  EXPECT_TRUE(m.newTuple.empty());
  EXPECT_EQ(m.oldTuple[0].bytes, "8");

  pgoutput::decodeMessage(Bytes().u8('T').u32(2).u8(1).u32(16384).u32(16390).s, m);
  ASSERT_EQ(m.type, Message::Type::kTruncate);
  EXPECT_EQ(m.truncatedRelations, (std::vector<uint32_t>{16384, 16390}));
  EXPECT_EQ(m.truncateOptions, 1);

  pgoutput::decodeMessage(Bytes().u8('C').u8(0).u64(0x1A2B3C4D).u64(0x1A2B3C7F).u64(1000000).s, m);
  ASSERT_EQ(m.type, Message::Type::kCommit);
  EXPECT_EQ(m.commitLsn, 0x1A2B3C4Du);
  EXPECT_EQ(m.endLsn, 0x1A2B3C7Fu);
}

TEST(Pgoutput, FramesAndStatusUpdates) {
  auto frame = pgoutput::decodeFrame(Bytes().u8('k').u64(0x10).u64(5).u8(1).s);
  EXPECT_EQ(frame.kind, pgoutput::ServerFrame::Kind::kKeepalive);
  EXPECT_EQ(frame.walEnd, 0x10u);
  EXPECT_TRUE(frame.replyRequested);
  const std::string bytes = Bytes().u8('w').u64(0x20).u64(0x30).u64(0).str("x").s;
  auto data = pgoutput::decodeFrame(bytes);
  EXPECT_EQ(data.walStart, 0x20u);
  EXPECT_EQ(data.data, std::string_view("x\0", 2));

  std::string update = pgoutput::encodeStatusUpdate(0x0102030405060708, 2, 3, pgoutput::kPostgresEpochOffsetMicros, true);
  ASSERT_EQ(update.size(), 34u);
  EXPECT_EQ(update[0], 'r');
  EXPECT_EQ(update.substr(1, 8), std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  EXPECT_EQ(update.substr(25, 8), std::string(8, '\0'));  // the PostgreSQL epoch
  EXPECT_EQ(update[33], 1);
}

TEST(Pgoutput, CorruptMessagesThrowAndSayWhere) {
  Message m;
  auto error = [&](const std::string& bytes) {
    try {
      pgoutput::decodeMessage(bytes, m);
    } catch (const ProtocolError& e) {
      EXPECT_FALSE(e.retriable());
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error(""), "pgoutput: empty message");
  EXPECT_NE(error("Z").find("unknown message type 'Z'"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('B').u64(1).s).find("Begin message: commit time is truncated"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('R').u32(1).s).find("namespace has no terminating NUL"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('I').u32(1).u8('N').u16(1).u8('t').u32(100).s).find("tuple column value is truncated"),
            std::string::npos);
  EXPECT_NE(error(Bytes().u8('I').u32(1).u8('N').u16(1).u8('x').s).find("not n, u, t or b"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('I').u32(1).u8('N').u16(60000).s).find("exceeds the message"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('T').u32(0x40000000).u8(0).s).find("exceeds the message"), std::string::npos);
  EXPECT_NE(error(Bytes().u8('C').u8(0).u64(1).u64(2).u64(3).u8(9).s).find("trailing bytes"), std::string::npos);
  // Found by fuzz.pgoutput: a commit time near INT64_MAX must not overflow into undefined behaviour.
  pgoutput::decodeMessage(Bytes().u8('B').u64(0x1A2B3C4D).u64(0x7fffffffffffffd3).u32(759).s, m);
  EXPECT_EQ(m.commitTimeMicros, std::numeric_limits<int64_t>::max());
  EXPECT_THROW(pgoutput::decodeFrame("q"), ProtocolError);
  EXPECT_THROW(pgoutput::decodeFrame(Bytes().u8('k').u64(1).s), ProtocolError);
}

std::string columnJson(uint32_t type, int32_t typmod, std::string_view text) {
  pgoutput::Column c{false, "c", type, typmod};
  std::string out;
  detail::appendColumnJson(c, {Value::Kind::kText, text}, out);
  return out;
}

TEST(DebeziumJson, MapsTypesAsDebeziumDoes) {
  EXPECT_EQ(columnJson(16, -1, "t"), "true");
  EXPECT_EQ(columnJson(20, -1, "9007199254740993"), "9007199254740993");
  EXPECT_EQ(columnJson(701, -1, "0.25"), "0.25");
  EXPECT_EQ(columnJson(701, -1, "NaN"), "\"NaN\"");
  EXPECT_EQ(columnJson(701, -1, "-Infinity"), "\"-Infinity\"");
  // Numbers are written in canonical form: text that parses but is not JSON (found by the fuzzer).
  EXPECT_EQ(columnJson(20, -1, "-0719"), "-719");
  EXPECT_EQ(columnJson(701, -1, "00.5"), "0.5");
  EXPECT_EQ(columnJson(701, -1, "1e300"), "1e+300");
  EXPECT_EQ(columnJson(1700, -1, "30.50"), "\"30.50\"");  // decimal.handling.mode=string
  EXPECT_EQ(columnJson(1082, -1, "2024-02-29"), "19782");
  EXPECT_EQ(columnJson(1082, -1, "infinity"), "\"infinity\"");
  EXPECT_EQ(columnJson(1083, -1, "13:45:30.123456"), "49530123456");
  EXPECT_EQ(columnJson(1114, -1, "2024-02-29 13:45:30.123456"), "1709214330123456");
  EXPECT_EQ(columnJson(1114, 3, "2024-02-29 13:45:30.123"), "1709214330123");
  EXPECT_EQ(columnJson(1184, -1, "2024-02-29 11:45:30.123456+00"), "\"2024-02-29T11:45:30.123456Z\"");
  EXPECT_EQ(columnJson(1184, -1, "2024-02-29 11:45:30+00"), "\"2024-02-29T11:45:30Z\"");
  EXPECT_EQ(columnJson(1184, -1, "infinity"), "\"infinity\"");
  EXPECT_EQ(columnJson(17, -1, "\\xdeadbeef"), "\"3q2+7w==\"");
  EXPECT_EQ(columnJson(17, -1, "\\x"), "\"\"");
  EXPECT_EQ(columnJson(25, -1, "a\"b\\c\n\x01 ü"), "\"a\\\"b\\\\c\\n\\u0001 ü\"");
  EXPECT_EQ(columnJson(1007, -1, "{1,2}"), "\"{1,2}\"");  // arrays as text
  EXPECT_EQ(columnJson(99999, -1, "whatever"), "\"whatever\"");  // unknown types as text
  std::string out;
  detail::appendColumnJson({false, "c", 25, -1}, {Value::Kind::kUnchangedToast, {}}, out);
  EXPECT_EQ(out, "\"__debezium_unavailable_value\"");
}

struct Order {
  int64_t id = 0;
  debezium::Decimal amount;
  std::optional<std::string> note;
};
const auto kOrders = debezium::TableMapping<Order>()
                         .key("id", &Order::id)
                         .column("amount", &Order::amount)
                         .column("note", &Order::note);

TEST(DebeziumJson, EventsReadBackThroughTheJobsParser) {
  detail::TableShape shape{"public", "orders", "dbserver1.public.orders", {}};
  shape.columns = {{true, "id", 20, -1}, {false, "amount", 1700, -1}, {false, "note", 25, -1}};
  detail::EventSource source{"dbserver1", "appdb", 1700000000000, 742, 0x1A2B3C4D, 0x1A2B3C7F, "false", 1700000000100};
  detail::Tuple after{{Value::Kind::kText, "8"}, {Value::Kind::kText, "1.00"}, {Value::Kind::kUnchangedToast, {}}};
  std::string key, value;
  detail::appendKeyJson(shape, after, key);
  EXPECT_EQ(key, "{\"id\":8}");
  detail::appendValueJson('u', shape, nullptr, &after, source, value);
  ASSERT_TRUE(boost::json::parse(value).is_object()) << value;
  auto event = kOrders.decode(value);
  ASSERT_TRUE(event.ok()) << event.error().message;
  EXPECT_EQ(event.value().op, debezium::Operation::kUpdate);
  EXPECT_EQ(event.value().row.id, 8);
  EXPECT_EQ(event.value().row.amount.text, "1.00");
  EXPECT_EQ(event.value().unavailable, uint64_t{1} << 2);  // the TOASTed note was not sent
  EXPECT_EQ(event.value().source.lsn, 0x1A2B3C4D);
  EXPECT_EQ(event.value().source.txId, 742);
  EXPECT_EQ(event.value().source.tsMs, 1700000000000);
  EXPECT_EQ(event.value().source.table, "orders");

  detail::Tuple keyOnly{{Value::Kind::kText, "8"}, {Value::Kind::kNull, {}}, {Value::Kind::kNull, {}}};
  value.clear();
  detail::appendValueJson('d', shape, &keyOnly, nullptr, source, value);
  auto deleted = kOrders.decode(value);
  ASSERT_TRUE(deleted.ok()) << deleted.error().message;
  EXPECT_TRUE(deleted.value().isDelete());
  EXPECT_EQ(deleted.value().row.id, 8);
}

// The compact form (ReplicationSourceOptions::compactValues) must give, field by field, the
// envelope that parsing its rendered JSON gives, and render exactly the JSON the source writes
// without it.
void expectSameValue(const debezium::detail::Value& a, const debezium::detail::Value& b, const std::string& where) {
  EXPECT_EQ(static_cast<int>(a.kind), static_cast<int>(b.kind)) << where;
  EXPECT_EQ(a.b, b.b) << where;
  EXPECT_EQ(a.i, b.i) << where;
  EXPECT_EQ(a.u, b.u) << where;
  EXPECT_EQ(a.d, b.d) << where;
  EXPECT_EQ(a.s, b.s) << where;
}

void expectSameImage(const debezium::detail::RowImage* a, const debezium::detail::RowImage* b, const std::string& which) {
  ASSERT_EQ(a == nullptr, b == nullptr) << which;
  if (!a) return;
  ASSERT_EQ(a->fields.size(), b->fields.size()) << which;
  for (size_t i = 0; i < a->fields.size(); ++i) {
    EXPECT_EQ(a->fields[i].first, b->fields[i].first) << which;
    expectSameValue(a->fields[i].second, b->fields[i].second, which + "." + std::string(a->fields[i].first));
  }
}

// Compares the compact record's envelope with the parsed JSON's; returns the JSON.
std::string expectCompactMatchesJson(char op, const detail::TableShape& shape, const detail::Tuple* before,
                                     const detail::Tuple* after, const detail::EventSource& source) {
  std::string json;
  detail::appendValueJson(op, shape, before, after, source, json);
  detail::CompactEventCodec codec(std::string(source.connectorName), std::string(source.database));
  LogRecord rec;
  detail::appendCompactValue(op, shape, before, after, source, rec.value);
  rec.codec = &codec;
  rec.hasValue = true;
  EXPECT_EQ(rec.valueBytes(), json);
  EXPECT_LT(rec.value.size(), json.size());
  auto compact = codec.envelope(rec);
  auto parsed = debezium::detail::parseEnvelope(json);
  EXPECT_EQ(compact.ok(), parsed.ok()) << json;
  if (!compact.ok() || !parsed.ok()) {
    if (!compact.ok() && !parsed.ok()) {
      EXPECT_EQ(compact.error().kind, parsed.error().kind);
    }
    return json;
  }
  // Copies: each envelope lives in a per-thread buffer of its own (the codec's, the parser's).
  const auto& c = compact.value();
  const auto& p = parsed.value();
  EXPECT_EQ(c.op, p.op);
  EXPECT_EQ(c.tsMs, p.tsMs);
  EXPECT_EQ(c.source.connector, p.source.connector);
  EXPECT_EQ(c.source.name, p.source.name);
  EXPECT_EQ(c.source.db, p.source.db);
  EXPECT_EQ(c.source.schema, p.source.schema);
  EXPECT_EQ(c.source.table, p.source.table);
  EXPECT_EQ(c.source.tsMs, p.source.tsMs);
  EXPECT_EQ(c.source.txId, p.source.txId);
  EXPECT_EQ(c.source.lsn, p.source.lsn);
  EXPECT_EQ(c.source.snapshot, p.source.snapshot);
  EXPECT_EQ(c.source.sequence, p.source.sequence);
  expectSameImage(c.before, p.before, "before");
  expectSameImage(c.after, p.after, "after");
  return json;
}

TEST(DebeziumJson, CompactEventsGiveTheEnvelopeOfTheirJson) {
  detail::TableShape shape{"public", "things", "dbserver1.public.things", {}, {}};
  shape.columns = {{true, "id", 20, -1},     {false, "ok", 16, -1},        {false, "f", 701, -1},
                   {false, "whole", 701, -1}, {false, "big", 701, -1},     {false, "amount", 1700, -1},
                   {false, "day", 1082, -1},  {false, "at", 1184, -1},     {false, "local", 1114, 3},
                   {false, "raw", 17, -1},    {false, "note", 25, -1},     {false, "tags", 1007, -1},
                   {false, "nan", 701, -1},   {false, "bad_day", 1082, -1}, {false, "toasted", 25, -1}};
  detail::EventSource source{"dbserver1", "appdb", 1700000000000, 742, 0x1A2B3C4D, 0x1A2B3C7F, "false", 1700000000100};
  auto text = [](std::string_view s) { return Value{Value::Kind::kText, s}; };
  detail::Tuple row{text("8"),      text("t"),     text("0.25"),  text("3"),
                    text("1e300"),  text("30.50"), text("2024-02-29"), text("2024-02-29 11:45:30.123456+00"),
                    text("2024-02-29 13:45:30.123"), text("\\xdeadbeef"), text("a\"b\\c\n\x01 ü"), text("{1,2}"),
                    text("NaN"),    text("infinity"), {Value::Kind::kUnchangedToast, {}}};
  detail::Tuple keyOnly(row.size(), Value{Value::Kind::kNull, {}});
  keyOnly[0] = text("8");
  expectCompactMatchesJson('c', shape, nullptr, &row, source);
  expectCompactMatchesJson('u', shape, &row, &row, source);
  expectCompactMatchesJson('d', shape, &keyOnly, nullptr, source);
  expectCompactMatchesJson('t', shape, nullptr, nullptr, source);
  detail::EventSource snapshot = source;
  snapshot.snapshot = "true";
  expectCompactMatchesJson('r', shape, nullptr, &row, snapshot);
  // Fewer values than columns (a relation that grew since): only the values sent.
  detail::Tuple shorter(row.begin(), row.begin() + 3);
  expectCompactMatchesJson('c', shape, nullptr, &shorter, source);
  // Text that is not UTF-8 (a SQL_ASCII database) fails the event as its JSON does.
  detail::Tuple latin1 = row;
  latin1[10] = text("caf\xe9");
  EXPECT_FALSE(debezium::detail::parseEnvelope(expectCompactMatchesJson('c', shape, nullptr, &latin1, source)).ok());

  // Through a mapping, as the jobs read it: the same typed event from either form.
  detail::TableShape orders{"public", "orders", "dbserver1.public.orders", {}, {}};
  orders.columns = {{true, "id", 20, -1}, {false, "amount", 1700, -1}, {false, "note", 25, -1}};
  detail::Tuple after{text("8"), text("1.00"), {Value::Kind::kUnchangedToast, {}}};
  detail::CompactEventCodec codec("dbserver1", "appdb");
  LogRecord compact, json;
  detail::appendCompactValue('u', orders, nullptr, &after, source, compact.value);
  compact.codec = &codec;
  compact.hasValue = true;
  detail::appendValueJson('u', orders, nullptr, &after, source, json.value);
  json.hasValue = true;
  auto a = kOrders.decode(compact);
  auto b = kOrders.decode(json);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a.value().row.id, b.value().row.id);
  EXPECT_EQ(a.value().row.amount, b.value().row.amount);
  EXPECT_EQ(a.value().row.note, b.value().row.note);
  EXPECT_EQ(a.value().unavailable, uint64_t{1} << 2);
  EXPECT_EQ(a.value().unavailable, b.value().unavailable);
  EXPECT_EQ(a.value().source.lsn, b.value().source.lsn);
  EXPECT_EQ(a.value().source.sequence, b.value().source.sequence);
  // A dead letter of the compact record carries the JSON bytes.
  DeadLetter letter;
  compact.fillDeadLetter(letter);
  EXPECT_EQ(letter.payload, json.value);
}

TEST(ReplicationSourceOptions, BadSettingsAreNamed) {
  ReplicationSourceOptions o;
  o.slotName = "ok_slot";
  EXPECT_THROW(o.validate(), ConfigurationError);  // no tables
  o.tables = {"public.orders"};
  o.validate();
  o.slotName = "Bad-Slot";
  try {
    o.validate();
    FAIL();
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("slot name 'Bad-Slot'"), std::string::npos);
  }
  o.slotName = "ok_slot";
  o.receiveCoalesce = std::chrono::seconds(1);  // a wait that long is a mistake, not a trade
  try {
    o.validate();
    FAIL();
  } catch (const ConfigurationError& e) {
    EXPECT_NE(std::string(e.what()).find("receiveCoalesce"), std::string::npos);
  }
  o.receiveCoalesce = std::chrono::microseconds(0);
  o.validate();
  EXPECT_EQ(parseLsn("16/B374D848"), 0x16B374D848u);
  EXPECT_EQ(formatLsn(0x16B374D848u), "16/B374D848");
  EXPECT_THROW(parseLsn("16B374D848"), ConfigurationError);
  EXPECT_THROW(parseLsn("/1"), ConfigurationError);
}

}  // namespace
}  // namespace dataflow::postgres
