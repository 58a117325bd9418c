// libFuzzer target for the pgoutput decoder and the events made from it: any bytes must decode
// or throw ProtocolError, never crash, leak or trip a sanitizer; what decodes as a change must
// encode as valid JSON, and its compact form must render that same JSON and give the envelope
// that parsing the JSON gives (or the same parse error). The first input byte picks the column types of the relation the change
// is encoded against, so that every text-form parser (dates, times, timestamps, bytea, numbers)
// sees arbitrary text. Seeds: tests/fuzz/pgoutput_seeds.py.
#include <dataflow/debezium/change_event.h>
#include <dataflow/postgres/pgoutput.h>

#include <boost/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "debezium_json.h"

namespace {

namespace pg = dataflow::postgres;

// bool, int8, float8, numeric, date, time, timestamp, timestamp(3), timestamptz, bytea, text, jsonb
constexpr uint32_t kTypes[] = {16, 20, 701, 1700, 1082, 1083, 1114, 1114, 1184, 17, 25, 3802};
constexpr int32_t kModifiers[] = {-1, -1, -1, -1, -1, -1, -1, 3, -1, -1, -1, -1};

// Boost.JSON 1.81 reads some doubles one unit in the last place off (it has no precise mode yet);
// the compact form keeps the exact value of PostgreSQL's text.
bool sameDouble(double a, double b) {
  if (a != a || b != b) return a != a && b != b;
  return a == b || std::nextafter(a, b) == b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    pg::pgoutput::decodeFrame(input);
  } catch (const pg::pgoutput::ProtocolError&) {
  }
  static pg::pgoutput::Message message;
  try {
    pg::pgoutput::decodeMessage(input, message);
  } catch (const pg::pgoutput::ProtocolError&) {
    return 0;
  }
  using Type = pg::pgoutput::Message::Type;
  if (message.type != Type::kInsert && message.type != Type::kUpdate && message.type != Type::kDelete) return 0;
  pg::detail::TableShape shape{"public", "fuzz", "f.public.fuzz", {}};
  const size_t columns = std::max(message.newTuple.size(), message.oldTuple.size());
  for (size_t i = 0; i < columns; ++i) {
    size_t t = (data[0] + i * 7) % std::size(kTypes);
    shape.columns.push_back({i == 0, "c" + std::to_string(i), kTypes[t], kModifiers[t]});
  }
  pg::detail::EventSource source{"f", "db", 1, 2, 3, 4, "false", 5};
  std::string key, value;
  const auto* before = message.oldTuple.empty() ? nullptr : &message.oldTuple;
  const auto* after = message.newTuple.empty() ? nullptr : &message.newTuple;
  pg::detail::appendValueJson('u', shape, before, after, source, value);
  if (after || before) pg::detail::appendKeyJson(shape, after ? *after : *before, key);
  boost::json::parse_options options;
  options.allow_invalid_utf8 = true;  // text of a SQL_ASCII database passes through; the parser dead-letters it
  boost::system::error_code ec;
  // Invalid JSON: say what and where before aborting, so that the crash report shows the bug.
  auto check = [&](const std::string& json, const char* what) {
    boost::json::parse(json, ec, {}, options);
    if (!ec) return;
    std::fprintf(stderr, "invalid %s JSON (%s): %s\n", what, ec.message().c_str(), json.c_str());
    std::abort();
  };
  check(value, "value");
  if (!key.empty()) check(key, "key");

  static pg::detail::CompactEventCodec codec("f", "db");
  dataflow::LogRecord rec;
  pg::detail::appendCompactValue('u', shape, before, after, source, rec.value);
  rec.codec = &codec;
  rec.hasValue = true;
  auto fail = [&](const char* what) {
    std::fprintf(stderr, "compact form differs from its JSON: %s\n%s\n", what, value.c_str());
    std::abort();
  };
  if (rec.valueBytes() != value) fail("rendered bytes");
  auto compact = codec.envelope(rec);
  auto parsed = dataflow::debezium::detail::parseEnvelope(value);
  if (compact.ok() != parsed.ok()) fail("one of them is an error");
  if (!compact.ok()) {
    if (compact.error().kind != parsed.error().kind) fail("error kind");
    return 0;
  }
  const auto& c = compact.value();
  const auto& p = parsed.value();
  if (c.op != p.op || c.tsMs != p.tsMs || c.source.lsn != p.source.lsn || c.source.txId != p.source.txId ||
      c.source.sequence != p.source.sequence || c.source.table != p.source.table) {
    fail("envelope");
  }
  for (auto [a, b] : {std::pair{c.before, p.before}, std::pair{c.after, p.after}}) {
    if ((a == nullptr) != (b == nullptr)) fail("image presence");
    if (!a) continue;
    if (a->fields.size() != b->fields.size()) fail("field count");
    for (size_t i = 0; i < a->fields.size(); ++i) {
      const auto& x = a->fields[i];
      const auto& y = b->fields[i];
      if (x.first != y.first || x.second.kind != y.second.kind || x.second.b != y.second.b ||
          x.second.i != y.second.i || x.second.u != y.second.u || x.second.s != y.second.s ||
          !sameDouble(x.second.d, y.second.d)) {
        fail("field value");
      }
    }
  }
  return 0;
}
