// Envelope parsing and column decoding. Each thread keeps one Boost.JSON parser and a monotonic
// buffer that is released before the next record, so a record costs no heap allocation unless it
// is larger than the buffer.
#include "dataflow/debezium/change_event.h"

#include <boost/json.hpp>

#include <array>
#include <charconv>
#include <cstring>

namespace dataflow::debezium {

namespace json = boost::json;

std::string_view toString(Operation op) {
  switch (op) {
    case Operation::kCreate: return "c";
    case Operation::kUpdate: return "u";
    case Operation::kDelete: return "d";
    case Operation::kRead: return "r";
    case Operation::kTruncate: return "t";
    case Operation::kMessage: return "m";
  }
  return "?";
}

namespace {

// Howard Hinnant's civil-from-days and days-from-civil.
int64_t daysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}
void civilFromDays(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y += m <= 2;
}

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

bool base64Decode(std::string_view in, std::string& out) {
  static constexpr std::array<int8_t, 256> kTable = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t padding = 0;
  for (char ch : in) {
    if (ch == '=') {
      ++padding;
      continue;
    }
    if (padding) return false;
    int8_t v = kTable[static_cast<unsigned char>(ch)];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return padding <= 2;
}

// Canonical decimal text of a big-endian two's-complement unscaled integer.
bool unscaledToText(const std::string& bytes, int scale, std::string& out) {
  if (bytes.empty() || bytes.size() > 16 || scale < 0 || scale > 38) return false;
  __int128 v = (static_cast<signed char>(bytes[0]) < 0) ? -1 : 0;
  for (char b : bytes) v = (v << 8) | static_cast<unsigned char>(b);
  bool negative = v < 0;
  unsigned __int128 u = negative ? static_cast<unsigned __int128>(-(v + 1)) + 1 : static_cast<unsigned __int128>(v);
  std::string digits;
  do {
    digits.push_back(static_cast<char>('0' + static_cast<int>(u % 10)));
    u /= 10;
  } while (u);
  while (static_cast<int>(digits.size()) <= scale) digits.push_back('0');
  out.clear();
  if (negative) out.push_back('-');
  for (size_t i = digits.size(); i-- > 0;) {
    out.push_back(digits[i]);
    if (scale > 0 && i == static_cast<size_t>(scale)) out.push_back('.');
  }
  return true;
}

bool isDecimalText(std::string_view s) {
  size_t i = 0;
  if (i < s.size() && (s[i] == '-' || s[i] == '+')) ++i;
  size_t digits = 0, dots = 0;
  for (; i < s.size(); ++i) {
    if (s[i] >= '0' && s[i] <= '9') ++digits;
    else if (s[i] == '.' && dots == 0) ++dots;
    else return false;
  }
  return digits > 0;
}

template <class T>
bool parseInt(std::string_view s, T& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// "2026-11-26T05:02:59.561558Z", "...+02:00", "... 05:02:59" (space), "infinity", "-infinity".
bool parseIsoTimestamp(std::string_view s, Timestamp& out) {
  if (s == "infinity") {
    out = {0, Timestamp::Special::kInfinity};
    return true;
  }
  if (s == "-infinity") {
    out = {0, Timestamp::Special::kMinusInfinity};
    return true;
  }
  if (s.size() < 19 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != ' ') || s[13] != ':' || s[16] != ':') {
    return false;
  }
  int64_t y;
  unsigned mo, d, h, mi, se;
  if (!parseInt(s.substr(0, 4), y) || !parseInt(s.substr(5, 2), mo) || !parseInt(s.substr(8, 2), d) ||
      !parseInt(s.substr(11, 2), h) || !parseInt(s.substr(14, 2), mi) || !parseInt(s.substr(17, 2), se)) {
    return false;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return false;
  size_t i = 19;
  int64_t fraction = 0;
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
  int64_t offsetSeconds = 0;
  if (i < s.size()) {
    if (s[i] == 'Z' && i + 1 == s.size()) {
      ++i;
    } else if ((s[i] == '+' || s[i] == '-') && s.size() - i >= 3) {
      int sign = s[i] == '-' ? -1 : 1;
      unsigned oh = 0, om = 0;
      if (!parseInt(s.substr(i + 1, 2), oh)) return false;
      size_t rest = i + 3;
      if (rest < s.size()) {
        if (s[rest] == ':') ++rest;
        if (!parseInt(s.substr(rest, 2), om) || rest + 2 != s.size()) return false;
      }
      offsetSeconds = sign * static_cast<int64_t>(oh * 3600 + om * 60);
      i = s.size();
    } else {
      return false;
    }
  }
  int64_t seconds = daysFromCivil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se - offsetSeconds;
  out = {seconds * 1000000 + fraction, Timestamp::Special::kNone};
  return true;
}

const json::object* findFieldSchema(const json::object* structSchema, std::string_view name) {
  if (!structSchema) return nullptr;
  auto it = structSchema->find("fields");
  if (it == structSchema->end() || !it->value().is_array()) return nullptr;
  for (const auto& f : it->value().get_array()) {
    if (!f.is_object()) continue;
    auto fn = f.get_object().find("field");
    if (fn != f.get_object().end() && fn->value().is_string() && fn->value().get_string() == name) {
      return &f.get_object();
    }
  }
  return nullptr;
}

std::string_view schemaString(const json::object* schema, std::string_view key) {
  if (!schema) return {};
  auto it = schema->find(key);
  if (it == schema->end() || !it->value().is_string()) return {};
  return it->value().get_string();
}

int schemaScale(const json::object* schema) {
  if (!schema) return -1;
  auto it = schema->find("parameters");
  if (it == schema->end() || !it->value().is_object()) return -1;
  auto sc = it->value().get_object().find("scale");
  if (sc == it->value().get_object().end() || !sc->value().is_string()) return -1;
  int scale = -1;
  return parseInt(std::string_view(sc->value().get_string()), scale) ? scale : -1;
}

std::string kindOf(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "boolean";
    case json::kind::int64:
    case json::kind::uint64: return "integer";
    case json::kind::double_: return "number";
    case json::kind::string: return "string";
    case json::kind::array: return "array";
    case json::kind::object: return "object";
  }
  return "?";
}

ParseError wrongType(std::string_view column, std::string_view expected, const json::value& v) {
  return parseError("wrong_type", "column '" + std::string(column) + "': expected " + std::string(expected) +
                                      ", got " + kindOf(v));
}

std::optional<std::string> optString(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end() || !it->value().is_string()) return std::nullopt;
  return std::string(it->value().get_string());
}
std::optional<int64_t> optInt(const json::object& o, std::string_view key) {
  auto it = o.find(key);
  if (it == o.end()) return std::nullopt;
  if (it->value().is_int64()) return it->value().get_int64();
  if (it->value().is_uint64()) return static_cast<int64_t>(it->value().get_uint64());
  return std::nullopt;
}

struct ThreadParser {
  unsigned char buffer[64 * 1024];
  json::monotonic_resource resource{buffer, sizeof buffer};
  json::parser parser;
  // Emplaced (move-constructed) from the parser: assigning a value that lives in another memory
  // resource would deep-copy it.
  std::optional<json::value> root;
};

}  // namespace

