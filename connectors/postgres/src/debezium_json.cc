// Type mapping from pgoutput's text form (the walsender runs with DateStyle=ISO, TimeZone=UTC,
// extra_float_digits=3, set by the source) to Debezium's JSON values. A value that does not parse
// as its type says it would (a BC date, an infinite timestamp) is passed as a string, never lost.
#include "debezium_json.h"

#include <charconv>
#include <cstring>

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

// Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
int64_t daysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// "YYYY-MM-DD" (ISO DateStyle; four-digit years only, AD).
bool parseDate(std::string_view s, int64_t& days) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  int64_t y;
  unsigned m, d;
  if (!parseNumber(s.substr(0, 4), y) || !parseNumber(s.substr(5, 2), m) || !parseNumber(s.substr(8, 2), d)) return false;
  if (m < 1 || m > 12 || d < 1 || d > 31) return false;
  days = daysFromCivil(y, m, d);
  return true;
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
  if (s.size() < 19 || s[10] != ' ' || !parseDate(s.substr(0, 10), days) || !parseTime(s.substr(11), time, rest)) return false;
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
bool appendByteaBase64(std::string_view s, std::string& out) {
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
  out += '"';
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
  out += '"';
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

void appendColumnJson(const pgoutput::Column& column, const pgoutput::Value& value, std::string& out) {
  using Kind = pgoutput::Value::Kind;
  if (value.kind == Kind::kNull) {
    out += "null";
    return;
  }
  if (value.kind == Kind::kUnchangedToast) {
    appendJsonString(kUnavailable, out);
    return;
  }
  const std::string_view s = value.bytes;
  if (value.kind == Kind::kBinary) {
    // Only with the binary option, which the source never asks for; kept as text, not lost.
    appendJsonString(s, out);
    return;
  }
  switch (column.typeOid) {
    case kBool:
      if (s == "t" || s == "f") {
        out += s == "t" ? "true" : "false";
        return;
      }
      break;
    case kInt2:
    case kInt4:
    case kInt8:
    case kOid: {
      // Written in canonical form, not as sent: a text like "-0719" parses, but leading zeros are
      // not JSON (found by the fuzzer).
      int64_t v;
      if (parseNumber(s, v)) {
        appendInt(v, out);
        return;
      }
      break;
    }
    case kFloat4:
    case kFloat8: {
      double v;
      // NaN and the infinities are not JSON numbers: they stay strings.
      if (parseNumber(s, v) && s.find_first_of("nN") == std::string_view::npos) {
        char buf[32];  // the shortest text that reads back as v, valid JSON whatever was sent
        auto r = std::to_chars(buf, buf + sizeof buf, v);
        out.append(buf, r.ptr);
        return;
      }
      break;
    }
    case kDate: {
      int64_t days;
      if (parseDate(s, days)) {
        appendInt(days, out);
        return;
      }
      break;
    }
    case kTime: {
      int64_t micros;
      std::string_view rest;
      if (parseTime(s, micros, rest) && rest.empty()) {
        appendInt(timePrecision(column.typeModifier) <= 3 ? micros / 1000 : micros, out);
        return;
      }
      break;
    }
    case kTimestamp: {
      // MicroTimestamp (precision 4-6) or Timestamp in ms (0-3): the wall clock read as UTC.
      int64_t micros;
      std::string_view rest;
      if (parseTimestamp(s, micros, rest) && rest.empty()) {
        appendInt(timePrecision(column.typeModifier) <= 3 ? micros / 1000 : micros, out);
        return;
      }
      break;
    }
    case kTimestampTz: {
      // ZonedTimestamp: ISO-8601 in UTC with "Z". The walsender prints UTC ("+00").
      int64_t micros;
      std::string_view rest;
      if (parseTimestamp(s, micros, rest) && rest == "+00") {
        std::string iso(s.substr(0, s.size() - 3));
        iso[10] = 'T';
        iso += 'Z';
        appendJsonString(iso, out);
        return;
      }
      break;
    }
    case kBytea:
      if (appendByteaBase64(s, out)) return;
      break;
    default:
      break;  // numeric (decimal.handling.mode=string), text, json, uuid, arrays, enums, ...: strings
  }
  appendJsonString(s, out);
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

void appendTruncateJson(const TableShape& shape, const EventSource& source, std::string& out) {
  appendValueJson('t', shape, nullptr, nullptr, source, out);
}

}  // namespace dataflow::postgres::detail
