// Envelope parsing and column decoding. Each thread keeps one Boost.JSON parser and a monotonic
// buffer that is released before the next record, so a record costs no heap allocation unless it
// is larger than the buffer.
#include "dataflow/debezium/change_event.h"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/error.hpp>

#include <array>
#include <memory>
#include <tuple>
#include <vector>
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

}  // namespace

std::string Timestamp::toString() const {
  if (special == Special::kInfinity) return "infinity";
  if (special == Special::kMinusInfinity) return "-infinity";
  // Floor division without negating (or multiplying back) micros: both overflow near INT64_MIN.
  constexpr int64_t kMicrosPerDay = 86400000000LL;
  int64_t days = micros / kMicrosPerDay;
  int64_t rest = micros % kMicrosPerDay;
  if (rest < 0) {
    rest += kMicrosPerDay;
    --days;
  }
  int64_t y;
  unsigned m, d;
  civilFromDays(days, y, m, d);
  if (y < 0 || y > 9999) {  // rare: the general (slower) formatter
    char buf[48];
    std::snprintf(buf, sizeof buf, "%04lld-%02u-%02uT%02lld:%02lld:%02lld.%06lldZ", static_cast<long long>(y), m, d,
                  static_cast<long long>(rest / 3600000000LL), static_cast<long long>(rest / 60000000LL % 60),
                  static_cast<long long>(rest / 1000000 % 60), static_cast<long long>(rest % 1000000));
    return buf;
  }
  // Digits by hand: this runs for every timestamp of every change, where snprintf was a tenth of a
  // drain's parse time.
  std::string out(27, '0');
  char* p = out.data();
  auto put = [](char* at, int64_t value, int width) {
    for (int i = width - 1; i >= 0; --i, value /= 10) at[i] = static_cast<char>('0' + value % 10);
  };
  put(p, y, 4);
  p[4] = '-';
  put(p + 5, m, 2);
  p[7] = '-';
  put(p + 8, d, 2);
  p[10] = 'T';
  put(p + 11, rest / 3600000000LL, 2);
  p[13] = ':';
  put(p + 14, rest / 60000000LL % 60, 2);
  p[16] = ':';
  put(p + 17, rest / 1000000 % 60, 2);
  p[19] = '.';
  put(p + 20, rest % 1000000, 6);
  p[26] = 'Z';
  return out;
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

// ------------------------------------------------------------------------------------------
// What the streaming parser keeps of an event: only the parts a decoder can ask for.

struct FieldSchema {
  std::string_view field, type, name;
  int scale = -1;
};

struct RowSchema {
  std::vector<FieldSchema> fields;
  const FieldSchema* find(std::string_view key) const {
    for (const auto& f : fields) {
      if (f.field == key) return &f;
    }
    return nullptr;
  }
};

namespace {

std::string_view kindName(Value::Kind k) {
  switch (k) {
    case Value::Kind::kNull: return "null";
    case Value::Kind::kBool: return "boolean";
    case Value::Kind::kInt:
    case Value::Kind::kUint: return "integer";
    case Value::Kind::kDouble: return "number";
    case Value::Kind::kString: return "string";
    case Value::Kind::kObject: return "object";
    case Value::Kind::kArray: return "array";
  }
  return "?";
}

// Bump allocation for the strings of one record; reset (not freed) before the next.
class Arena {
 public:
  std::string_view copy(std::string_view s) {
    if (s.empty()) return {};
    if (blocks_.empty() || used_ + s.size() > size_) grow(s.size());
    char* p = blocks_.back().get() + used_;
    std::memcpy(p, s.data(), s.size());
    used_ += s.size();
    return {p, s.size()};
  }
  void reset() {
    if (blocks_.size() > 1) {
      // Keep one block as large as the last record needed.
      blocks_.erase(blocks_.begin(), blocks_.end() - 1);
    }
    used_ = 0;
  }

 private:
  void grow(size_t need) {
    size_ = std::max<size_t>(need, blocks_.empty() ? 64 * 1024 : size_ * 2);
    blocks_.push_back(std::make_unique<char[]>(size_));
    used_ = 0;
  }
  std::vector<std::unique_ptr<char[]>> blocks_;
  size_t used_ = 0;
  size_t size_ = 0;
};

// The fields of one envelope level: the root (no schema) or the "payload" object (schema on).
struct EventFields {
  std::optional<Value> op;
  Value::Kind beforeKind = Value::Kind::kNull, afterKind = Value::Kind::kNull;
  bool hasSource = false;
  Value::Kind sourceKind = Value::Kind::kNull;
  RowImage before, after;
  std::optional<int64_t> tsMs;
  SourceInfo source;
  void clear() {
    op.reset();
    beforeKind = afterKind = sourceKind = Value::Kind::kNull;
    hasSource = false;
    before.fields.clear();
    after.fields.clear();
    tsMs.reset();
    source = SourceInfo{};
  }
};

// A boost::json::basic_parser handler that walks the event once and keeps what EventFields and
// the row schema need; everything else is skipped without being stored.
struct Handler {
  static constexpr std::size_t max_object_size = std::size_t(-1);
  static constexpr std::size_t max_array_size = std::size_t(-1);
  static constexpr std::size_t max_key_size = std::size_t(-1);
  static constexpr std::size_t max_string_size = std::size_t(-1);

  enum class Role : uint8_t {
    kRoot, kEvent, kRow, kRowNested, kSource, kSchemaRoot, kSchemaFields, kSchemaStruct, kStructFields,
    kFieldSchema, kParams, kSkip
  };
  struct Frame {
    Role role;
    int event = 0;       // 0: root level, 1: "payload"
    bool after = false;  // kRow: which image
  };

  Arena arena;
  std::vector<Frame> stack;
  std::string text;  // parts of a string value being accumulated
  // The current key: a fixed buffer (keys are short; a std::string costs more per key), with
  // std::string for the rare long one.
  char keyBuf[128];
  size_t keyLen = 0;
  std::string longKey;
  bool keyIsLong = false;
  // A key or string that the parser hands over whole and unescaped points into the input, which
  // outlives the parse: such views are kept without a copy.
  std::string_view input;
  std::string_view inputKey;
  bool inInput(json::string_view s) const {
    return s.data() >= input.data() && s.data() + s.size() <= input.data() + input.size();
  }
  std::string_view key() const {
    if (!inputKey.empty()) return inputKey;
    return keyIsLong ? std::string_view(longKey) : std::string_view(keyBuf, keyLen);
  }
  void clearKey() {
    keyLen = 0;
    keyIsLong = false;
    longKey.clear();
    inputKey = {};
  }
  void appendKey(std::string_view part) {
    if (!keyIsLong && keyLen + part.size() <= sizeof keyBuf) {
      std::memcpy(keyBuf + keyLen, part.data(), part.size());
      keyLen += part.size();
      return;
    }
    if (!keyIsLong) {
      longKey.assign(keyBuf, keyLen);
      keyIsLong = true;
    }
    longKey.append(part);
  }
  Value::Kind rootKind = Value::Kind::kNull;
  bool rootHasSchema = false, rootHasPayload = false;
  Value::Kind payloadKind = Value::Kind::kNull;
  EventFields events[2];
  // Schema: the struct being read and its fields; the row schemas found.
  std::string_view structField;
  std::vector<FieldSchema> pending;
  FieldSchema current;
  RowSchema afterSchema, beforeSchema;
  bool hasAfterSchema = false, hasBeforeSchema = false;

  void reset() {
    arena.reset();
    stack.clear();
    clearKey();
    text.clear();
    rootKind = Value::Kind::kNull;
    rootHasSchema = rootHasPayload = false;
    payloadKind = Value::Kind::kNull;
    events[0].clear();
    events[1].clear();
    pending.clear();
    afterSchema.fields.clear();
    beforeSchema.fields.clear();
    hasAfterSchema = hasBeforeSchema = false;
  }

  // Key comparisons against literals: string_view, so no strlen or std::string::compare per call.
  bool is(std::string_view k) const { return key() == k; }

  Role top() const { return stack.empty() ? Role::kSkip : stack.back().role; }

  // A value (scalar, object or array) starts in the current frame under the current key.
  void onValue(const Value& v) {
    if (stack.empty()) {
      rootKind = v.kind;
      return;
    }
    Frame& f = stack.back();
    switch (f.role) {
      case Role::kRoot:
        if (is("schema")) rootHasSchema = true;
        if (is("payload")) {
          rootHasPayload = true;
          payloadKind = v.kind;
        }
        [[fallthrough]];
      case Role::kEvent: {
        EventFields& e = events[f.event];
        std::string_view k = key();
        // Dispatch on the length first: most keys of an event are compared against nothing.
        switch (k.size()) {
          case 2:
            if (k == "op") e.op = v;
            break;
          case 5:
            if (k == "after") e.afterKind = v.kind;
            else if (k == "ts_ms" && v.kind == Value::Kind::kInt) e.tsMs = v.i;
            break;
          case 6:
            if (k == "before") e.beforeKind = v.kind;
            else if (k == "source") {
              e.hasSource = true;
              e.sourceKind = v.kind;
            }
            break;
          default:
            break;
        }
        break;
      }
      case Role::kRow: {
        EventFields& e = events[f.event];
        std::string_view k = inputKey.empty() ? arena.copy(key()) : inputKey;
        (f.after ? e.after : e.before).fields.emplace_back(k, v);
        break;
      }
      case Role::kRowNested: {
        // The object value of the last row field.
        Frame& row = stack[stack.size() - 2];
        EventFields& e = events[row.event];
        Value& target = (row.after ? e.after : e.before).fields.back().second;
        if (is("scale") && v.kind == Value::Kind::kInt) target.scale = v.i;
        if (is("value") && v.kind == Value::Kind::kString) target.scaledValue = v.s;
        break;
      }
      case Role::kSource: {
        SourceInfo& src = events[f.event].source;
        std::string_view k = key();
        auto integer = [&]() -> std::optional<int64_t> {
          if (v.kind == Value::Kind::kInt) return v.i;
          if (v.kind == Value::Kind::kUint) return static_cast<int64_t>(v.u);
          return std::nullopt;
        };
        auto str = [&](std::string& out) {
          if (v.kind == Value::Kind::kString) out.assign(v.s);
        };
        switch (k.size()) {
          case 2:
            if (k == "db") str(src.db);
            break;
          case 3:
            if (k == "lsn") src.lsn = integer();
            break;
          case 4:
            if (k == "txId") src.txId = integer();
            else if (k == "name") str(src.name);
            break;
          case 5:
            if (k == "ts_ms") src.tsMs = integer().value_or(0);
            else if (k == "table") str(src.table);
            break;
          case 6:
            if (k == "schema") str(src.schema);
            break;
          case 8:
            if (k == "snapshot") {
              if (v.kind == Value::Kind::kString) src.snapshot.assign(v.s);
              else if (v.kind == Value::Kind::kBool) src.snapshot = v.b ? "true" : "false";
            } else if (k == "sequence" && v.kind == Value::Kind::kString) {
              src.sequence.emplace(v.s);
            }
            break;
          case 9:
            if (k == "connector") str(src.connector);
            break;
          default:
            break;
        }
        break;
      }
      case Role::kSchemaStruct:
        if (is("field") && v.kind == Value::Kind::kString) structField = v.s;
        break;
      case Role::kFieldSchema:
        if (v.kind != Value::Kind::kString) break;
        if (is("field")) current.field = v.s;
        else if (is("type")) current.type = v.s;
        else if (is("name")) current.name = v.s;
        break;
      case Role::kParams:
        if (is("scale") && v.kind == Value::Kind::kString) {
          int scale = -1;
          if (parseInt(v.s, scale)) current.scale = scale;
        }
        break;
      default:
        break;
    }
  }

  Role childRole(bool isObject, Frame& parent) const {
    switch (parent.role) {
      case Role::kRoot:
        if (isObject && is("payload")) return Role::kEvent;
        if (isObject && is("schema")) return Role::kSchemaRoot;
        [[fallthrough]];
      case Role::kEvent:
        if (isObject && (is("before") || is("after"))) return Role::kRow;
        if (isObject && is("source")) return Role::kSource;
        return Role::kSkip;
      case Role::kRow:
        return isObject ? Role::kRowNested : Role::kSkip;
      case Role::kSchemaRoot:
        return !isObject && is("fields") ? Role::kSchemaFields : Role::kSkip;
      case Role::kSchemaFields:
        return isObject ? Role::kSchemaStruct : Role::kSkip;
      case Role::kSchemaStruct:
        return !isObject && is("fields") ? Role::kStructFields : Role::kSkip;
      case Role::kStructFields:
        return isObject ? Role::kFieldSchema : Role::kSkip;
      case Role::kFieldSchema:
        return isObject && is("parameters") ? Role::kParams : Role::kSkip;
      default:
        return Role::kSkip;
    }
  }

  void begin(bool isObject) {
    Value v;
    v.kind = isObject ? Value::Kind::kObject : Value::Kind::kArray;
    if (stack.empty()) {
      rootKind = v.kind;
      stack.push_back({isObject ? Role::kRoot : Role::kSkip});
      return;
    }
    onValue(v);
    Frame& parent = stack.back();
    Frame child{childRole(isObject, parent), parent.event, parent.after};
    if (parent.role == Role::kRoot && child.role == Role::kEvent) child.event = 1;
    if (child.role == Role::kRow) child.after = is("after");
    if (child.role == Role::kSchemaStruct) {
      structField = {};
      pending.clear();
    }
    if (child.role == Role::kFieldSchema) current = FieldSchema{};
    stack.push_back(child);
    clearKey();  // the key named this value; the next one starts afresh
  }

  void end() {
    Role role = stack.back().role;
    stack.pop_back();
    clearKey();
    if (role == Role::kFieldSchema) pending.push_back(current);
    if (role == Role::kSchemaStruct) {
      if (structField == "after") {
        afterSchema.fields = pending;
        hasAfterSchema = true;
      } else if (structField == "before") {
        beforeSchema.fields = pending;
        hasBeforeSchema = true;
      }
    }
  }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code&) {
    begin(true);
    return true;
  }
  bool on_object_end(std::size_t, json::error_code&) {
    end();
    return true;
  }
  bool on_array_begin(json::error_code&) {
    begin(false);
    return true;
  }
  bool on_array_end(std::size_t, json::error_code&) {
    end();
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    appendKey({s.data(), s.size()});
    return true;
  }
  bool on_key(json::string_view s, std::size_t n, json::error_code&) {
    if (n == s.size()) {  // delivered whole
      clearKey();
      if (inInput(s) && !s.empty()) {
        inputKey = {s.data(), s.size()};
        return true;
      }
    }
    appendKey({s.data(), s.size()});
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    text.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    Value v;
    v.kind = Value::Kind::kString;
    // Source fields are copied into SourceInfo at once: no need to keep them.
    bool keep = needsText() && top() != Role::kSource;
    if (text.empty()) {
      std::string_view view(s.data(), s.size());
      v.s = keep && !inInput(s) ? arena.copy(view) : view;
    } else {
      text.append(s.data(), s.size());
      v.s = keep ? arena.copy(text) : std::string_view(text);
    }
    onValue(v);
    text.clear();
    clearKey();
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t i, json::string_view, json::error_code&) {
    Value v;
    v.kind = Value::Kind::kInt;
    v.i = i;
    onValue(v);
    clearKey();
    return true;
  }
  bool on_uint64(uint64_t u, json::string_view, json::error_code&) {
    Value v;
    v.kind = Value::Kind::kUint;
    v.u = u;
    onValue(v);
    clearKey();
    return true;
  }
  bool on_double(double d, json::string_view, json::error_code&) {
    Value v;
    v.kind = Value::Kind::kDouble;
    v.d = d;
    onValue(v);
    clearKey();
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    Value v;
    v.kind = Value::Kind::kBool;
    v.b = b;
    onValue(v);
    clearKey();
    return true;
  }
  bool on_null(json::error_code&) {
    onValue(Value{});
    clearKey();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

  // Only strings that somebody may read are kept.
  bool needsText() const {
    switch (top()) {
      case Role::kRow:
      case Role::kRowNested:
      case Role::kSchemaStruct:
      case Role::kFieldSchema:
      case Role::kParams:
        return true;
      case Role::kRoot:
      case Role::kEvent:
        return is("op");
      case Role::kSource:
        return true;
      default:
        return false;
    }
  }
};

// The parser does not check UTF-8 string by string (a fifth of its time): parseEnvelope checks
// the whole payload at once, eight bytes at a time while they are ASCII.
json::parse_options parserOptions() {
  json::parse_options o;
  o.allow_invalid_utf8 = true;
  return o;
}

struct ThreadParser {
  json::basic_parser<Handler> parser{parserOptions()};
};

ParseError wrongType(std::string_view column, std::string_view expected, const Value& v) {
  return parseError("wrong_type", "column '" + std::string(column) + "': expected " + std::string(expected) + ", got " +
                                      std::string(kindName(v.kind)));
}

}  // namespace

bool validUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // Eight ASCII bytes at a time: most of an event is ASCII.
    if (uint64_t word; i + 8 <= s.size() && (std::memcpy(&word, s.data() + i, 8), (word & 0x8080808080808080ULL) == 0)) {
      i += 8;
      continue;
    }
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07;
    else return false;
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8 (RFC 3629), and the
    // JSON parser refuses them too.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += n;
  }
  return true;
}

