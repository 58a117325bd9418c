// Type mapping from pgoutput's text form (the walsender runs with DateStyle=ISO, TimeZone=UTC,
// extra_float_digits=3, set by the source) to Debezium's JSON values. A value that does not parse
// as its type says it would (a BC date, an infinite timestamp) is passed as a string, never lost.
#include "debezium_json.h"

#include "iso_date.h"

#include <charconv>
#include <cstring>
#include <deque>

namespace dataflow::postgres::detail {
namespace {

// Builtin type OIDs (pg_type.dat).
constexpr uint32_t kBool = 16, kBytea = 17, kInt8 = 20, kInt2 = 21, kInt4 = 23, kOid = 26, kFloat4 = 700,
                   kFloat8 = 701, kDate = 1082, kTime = 1083, kTimestamp = 1114, kTimestampTz = 1184;

constexpr std::string_view kUnavailable = "__debezium_unavailable_value";

void appendJsonString(std::string_view s, std::string& out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

template <class T>
bool parseNumber(std::string_view s, T& out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

// "HH:MM:SS[.ffffff]" -> microseconds of the day; `rest` gets what follows.
bool parseTime(std::string_view s, int64_t& micros, std::string_view& rest) {
  if (s.size() < 8 || s[2] != ':' || s[5] != ':') return false;
  unsigned h, m, sec;
  if (!parseNumber(s.substr(0, 2), h) || !parseNumber(s.substr(3, 2), m) || !parseNumber(s.substr(6, 2), sec)) return false;
  if (h > 24 || m > 59 || sec > 60) return false;
  int64_t fraction = 0;
  size_t i = 8;
  if (i < s.size() && s[i] == '.') {
    ++i;
    int digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (digits < 6) fraction = fraction * 10 + (s[i] - '0');
      ++digits;
      ++i;
    }
    if (digits == 0) return false;
    for (int k = digits; k < 6; ++k) fraction *= 10;
  }
  micros = (static_cast<int64_t>(h) * 3600 + m * 60 + sec) * 1000000 + fraction;
  rest = s.substr(i);
  return true;
}

// "YYYY-MM-DD HH:MM:SS[.ffffff]" -> microseconds since the epoch; `rest` gets what follows.
bool parseTimestamp(std::string_view s, int64_t& micros, std::string_view& rest) {
  int64_t days, time;
  if (s.size() < 19 || s[10] != ' ' || !parseIsoDate(s.substr(0, 10), days) || !parseTime(s.substr(11), time, rest)) return false;
  micros = days * 86400000000LL + time;
  return true;
}

// The precision of a time or timestamp column from its type modifier; -1 (unspecified) is 6.
int timePrecision(int32_t typeModifier) { return typeModifier < 0 ? 6 : typeModifier; }

void appendInt(int64_t v, std::string& out) {
  char buf[24];
  auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, ptr);
}

// bytea's hex text form ("\x0102") -> base64, as Debezium sends binary columns.
bool byteaBase64(std::string_view s, std::string& out) {
  if (s.size() < 2 || s[0] != '\\' || s[1] != 'x' || s.size() % 2 != 0) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string bytes;
  bytes.reserve((s.size() - 2) / 2);
  for (size_t i = 2; i < s.size(); i += 2) {
    int hi = nibble(s[i]), lo = nibble(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    bytes += static_cast<char>(hi << 4 | lo);
  }
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16 | static_cast<uint8_t>(bytes[i + 1]) << 8 | static_cast<uint8_t>(bytes[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[v >> 12 & 63];
    out += kAlphabet[v >> 6 & 63];
    out += kAlphabet[v & 63];
  }
  if (size_t left = bytes.size() - i; left > 0) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16 | (left == 2 ? static_cast<uint8_t>(bytes[i + 1]) << 8 : 0);
    out += kAlphabet[v >> 18];
    out += kAlphabet[v >> 12 & 63];
    out += left == 2 ? kAlphabet[v >> 6 & 63] : '=';
    out += '=';
  }
  return true;
}

void appendSource(const TableShape& shape, const EventSource& source, std::string& out) {
  out += "\"source\":{\"version\":\"dataflow-pgoutput\",\"connector\":\"postgresql\",\"name\":";
  appendJsonString(source.connectorName, out);
  out += ",\"ts_ms\":";
  appendInt(source.commitTimeMs, out);
  out += ",\"snapshot\":";
  appendJsonString(source.snapshot, out);
  out += ",\"db\":";
  appendJsonString(source.database, out);
  out += ",\"sequence\":\"[\\\"";
  appendInt(static_cast<int64_t>(source.commitLsn), out);
  out += "\\\",\\\"";
  appendInt(static_cast<int64_t>(source.lsn), out);
  out += "\\\"]\",\"schema\":";
  appendJsonString(shape.schema, out);
  out += ",\"table\":";
  appendJsonString(shape.table, out);
  out += ",\"txId\":";
  appendInt(source.xid, out);
  out += ",\"lsn\":";
  appendInt(static_cast<int64_t>(source.lsn), out);
  out += ",\"xmin\":null}";
}

void appendRow(const TableShape& shape, const Tuple* tuple, std::string& out) {
  if (!tuple) {
    out += "null";
    return;
  }
  out += '{';
  const size_t n = std::min(shape.columns.size(), tuple->size());
  for (size_t i = 0; i < n; ++i) {
    if (i) out += ',';
    appendJsonString(shape.columns[i].name, out);
    out += ':';
    appendColumnJson(shape.columns[i], (*tuple)[i], out);
  }
  out += '}';
}

}  // namespace

namespace {

// One column as the JSON scalar Debezium writes for it. Strings are unescaped: the value's own
// bytes, a literal, or text made in `scratch` (which must outlive the scalar).
struct JsonScalar {
  enum class Kind : uint8_t { kNull, kBool, kInt, kDouble, kString } kind = Kind::kNull;
  bool b = false;
  int64_t i = 0;
  double d = 0;
  std::string_view s;
};

JsonScalar stringScalar(std::string_view s) { return {JsonScalar::Kind::kString, false, 0, 0, s}; }
JsonScalar intScalar(int64_t v) { return {JsonScalar::Kind::kInt, false, v, 0, {}}; }

JsonScalar columnScalar(const pgoutput::Column& column, const pgoutput::Value& value, std::string& scratch) {
  using Kind = pgoutput::Value::Kind;
  if (value.kind == Kind::kNull) return {};
  if (value.kind == Kind::kUnchangedToast) return stringScalar(kUnavailable);
  const std::string_view s = value.bytes;
  // Only with the binary option, which the source never asks for; kept as text, not lost.
  if (value.kind == Kind::kBinary) return stringScalar(s);
  switch (column.typeOid) {
    case kBool:
      if (s == "t" || s == "f") return {JsonScalar::Kind::kBool, s == "t", 0, 0, {}};
      break;
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid: {
      // Written in canonical form, not as sent: a text like "-0719" parses, but leading zeros are
      // not JSON (found by the fuzzer).
      int64_t v;
      if (parseNumber(s, v)) return intScalar(v);
      break;
    }
    case kFloat4:
    case kFloat8: {
      double v;
      // NaN and the infinities are not JSON numbers: they stay strings.
      if (parseNumber(s, v) && s.find_first_of("nN") == std::string_view::npos) {
        return {JsonScalar::Kind::kDouble, false, 0, v, {}};
      }
      break;
    }
    case kDate: {
      int64_t days;
      if (parseIsoDate(s, days)) return intScalar(days);
      break;
    }
    case kTime: {
      int64_t micros;
      std::string_view rest;
      if (parseTime(s, micros, rest) && rest.empty()) {
        return intScalar(timePrecision(column.typeModifier) <= 3 ? micros / 1000 : micros);
      }
      break;
    }
    case kTimestamp: {
      // MicroTimestamp (precision 4-6) or Timestamp in ms (0-3): the wall clock read as UTC.
      int64_t micros;
      std::string_view rest;
      if (parseTimestamp(s, micros, rest) && rest.empty()) {
        return intScalar(timePrecision(column.typeModifier) <= 3 ? micros / 1000 : micros);
      }
      break;
    }
    case kTimestampTz: {
      // ZonedTimestamp: ISO-8601 in UTC with "Z". The walsender prints UTC ("+00").
      int64_t micros;
      std::string_view rest;
      if (parseTimestamp(s, micros, rest) && rest == "+00") {
        scratch.assign(s.substr(0, s.size() - 3));
        scratch[10] = 'T';
        scratch += 'Z';
        return stringScalar(scratch);
      }
      break;
    }
    case kBytea:
      scratch.clear();
      if (byteaBase64(s, scratch)) return stringScalar(scratch);
      break;
    default:
      break;  // numeric (decimal.handling.mode=string), text, json, uuid, arrays, enums, ...: strings
  }
  return stringScalar(s);
}

void appendScalarJson(const JsonScalar& v, std::string& out) {
  switch (v.kind) {
    case JsonScalar::Kind::kNull: out += "null"; return;
    case JsonScalar::Kind::kBool: out += v.b ? "true" : "false"; return;
    case JsonScalar::Kind::kInt: appendInt(v.i, out); return;
    case JsonScalar::Kind::kDouble: {
      char buf[32];  // the shortest text that reads back as v, valid JSON whatever was sent
      auto r = std::to_chars(buf, buf + sizeof buf, v.d);
      out.append(buf, r.ptr);
      return;
    }
    case JsonScalar::Kind::kString: appendJsonString(v.s, out); return;
  }
}

}  // namespace

void appendColumnJson(const pgoutput::Column& column, const pgoutput::Value& value, std::string& out) {
  thread_local std::string scratch;
  appendScalarJson(columnScalar(column, value, scratch), out);
}

void appendKeyJson(const TableShape& shape, const Tuple& tuple, std::string& out) {
  out += '{';
  bool first = true;
  for (size_t i = 0; i < shape.columns.size() && i < tuple.size(); ++i) {
    if (!shape.columns[i].key) continue;
    if (!first) out += ',';
    first = false;
    appendJsonString(shape.columns[i].name, out);
    out += ':';
    appendColumnJson(shape.columns[i], tuple[i], out);
  }
  out += '}';
}

void appendValueJson(char op, const TableShape& shape, const Tuple* before, const Tuple* after,
                     const EventSource& source, std::string& out) {
  out += "{\"before\":";
  appendRow(shape, before, out);
  out += ",\"after\":";
  appendRow(shape, after, out);
  out += ',';
  appendSource(shape, source, out);
  out += ",\"op\":\"";
  out += op;
  out += "\",\"ts_ms\":";
  appendInt(source.processedMs, out);
  out += ",\"transaction\":null}";
}

// ---------------------------------------------------------------------------------------------
// The compact form: a fixed header, then each image present (before, then after) as its column
// count and, per column, the value's kind, length and bytes.

namespace {

struct CompactHeader {
  const TableShape* shape;
  int64_t commitTimeMs;
  uint64_t lsn;
  uint64_t commitLsn;
  int64_t processedMs;
  uint32_t xid;
  char op;
  bool snapshot;  // EventSource::snapshot "true" (else "false")
  bool hasBefore;
  bool hasAfter;
};

template <class T>
void appendRaw(const T& v, std::string& out) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void appendCompactTuple(const TableShape& shape, const Tuple& tuple, std::string& out) {
  const auto n = static_cast<uint32_t>(std::min(shape.columns.size(), tuple.size()));
  appendRaw(n, out);
  for (uint32_t i = 0; i < n; ++i) {
    out += static_cast<char>(tuple[i].kind);
    appendRaw(static_cast<uint32_t>(tuple[i].bytes.size()), out);
    out.append(tuple[i].bytes);
  }
}

// Reads the compact form written by appendCompactValue (the source's own bytes: never damaged).
class CompactReader {
 public:
  explicit CompactReader(std::string_view in) : in_(in) { std::memcpy(&header_, take(sizeof header_).data(), sizeof header_); }
  const CompactHeader& header() const { return header_; }
  // Calls f(column index, value) for each column of the next image.
  template <class F>
  void forEachColumn(F&& f) {
    uint32_t n;
    std::memcpy(&n, take(sizeof n).data(), sizeof n);
    for (uint32_t i = 0; i < n; ++i) {
      pgoutput::Value v;
      v.kind = static_cast<pgoutput::Value::Kind>(take(1)[0]);
      uint32_t len;
      std::memcpy(&len, take(sizeof len).data(), sizeof len);
      v.bytes = take(len);
      f(i, v);
    }
  }