std::string Timestamp::toString() const {
  if (special == Special::kInfinity) return "infinity";
  if (special == Special::kMinusInfinity) return "-infinity";
  int64_t days = micros >= 0 ? micros / 86400000000LL : -((-micros + 86400000000LL - 1) / 86400000000LL);
  int64_t rest = micros - days * 86400000000LL;
  int64_t y;
  unsigned m, d;
  civilFromDays(days, y, m, d);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02lld:%02lld:%02lld.%06lldZ", static_cast<long long>(y), m, d,
                static_cast<long long>(rest / 3600000000LL), static_cast<long long>(rest / 60000000LL % 60),
                static_cast<long long>(rest / 1000000 % 60), static_cast<long long>(rest % 1000000));
  return buf;
}

std::string Date::toString() const {
  int64_t y;
  unsigned m, d;
  civilFromDays(days, y, m, d);
  char buf[24];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02u", static_cast<long long>(y), m, d);
  return buf;
}

namespace detail {

Result<Envelope> parseEnvelope(std::string_view payload) {
  if (payload.empty()) return parseError("empty_payload", "the record value is empty");
  thread_local ThreadParser tp;
  tp.root.reset();  // drop the previous record before its storage is released
  tp.resource.release();
  tp.parser.reset(json::storage_ptr(&tp.resource));
  json::error_code ec;
  tp.parser.write(payload.data(), payload.size(), ec);
  if (ec) {
    if (ec == json::error::incomplete) {
      return parseError("truncated_json", "the JSON ends early (" + std::to_string(payload.size()) + " bytes)");
    }
    if (!validUtf8(payload)) return parseError("invalid_utf8", "the payload is not valid UTF-8");
    return parseError("malformed_json", "invalid JSON: " + ec.message());
  }
  tp.root.emplace(tp.parser.release());
  if (!tp.root->is_object()) return parseError("malformed_envelope", "the value is a JSON " + kindOf(*tp.root) + ", not an object");
  const json::object* event = &tp.root->get_object();
  const json::object* schema = nullptr;
  // With schemas.enable=true the event is {"schema": ..., "payload": ...}.
  if (auto p = event->find("payload"); p != event->end() && event->contains("schema")) {
    if (auto s = event->find("schema"); s->value().is_object()) schema = &s->value().get_object();
    if (!p->value().is_object()) {
      return parseError("malformed_envelope", "'payload' is a " + kindOf(p->value()) + ", not an object");
    }
    event = &p->value().get_object();
  }
  // One pass over the envelope's fields (and the source block's): cheaper than a lookup per field.
  Envelope env;
  const json::value* op = nullptr;
  const json::object* source = nullptr;
  for (const auto& [key, value] : *event) {
    if (key == "op") {
      op = &value;
    } else if (key == "before" || key == "after") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return parseError("wrong_type", "'" + std::string(key) + "' is a " + kindOf(value) + ", not an object");
      }
      (key == "before" ? env.before : env.after) = &value.get_object();
    } else if (key == "source") {
      if (value.is_object()) source = &value.get_object();
    } else if (key == "ts_ms") {
      if (value.is_int64()) env.tsMs = value.get_int64();
    }
  }
  if (!op || op->is_null()) return parseError("missing_field", "'op' is null or absent");
  if (!op->is_string()) return parseError("wrong_type", "'op' is a " + kindOf(*op) + ", not a string");
  std::string_view opText = op->get_string();
  if (opText.size() != 1 || std::string_view("cudrtm").find(opText[0]) == std::string_view::npos) {
    return parseError("unknown_operation", "unknown operation '" + std::string(opText.substr(0, 32)) + "'");
  }
  env.op = static_cast<Operation>(opText[0]);
  if (source) {
    SourceInfo& info = env.source;
    auto str = [](const json::value& v, std::string& out) {
      if (v.is_string()) out.assign(v.get_string().data(), v.get_string().size());
    };
    auto integer = [](const json::value& v) -> std::optional<int64_t> {
      if (v.is_int64()) return v.get_int64();
      if (v.is_uint64()) return static_cast<int64_t>(v.get_uint64());
      return std::nullopt;
    };
    for (const auto& [key, value] : *source) {
      if (key == "lsn") info.lsn = integer(value);
      else if (key == "ts_ms") info.tsMs = integer(value).value_or(0);
      else if (key == "txId") info.txId = integer(value);
      else if (key == "table") str(value, info.table);
      else if (key == "schema") str(value, info.schema);
      else if (key == "db") str(value, info.db);
      else if (key == "name") str(value, info.name);
      else if (key == "connector") str(value, info.connector);
      else if (key == "snapshot") {
        if (value.is_string()) str(value, info.snapshot);
        else if (value.is_bool()) info.snapshot = value.get_bool() ? "true" : "false";
      } else if (key == "sequence" && value.is_string()) {
        info.sequence.emplace(value.get_string().data(), value.get_string().size());
      }
    }
  } else if (env.op != Operation::kMessage) {
    return parseError("missing_field", "'source' is null or absent");
  }
  if (schema) {
    // The `after` (or `before`) field's struct schema describes the row's columns.
    const json::object* afterSchema = findFieldSchema(schema, "after");
    env.afterSchema = afterSchema ? afterSchema : findFieldSchema(schema, "before");
  }
  return env;
}