Result<Envelope> parseEnvelope(std::string_view payload) {
  if (payload.empty()) return parseError("empty_payload", "the record value is empty");
  thread_local ThreadParser tp;
  auto& parser = tp.parser;
  Handler& h = parser.handler();
  h.reset();
  h.input = payload;
  parser.reset();
  json::error_code ec;
  parser.write_some(false, payload.data(), payload.size(), ec);
  if (ec) {
    if (ec == json::error::incomplete) {
      return parseError("truncated_json", "the JSON ends early (" + std::to_string(payload.size()) + " bytes)");
    }
    if (!validUtf8(payload)) return parseError("invalid_utf8", "the payload is not valid UTF-8");
    return parseError("malformed_json", "invalid JSON: " + ec.message());
  }
  if (!validUtf8(payload)) return parseError("invalid_utf8", "the payload is not valid UTF-8");
  if (h.rootKind != Value::Kind::kObject) {
    return parseError("malformed_envelope", "the value is a JSON " + std::string(kindName(h.rootKind)) + ", not an object");
  }
  // With schemas.enable=true the event is {"schema": ..., "payload": ...}.
  int which = 0;
  if (h.rootHasSchema && h.rootHasPayload) {
    if (h.payloadKind != Value::Kind::kObject) {
      return parseError("malformed_envelope", "'payload' is a " + std::string(kindName(h.payloadKind)) + ", not an object");
    }
    which = 1;
  }
  EventFields& e = h.events[which];
  if (!e.op || e.op->kind == Value::Kind::kNull) return parseError("missing_field", "'op' is null or absent");
  if (e.op->kind != Value::Kind::kString) {
    return parseError("wrong_type", "'op' is a " + std::string(kindName(e.op->kind)) + ", not a string");
  }
  std::string_view opText = e.op->s;
  if (opText.size() != 1 || std::string_view("cudrtm").find(opText[0]) == std::string_view::npos) {
    return parseError("unknown_operation", "unknown operation '" + std::string(opText.substr(0, 32)) + "'");
  }
  Envelope env;
  env.op = static_cast<Operation>(opText[0]);
  for (auto [kind, image, name, out] : {std::tuple{e.beforeKind, &e.before, "before", &env.before},
                                        std::tuple{e.afterKind, &e.after, "after", &env.after}}) {
    if (kind == Value::Kind::kNull) continue;
    if (kind != Value::Kind::kObject) {
      return parseError("wrong_type", std::string("'") + name + "' is a " + std::string(kindName(kind)) + ", not an object");
    }
    *out = image;
  }
  if (e.hasSource && e.sourceKind == Value::Kind::kObject) {
    env.source = std::move(e.source);
  } else if (env.op != Operation::kMessage) {
    return parseError("missing_field", "'source' is null or absent");
  }
  env.tsMs = e.tsMs.value_or(0);
  if (which == 1) env.afterSchema = h.hasAfterSchema ? &h.afterSchema : h.hasBeforeSchema ? &h.beforeSchema : nullptr;
  return env;
}