 private:
  std::string_view take(size_t n) {
    if (in_.size() < n) throw InternalError("pgoutput-compact: a record's value is truncated");
    auto out = in_.substr(0, n);
    in_.remove_prefix(n);
    return out;
  }
  std::string_view in_;
  CompactHeader header_;
};

// The Value the JSON parser gives for the scalar appendScalarJson writes.
debezium::detail::Value jsonValue(const JsonScalar& v) {
  using K = debezium::detail::Value::Kind;
  debezium::detail::Value out;
  switch (v.kind) {
    case JsonScalar::Kind::kNull: break;
    case JsonScalar::Kind::kBool: out.kind = K::kBool; out.b = v.b; break;
    case JsonScalar::Kind::kInt: out.kind = K::kInt; out.i = v.i; break;
    case JsonScalar::Kind::kString: out.kind = K::kString; out.s = v.s; break;
    case JsonScalar::Kind::kDouble: {
      // The shortest text of v may be an integer ("3"): the parser then gives an integer.
      char buf[32];
      auto r = std::to_chars(buf, buf + sizeof buf, v.d);
      std::string_view text(buf, r.ptr);
      if (text.find_first_of(".eE") == std::string_view::npos) {
        if (parseNumber(text, out.i)) {
          out.kind = K::kInt;
          break;
        }
        if (parseNumber(text, out.u)) {
          out.kind = K::kUint;
          break;
        }
      }
      out.kind = K::kDouble;
      out.d = v.d;
      break;
    }
  }
  return out;
}

// Per thread: the images and text an envelope points at, reused by the next call.
struct EnvelopeScratch {
  debezium::detail::RowImage before, after;
  std::deque<std::string> texts;  // a deque: growing it moves no string that a view points into
  size_t used = 0;
  std::string& nextText() {
    if (used == texts.size()) texts.emplace_back();
    return texts[used++];
  }
};

}  // namespace

void appendCompactValue(char op, const TableShape& shape, const Tuple* before, const Tuple* after,
                        const EventSource& source, std::string& out) {
  CompactHeader h{&shape, source.commitTimeMs, source.lsn, source.commitLsn, source.processedMs, source.xid, op,
                  source.snapshot == "true", before != nullptr, after != nullptr};
  // One allocation for the record, not a growth per part.
  size_t size = out.size() + sizeof h;
  for (const Tuple* t : {before, after}) {
    if (!t) continue;
    size += sizeof(uint32_t) + t->size() * (1 + sizeof(uint32_t));
    for (const auto& v : *t) size += v.bytes.size();
  }
  out.reserve(size);
  appendRaw(h, out);
  if (before) appendCompactTuple(shape, *before, out);
  if (after) appendCompactTuple(shape, *after, out);
}

void CompactEventCodec::render(const LogRecord& record, std::string& out) const {
  CompactReader reader(record.value);
  const CompactHeader& h = reader.header();
  Tuple before, after;
  auto read = [&](Tuple& t) { reader.forEachColumn([&](uint32_t, const pgoutput::Value& v) { t.push_back(v); }); };
  if (h.hasBefore) read(before);
  if (h.hasAfter) read(after);
  EventSource source{connectorName_, database_, h.commitTimeMs, h.xid, h.lsn, h.commitLsn,
                     h.snapshot ? "true" : "false", h.processedMs};
  appendValueJson(h.op, *h.shape, h.hasBefore ? &before : nullptr, h.hasAfter ? &after : nullptr, source, out);
}

dataflow::Result<debezium::detail::Envelope> CompactEventCodec::envelope(const LogRecord& record) const {
  thread_local EnvelopeScratch scratch;
  scratch.used = 0;
  CompactReader reader(record.value);
  const CompactHeader& h = reader.header();
  const TableShape& shape = *h.shape;
  bool utf8 = true;
  auto read = [&](debezium::detail::RowImage& image) {
    image.fields.clear();
    reader.forEachColumn([&](uint32_t i, const pgoutput::Value& v) {
      JsonScalar scalar = columnScalar(shape.columns[i], v, scratch.nextText());
      if (scalar.kind == JsonScalar::Kind::kString && !debezium::detail::validUtf8(scalar.s)) utf8 = false;
      image.fields.emplace_back(shape.columns[i].name, jsonValue(scalar));
    });
  };
  debezium::detail::Envelope env;
  env.op = static_cast<debezium::Operation>(h.op);
  if (h.hasBefore) {
    read(scratch.before);
    env.before = &scratch.before;
  }
  if (h.hasAfter) {
    read(scratch.after);
    env.after = &scratch.after;
  }
  // As parsing the rendered JSON would: text that is not UTF-8 fails the whole event.
  if (!utf8) return parseError("invalid_utf8", "the payload is not valid UTF-8");
  debezium::SourceInfo& src = env.source;
  src.connector = "postgresql";
  src.name = connectorName_;
  src.db = database_;
  src.schema = shape.schema;
  src.table = shape.table;
  src.tsMs = h.commitTimeMs;
  src.txId = h.xid;
  src.lsn = static_cast<int64_t>(h.lsn);
  src.snapshot = h.snapshot ? "true" : "false";
  std::string sequence = "[\"";
  appendInt(static_cast<int64_t>(h.commitLsn), sequence);
  sequence += "\",\"";
  appendInt(static_cast<int64_t>(h.lsn), sequence);
  sequence += "\"]";
  src.sequence = std::move(sequence);
  env.tsMs = h.processedMs;
  return env;
}

}  // namespace dataflow::postgres::detail