std::optional<ParseError> decodeField(const json::object& row, const json::object* schema, std::string_view name,
                                      const ColumnOptions& options, Member& out, bool& present) {
  auto it = row.find(name);
  present = false;
  if (it == row.end() || it->value().is_null()) return std::nullopt;
  const json::value& v = it->value();
  if (v.is_string() && v.get_string() == "__debezium_unavailable_value") {
    // An unchanged TOASTed value under REPLICA IDENTITY DEFAULT: not known, treated as absent.
    return std::nullopt;
  }
  const json::object* field = findFieldSchema(schema, name);
  std::optional<ParseError> error;
  std::visit(
      [&](auto& target) {
        using T = std::decay_t<decltype(target)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, int32_t>) {
          int64_t x;
          if (v.is_int64()) x = v.get_int64();
          else if (v.is_uint64() && v.get_uint64() <= static_cast<uint64_t>(INT64_MAX)) x = static_cast<int64_t>(v.get_uint64());
          else return void(error = wrongType(name, "an integer", v));
          if constexpr (std::is_same_v<T, int32_t>) {
            if (x < INT32_MIN || x > INT32_MAX) return void(error = parseError("wrong_type", "column '" + std::string(name) + "': " + std::to_string(x) + " does not fit int32"));
          }
          target = static_cast<T>(x);
        } else if constexpr (std::is_same_v<T, bool>) {
          if (!v.is_bool()) return void(error = wrongType(name, "a boolean", v));
          target = v.get_bool();
        } else if constexpr (std::is_same_v<T, double>) {
          if (v.is_double()) target = v.get_double();
          else if (v.is_int64()) target = static_cast<double>(v.get_int64());
          else return void(error = wrongType(name, "a number", v));
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (!v.is_string()) return void(error = wrongType(name, "a string", v));
          target.assign(v.get_string().data(), v.get_string().size());
        } else if constexpr (std::is_same_v<T, Decimal>) {
          if (v.is_object()) {  // io.debezium.data.VariableScaleDecimal {"scale": 4, "value": "<base64>"}
            const auto& o = v.get_object();
            auto sc = o.find("scale");
            auto val = o.find("value");
            std::string bytes;
            if (sc == o.end() || !sc->value().is_int64() || val == o.end() || !val->value().is_string() ||
                !base64Decode(val->value().get_string(), bytes) ||
                !unscaledToText(bytes, static_cast<int>(sc->value().get_int64()), target.text)) {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': malformed variable-scale decimal"));
            }
          } else if (v.is_double()) {
            char buf[64];
            auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v.get_double());
            target.text.assign(buf, p);
          } else if (v.is_int64()) {
            target.text = std::to_string(v.get_int64());
          } else if (v.is_string()) {
            std::string_view s = v.get_string();
            int scale = schemaScale(field);
            // Without a schema, a declared scale allows base64 (precise) values; decimal text is
            // still recognised: with a scale > 0 it always has a '.', which base64 never has.
            bool text = isDecimalText(s) && (s.find('.') != std::string_view::npos || options.decimalScale <= 0);
            bool precise = schemaString(field, "type") == "bytes" || (!field && !text && options.decimalScale >= 0);
            if (precise) {
              if (scale < 0) scale = options.decimalScale;
              std::string bytes;
              if (scale < 0) {
                return void(error = parseError("wrong_type", "column '" + std::string(name) + "': precise decimal without a scale"));
              }
              if (!base64Decode(s, bytes) || !unscaledToText(bytes, scale, target.text)) {
                return void(error = parseError("wrong_type", "column '" + std::string(name) + "': malformed base64 decimal"));
              }
            } else if (isDecimalText(s)) {
              target.text.assign(s.data(), s.size());
            } else {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': '" + std::string(s.substr(0, 40)) +
                                                               "' is not a decimal (a precise decimal without a schema needs a declared scale)"));
            }
          } else {
            return void(error = wrongType(name, "a decimal", v));
          }
        } else if constexpr (std::is_same_v<T, Timestamp>) {
          if (v.is_string()) {
            if (!parseIsoTimestamp(v.get_string(), target)) {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': '" +
                                                               std::string(v.get_string().subview(0, 40)) + "' is not a timestamp"));
            }
          } else if (v.is_int64()) {
            std::string_view semantic = schemaString(field, "name");
            int64_t x = v.get_int64();
            if (semantic == "io.debezium.time.Timestamp" || (semantic.empty() && options.integerTimestamp == IntegerTimestamp::kMillis)) {
              target = {x * 1000, Timestamp::Special::kNone};
            } else if (semantic == "io.debezium.time.NanoTimestamp") {
              target = {x / 1000, Timestamp::Special::kNone};
            } else {
              target = {x, Timestamp::Special::kNone};
            }
          } else {
            return void(error = wrongType(name, "a timestamp", v));
          }
        } else if constexpr (std::is_same_v<T, Date>) {
          if (!v.is_int64() || v.get_int64() < INT32_MIN || v.get_int64() > INT32_MAX) return void(error = wrongType(name, "a date (days)", v));
          target.days = static_cast<int32_t>(v.get_int64());
        }
      },
      out);
  if (!error) present = true;
  return error;
}

}  // namespace detail
}  // namespace dataflow::debezium