std::optional<ParseError> decodeField(const RowImage& row, const RowSchema* schema, std::string_view name,
                                      const ColumnOptions& options, Member& out, FieldPresence& presence) {
  presence = FieldPresence::kAbsent;
  const Value* found = row.find(name);
  if (!found || found->kind == Value::Kind::kNull) return std::nullopt;
  const Value& v = *found;
  if (v.kind == Value::Kind::kString && v.s == "__debezium_unavailable_value") {
    // An unchanged TOASTed value under REPLICA IDENTITY DEFAULT: not sent; the stored one stands.
    presence = FieldPresence::kUnavailable;
    return std::nullopt;
  }
  const FieldSchema* field = schema ? schema->find(name) : nullptr;
  using K = Value::Kind;
  std::optional<ParseError> error;
  std::visit(
      [&](auto& target) {
        using T = std::decay_t<decltype(target)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, int32_t>) {
          int64_t x;
          if (v.kind == K::kInt) x = v.i;
          else if (v.kind == K::kUint && v.u <= static_cast<uint64_t>(INT64_MAX)) x = static_cast<int64_t>(v.u);
          else return void(error = wrongType(name, "an integer", v));
          if constexpr (std::is_same_v<T, int32_t>) {
            if (x < INT32_MIN || x > INT32_MAX) {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': " + std::to_string(x) + " does not fit int32"));
            }
          }
          target = static_cast<T>(x);
        } else if constexpr (std::is_same_v<T, bool>) {
          if (v.kind != K::kBool) return void(error = wrongType(name, "a boolean", v));
          target = v.b;
        } else if constexpr (std::is_same_v<T, double>) {
          if (v.kind == K::kDouble) target = v.d;
          else if (v.kind == K::kInt) target = static_cast<double>(v.i);
          else return void(error = wrongType(name, "a number", v));
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (v.kind != K::kString) return void(error = wrongType(name, "a string", v));
          target.assign(v.s);
        } else if constexpr (std::is_same_v<T, Decimal>) {
          if (v.kind == K::kObject) {  // io.debezium.data.VariableScaleDecimal
            std::string bytes;
            if (!v.scale || !v.scaledValue || !base64Decode(*v.scaledValue, bytes) ||
                !unscaledToText(bytes, static_cast<int>(*v.scale), target.text)) {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': malformed variable-scale decimal"));
            }
          } else if (v.kind == K::kDouble) {
            char buf[64];
            auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v.d);
            target.text.assign(buf, p);
          } else if (v.kind == K::kInt) {
            target.text = std::to_string(v.i);
          } else if (v.kind == K::kString) {
            std::string_view s = v.s;
            int scale = field ? field->scale : -1;
            // Without a schema, a declared scale allows base64 (precise) values; decimal text is
            // still recognised: with a scale > 0 it always has a '.', which base64 never has.
            bool text = isDecimalText(s) && (s.find('.') != std::string_view::npos || options.decimalScale <= 0);
            bool precise = (field && field->type == "bytes") || (!field && !text && options.decimalScale >= 0);
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
              target.text.assign(s);
            } else {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': '" + std::string(s.substr(0, 40)) +
                                                               "' is not a decimal (a precise decimal without a schema needs a declared scale)"));
            }
          } else {
            return void(error = wrongType(name, "a decimal", v));
          }
        } else if constexpr (std::is_same_v<T, Timestamp>) {
          if (v.kind == K::kString) {
            if (!parseIsoTimestamp(v.s, target)) {
              return void(error = parseError("wrong_type", "column '" + std::string(name) + "': '" + std::string(v.s.substr(0, 40)) +
                                                               "' is not a timestamp"));
            }
          } else if (v.kind == K::kInt) {
            std::string_view semantic = field ? field->name : std::string_view();
            if (semantic == "io.debezium.time.Timestamp" || (semantic.empty() && options.integerTimestamp == IntegerTimestamp::kMillis)) {
              int64_t micros = 0;
              if (__builtin_mul_overflow(v.i, int64_t{1000}, &micros)) {
                return void(error = parseError("wrong_type", "column '" + std::string(name) + "': " + std::to_string(v.i) +
                                                                 " ms is out of the timestamp range"));
              }
              target = {micros, Timestamp::Special::kNone};
            } else if (semantic == "io.debezium.time.NanoTimestamp") {
              target = {v.i / 1000, Timestamp::Special::kNone};
            } else {
              target = {v.i, Timestamp::Special::kNone};
            }
          } else {
            return void(error = wrongType(name, "a timestamp", v));
          }
        } else if constexpr (std::is_same_v<T, Date>) {
          if (v.kind != K::kInt || v.i < INT32_MIN || v.i > INT32_MAX) return void(error = wrongType(name, "a date (days)", v));
          target.days = static_cast<int32_t>(v.i);
        }
      },
      out);
  if (!error) presence = FieldPresence::kPresent;
  return error;
}

}  // namespace detail
}  // namespace dataflow::debezium
