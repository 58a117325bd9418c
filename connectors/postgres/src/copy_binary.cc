// Binary forms as PostgreSQL's *_recv functions read them (big-endian; timestamps in microseconds
// and dates in days since 2000-01-01; numeric in base-10000 digits).
#include "copy_binary.h"

#include "iso_date.h"

#include <charconv>
#include <cstring>
#include <limits>

namespace dataflow::postgres::detail {
namespace {

// Builtin type OIDs (pg_type.dat).
constexpr uint32_t kBoolOid = 16, kInt8Oid = 20, kInt2Oid = 21, kInt4Oid = 23, kTextOid = 25, kJsonOid = 114,
                   kFloat4Oid = 700, kFloat8Oid = 701, kBpcharOid = 1042, kVarcharOid = 1043, kDateOid = 1082,
                   kTimestampOid = 1114, kTimestampTzOid = 1184, kNumericOid = 1700, kUuidOid = 2950, kJsonbOid = 3802;

// 2000-01-01 (PostgreSQL's epoch) in days and microseconds after 1970-01-01.
constexpr int64_t kEpochDays = 10957;
constexpr int64_t kEpochMicros = kEpochDays * 86400LL * 1000000;

template <class T>
void appendBig(std::string& out, T v) {
  using U = std::make_unsigned_t<T>;
  auto u = static_cast<U>(v);
  char buf[sizeof(T)];
  for (size_t i = 0; i < sizeof(T); ++i) buf[i] = static_cast<char>(u >> (8 * (sizeof(T) - 1 - i)));
  out.append(buf, sizeof(T));
}

void appendLength(std::string& out, size_t n) { appendBig(out, static_cast<int32_t>(n)); }

template <class T>
bool parseWhole(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

bool digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// "YYYY-MM-DD[T ]HH:MM:SS[.ffffff]" then, with `zoned`, "Z", "+HH", "+HH:MM" or the same with
// '-' -> microseconds since 1970-01-01 UTC (the wall clock as UTC without a zone).
bool parseTimestamp(std::string_view s, bool zoned, int64_t& micros) {
  int64_t days;
  if (s.size() < 19 || (s[10] != 'T' && s[10] != ' ') || !parseIsoDate(s.substr(0, 10), days)) return false;
  if (s[13] != ':' || s[16] != ':') return false;
  unsigned h, mi, sec;
  if (!digits(s.substr(11, 2)) || !parseWhole(s.substr(11, 2), h) || !digits(s.substr(14, 2)) ||
      !parseWhole(s.substr(14, 2), mi) || !digits(s.substr(17, 2)) || !parseWhole(s.substr(17, 2), sec)) {
    return false;
  }
  if (h > 23 || mi > 59 || sec > 59) return false;
  size_t i = 19;
  int64_t fraction = 0;
  if (i < s.size() && s[i] == '.') {
    int n = 0;
    for (++i; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i, ++n) {
      if (n == 6) return false;  // the server would round: left to it
      fraction = fraction * 10 + (s[i] - '0');
    }
    if (n == 0) return false;
    for (int k = n; k < 6; ++k) fraction *= 10;
  }
  int64_t offsetSeconds = 0;
  std::string_view zone = s.substr(i);
  if (zoned) {
    if (zone == "Z") {
      zone = {};
    } else if (zone.size() >= 3 && (zone[0] == '+' || zone[0] == '-')) {
      unsigned zh, zm = 0;
      if (!digits(zone.substr(1, 2)) || !parseWhole(zone.substr(1, 2), zh)) return false;
      std::string_view rest = zone.substr(3);
      if (!rest.empty()) {
        if (rest.size() != 3 || rest[0] != ':' || !digits(rest.substr(1)) || !parseWhole(rest.substr(1), zm)) return false;
      }
      if (zh > 15 || zm > 59) return false;
      offsetSeconds = (zone[0] == '-' ? -1 : 1) * static_cast<int64_t>(zh * 3600 + zm * 60);
      zone = {};
    } else {
      return false;  // no zone: the server would read it in the session's time zone
    }
  }
  if (!zone.empty()) return false;
  micros = (days * 86400 + h * 3600 + mi * 60 + sec - offsetSeconds) * 1000000 + fraction;
  return true;
}

// numeric's text ("-12.30", ".5", "NaN"; no exponent) as numeric_recv reads it: ndigits, weight,
// sign, dscale, then base-10000 digits aligned on the decimal point.
bool appendNumeric(std::string& out, std::string_view s) {
  constexpr uint16_t kPositive = 0x0000, kNegative = 0x4000, kNaN = 0xC000;
  if (s == "NaN") {
    appendLength(out, 8);
    appendBig<int16_t>(out, 0);
    appendBig<int16_t>(out, 0);
    appendBig<uint16_t>(out, kNaN);
    appendBig<int16_t>(out, 0);
    return true;
  }
  uint16_t sign = kPositive;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    if (s[0] == '-') sign = kNegative;
    s.remove_prefix(1);
  }
  const size_t dot = s.find('.');
  std::string_view whole = s.substr(0, dot);
  std::string_view fraction = dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
  if (whole.empty() && fraction.empty()) return false;
  if ((!whole.empty() && !digits(whole)) || (!fraction.empty() && !digits(fraction))) return false;
  if (fraction.size() > 16383) return false;
  while (!whole.empty() && whole.front() == '0') whole.remove_prefix(1);
  if (whole.size() > 4 * 32767) return false;  // past numeric's weight
  // Groups of four decimal digits: the whole part padded on the left, the fraction on the right.
  const size_t wholeGroups = (whole.size() + 3) / 4;
  const size_t fractionGroups = (fraction.size() + 3) / 4;
  std::vector<int16_t> groups;
  groups.reserve(wholeGroups + fractionGroups);
  const size_t pad = wholeGroups * 4 - whole.size();
  for (size_t g = 0; g < wholeGroups; ++g) {
    int v = 0;
    for (size_t k = 0; k < 4; ++k) {
      size_t pos = g * 4 + k;
      v = v * 10 + (pos < pad ? 0 : whole[pos - pad] - '0');
    }
    groups.push_back(static_cast<int16_t>(v));
  }
  for (size_t g = 0; g < fractionGroups; ++g) {
    int v = 0;
    for (size_t k = 0; k < 4; ++k) {
      size_t pos = g * 4 + k;
      v = v * 10 + (pos < fraction.size() ? fraction[pos] - '0' : 0);
    }
    groups.push_back(static_cast<int16_t>(v));
  }
  int weight = static_cast<int>(wholeGroups) - 1;
  size_t first = 0, last = groups.size();
  while (first < last && groups[first] == 0) {
    ++first;
    --weight;
  }
  while (last > first && groups[last - 1] == 0) --last;
  if (first == last) {  // zero
    weight = 0;
    sign = kPositive;
  }
  const size_t n = last - first;
  appendLength(out, 8 + 2 * n);
  appendBig(out, static_cast<int16_t>(n));
  appendBig(out, static_cast<int16_t>(weight));
  appendBig(out, sign);
  appendBig(out, static_cast<int16_t>(fraction.size()));
  for (size_t g = first; g < last; ++g) appendBig(out, groups[g]);
  return true;
}

bool appendUuid(std::string& out, std::string_view s) {
  if (s.size() != 36 && s.size() != 32) return false;
  char bytes[16];
  size_t b = 0;
  for (size_t i = 0; i < s.size();) {
    if (s.size() == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
      if (s[i] != '-') return false;
      ++i;
      continue;
    }
    auto nibble = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    if (i + 1 >= s.size()) return false;
    int hi = nibble(s[i]), lo = nibble(s[i + 1]);
    if (hi < 0 || lo < 0 || b >= 16) return false;
    bytes[b++] = static_cast<char>(hi << 4 | lo);
    i += 2;
  }
  if (b != 16) return false;
  appendLength(out, 16);
  out.append(bytes, 16);
  return true;
}

// An integer or a float from its text, written as the big-endian bits of `Bits`.
template <class T, class Bits>
bool appendNumber(std::string& out, std::string_view s) {
  static_assert(sizeof(T) == sizeof(Bits));
  T v;
  if (!parseWhole(s, v)) return false;
  Bits bits;
  std::memcpy(&bits, &v, sizeof v);
  appendLength(out, sizeof v);
  appendBig(out, bits);
  return true;
}

}  // namespace

std::optional<BinaryType> binaryTypeOf(uint32_t typeOid) {
  switch (typeOid) {
    case kBoolOid: return BinaryType::kBool;
    case kInt2Oid: return BinaryType::kInt2;
    case kInt4Oid: return BinaryType::kInt4;
    case kInt8Oid: return BinaryType::kInt8;
    case kFloat4Oid: return BinaryType::kFloat4;
    case kFloat8Oid: return BinaryType::kFloat8;
    case kNumericOid: return BinaryType::kNumeric;
    case kTextOid:
    case kVarcharOid:
    case kBpcharOid:
    case kJsonOid: return BinaryType::kText;
    case kJsonbOid: return BinaryType::kJsonb;
    case kDateOid: return BinaryType::kDate;
    case kTimestampOid: return BinaryType::kTimestamp;
    case kTimestampTzOid: return BinaryType::kTimestampTz;
    case kUuidOid: return BinaryType::kUuid;
    default: return std::nullopt;
  }
}

void appendBinaryCopyHeader(std::string& out) {
  out.append("PGCOPY\n\377\r\n\0", 11);
  appendBig<int32_t>(out, 0);  // flags: no OIDs
  appendBig<int32_t>(out, 0);  // header extension length
}

void appendBinaryRowStart(std::string& out, int16_t fields) { appendBig(out, fields); }

void appendBinaryNull(std::string& out) { appendBig<int32_t>(out, -1); }

void appendBinaryFieldLength(std::string& out, size_t bytes) { appendLength(out, bytes); }

void appendBinaryCopyTrailer(std::string& out) { appendBig<int16_t>(out, -1); }

void appendBinaryArrayHeader(std::string& out, uint32_t elementOid, size_t count) {
  appendBig<int32_t>(out, 1);  // dimensions
  appendBig<int32_t>(out, 0);  // no NULLs
  appendBig<uint32_t>(out, elementOid);
  appendBig<int32_t>(out, static_cast<int32_t>(count));
  appendBig<int32_t>(out, 1);  // lower bound
}

bool appendBinaryField(std::string& out, BinaryType type, std::string_view s) {
  switch (type) {
    case BinaryType::kBool:
      if (s == "t" || s == "true" || s == "1" || s == "f" || s == "false" || s == "0") {
        appendLength(out, 1);
        out += static_cast<char>(s == "t" || s == "true" || s == "1");
        return true;
      }
      return false;
    case BinaryType::kInt2: return appendNumber<int16_t, int16_t>(out, s);
    case BinaryType::kInt4: return appendNumber<int32_t, int32_t>(out, s);
    case BinaryType::kInt8: return appendNumber<int64_t, int64_t>(out, s);
    case BinaryType::kFloat4: return appendNumber<float, uint32_t>(out, s);  // IEEE 754 bits
    case BinaryType::kFloat8: return appendNumber<double, uint64_t>(out, s);
    case BinaryType::kNumeric:
      return appendNumeric(out, s);
    case BinaryType::kText:
      appendLength(out, s.size());
      out.append(s);
      return true;
    case BinaryType::kJsonb:
      appendLength(out, s.size() + 1);
      out += '\1';  // jsonb's binary version
      out.append(s);
      return true;
    case BinaryType::kDate: {
      int64_t days;
      int32_t v;
      if (s == "infinity") {
        v = std::numeric_limits<int32_t>::max();
      } else if (s == "-infinity") {
        v = std::numeric_limits<int32_t>::min();
      } else if (parseIsoDate(s, days)) {
        v = static_cast<int32_t>(days - kEpochDays);
      } else {
        return false;
      }
      appendLength(out, 4);
      appendBig(out, v);
      return true;
    }
    case BinaryType::kTimestamp:
    case BinaryType::kTimestampTz: {
      int64_t micros, v;
      if (s == "infinity") {
        v = std::numeric_limits<int64_t>::max();
      } else if (s == "-infinity") {
        v = std::numeric_limits<int64_t>::min();
      } else if (parseTimestamp(s, type == BinaryType::kTimestampTz, micros)) {
        v = micros - kEpochMicros;
      } else {
        return false;
      }
      appendLength(out, 8);
      appendBig(out, v);
      return true;
    }
    case BinaryType::kUuid:
      return appendUuid(out, s);
  }
  return false;
}

}  // namespace dataflow::postgres::detail
