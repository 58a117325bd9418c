// Debezium PostgreSQL change events (JSON converter, with or without the embedded schema) turned
// into typed rows. Parsing only, no I/O. A job declares a table's columns once, as members of its
// row struct; decode() gives the row or a ParseError with a specific kind:
//
//   struct Customer { int64_t id; std::string email; std::optional<std::string> country;
//                     std::optional<debezium::Timestamp> updatedAt; };
//   const auto customers = debezium::TableMapping<Customer>()
//       .key("id", &Customer::id)                 // key columns: present in deletes too
//       .column("email", &Customer::email)        // non-optional member: required
//       .column("country", &Customer::country)    // optional member: null or absent is fine
//       .column("updated_at", &Customer::updatedAt);
//   dataflow::Result<debezium::ChangeEvent<Customer>> e = customers.decode(record);
//
// decode(record) reads a LogRecord's JSON value, or, when its source kept the change in a compact
// form of its own (an EventCodec: the direct PostgreSQL source), that form without any JSON; the
// typed events are the same either way.
//
// Error kinds: empty_payload, invalid_utf8, truncated_json, malformed_json, malformed_envelope,
// missing_field, wrong_type, unknown_operation; unknown_encoding (a compact value of a codec that is
// not an EventCodec).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "dataflow/record.h"
#include "dataflow/result.h"

namespace dataflow::debezium {

enum class Operation : char {
  kCreate = 'c',
  kUpdate = 'u',
  kDelete = 'd',
  kRead = 'r',  // snapshot
  kTruncate = 't',
  kMessage = 'm',
};
std::string_view toString(Operation op);

// The event's `source` block.
struct SourceInfo {
  std::string connector;
  std::string name;
  std::string db;
  std::string schema;
  std::string table;
  int64_t tsMs = 0;               // commit time in the source database
  std::optional<int64_t> txId;
  std::optional<int64_t> lsn;     // null for some incremental-snapshot rows
  std::string snapshot;           // "false", "true", "last", "first", "incremental", ...
  std::optional<std::string> sequence;
  bool isSnapshot() const { return !snapshot.empty() && snapshot != "false"; }
};

// An exact decimal as canonical text ("30.50", "-1.10"), whatever the connector's
// decimal.handling.mode; ready to be bound to a NUMERIC parameter.
struct Decimal {
  std::string text;
  bool operator==(const Decimal&) const = default;
};

// Microseconds since the Unix epoch, UTC. From ZonedTimestamp strings, MicroTimestamp and
// Timestamp (ms) integers. PostgreSQL's infinities are kept as such.
struct Timestamp {
  int64_t micros = 0;
  enum class Special : char { kNone, kInfinity, kMinusInfinity } special = Special::kNone;
  // ISO-8601 with microseconds and "Z", or "infinity"/"-infinity".
  std::string toString() const;
  bool operator==(const Timestamp&) const = default;
};

// Days since the epoch (io.debezium.time.Date).
struct Date {
  int32_t days = 0;
  std::string toString() const;  // YYYY-MM-DD
  bool operator==(const Date&) const = default;
};

// How an integer timestamp column is encoded when the event carries no schema.
enum class IntegerTimestamp { kMicros, kMillis };

struct ColumnOptions {
  // Key columns must be present in every event, deletes included.
  bool key = false;
  // Scale of a `precise` decimal (base64) when the event has no schema; -1: unknown.
  int decimalScale = -1;
  // Encoding of integer timestamps when the event has no schema.
  IntegerTimestamp integerTimestamp = IntegerTimestamp::kMicros;
};

template <class Row>
struct ChangeEvent {
  Operation op = Operation::kCreate;
  // From `after` for c/u/r, from `before` for d (where only key columns are reliable).
  // Default-constructed for t and m, which carry no row.
  Row row{};
  bool hasRow = false;
  // Bit i: the i-th column of the mapping (in declaration order, keys included) was not sent.
  // That happens when PostgreSQL logs an update without a TOASTed value that did not change
  // (REPLICA IDENTITY DEFAULT) and Debezium puts its placeholder in. The member then keeps its
  // default, and the stored value is still the right one: a sink must keep it, not overwrite it.
  // Columns past the 64th are never marked.
  uint64_t unavailable = 0;
  SourceInfo source;
  int64_t tsMs = 0;  // when the connector processed the change
  bool isDelete() const { return op == Operation::kDelete; }
};

namespace detail {

// One JSON value of an event as the streaming parser keeps it (scalars only; objects and arrays
// are marked by their kind). Strings are unescaped and point into the payload or a buffer that
// lives as long as the Envelope.
struct Value {
  enum class Kind : uint8_t { kNull, kBool, kInt, kUint, kDouble, kString, kObject, kArray };
  Kind kind = Kind::kNull;
  bool b = false;
  int64_t i = 0;
  uint64_t u = 0;
  double d = 0;
  std::string_view s;
  // kObject: a Debezium VariableScaleDecimal {"scale": 4, "value": "<base64>"}.
  std::optional<int64_t> scale;
  std::optional<std::string_view> scaledValue;
};

// A row image (`before` or `after`): its fields in the event's order.
struct RowImage {
  std::vector<std::pair<std::string_view, Value>> fields;
  const Value* find(std::string_view key) const {
    for (const auto& [k, v] : fields) {
      if (k == key) return &v;
    }
    return nullptr;
  }
};

// The embedded schema of a row's columns (schemas.enable=true); defined in change_event.cc.
struct RowSchema;

// The parsed envelope, borrowed from a per-thread buffer that is reused for the next record.
struct Envelope {
  Operation op;
  const RowImage* before = nullptr;
  const RowImage* after = nullptr;
  const RowSchema* afterSchema = nullptr;  // the `after` struct's schema, if embedded
  SourceInfo source;
  int64_t tsMs = 0;
};

// Parses `payload` on this thread's reusable parser; the Envelope is valid until the next call on
// the same thread.
Result<Envelope> parseEnvelope(std::string_view payload);

// Whether `s` is UTF-8 as RFC 3629 defines it (what the JSON parser accepts in a string).
bool validUtf8(std::string_view s);

}  // namespace detail

// A RecordCodec whose compact form is a Debezium change event already taken apart: it gives the
// Envelope that parsing the rendered JSON would give (the same values, field by field), without
// the JSON. Implemented by sources that decode changes themselves.
class EventCodec : public RecordCodec {
 public:
  // The record's envelope, valid until the next call on the same thread; or the ParseError that
  // parsing the rendered JSON would give.
  virtual Result<detail::Envelope> envelope(const LogRecord& record) const = 0;
};

namespace detail {

template <class T>
inline constexpr bool kIsOptional = false;
template <class T>
inline constexpr bool kIsOptional<std::optional<T>> = true;

using Member = std::variant<int64_t, int32_t, bool, double, std::string, Decimal, Timestamp, Date>;

// What an event says about one column.
enum class FieldPresence : char {
  kAbsent,       // null or not in the image
  kPresent,      // decoded into `out`
  kUnavailable,  // Debezium's placeholder for an unchanged TOASTed value
};

// Decodes field `name` of `row` into `out` (which holds the target type). Returns an empty
// optional on success, else the error.
std::optional<ParseError> decodeField(const RowImage& row, const RowSchema* schema,
                                      std::string_view name, const ColumnOptions& options, Member& out,
                                      FieldPresence& presence);

}  // namespace detail

template <class Row>
class TableMapping {
 public:
  // A column stored in a member of Row. Non-optional members are required in c/u/r events.
  template <class M>
  TableMapping& column(std::string name, M Row::*member, ColumnOptions options = {}) {
    columns_.push_back(Column{std::move(name), options, bind(member)});
    return *this;
  }
  // A key column (required in every event, deletes included).
  template <class M>
  TableMapping& key(std::string name, M Row::*member, ColumnOptions options = {}) {
    options.key = true;
    return column(std::move(name), member, options);
  }

  Result<ChangeEvent<Row>> decode(std::string_view payload) const {
    auto parsed = detail::parseEnvelope(payload);
    if (!parsed.ok()) return std::move(parsed).error();
    return decode(parsed.value());
  }

  // The record's value: its JSON, or its source's compact form (EventCodec).
  Result<ChangeEvent<Row>> decode(const LogRecord& record) const {
    if (!record.codec) return decode(std::string_view(record.value));
    const auto* codec = dynamic_cast<const EventCodec*>(record.codec);
    if (!codec) {
      return parseError("unknown_encoding", "the record's value is in the compact form of " + record.codec->name() +
                                                ", which is not a Debezium change event");
    }
    auto parsed = codec->envelope(record);
    if (!parsed.ok()) return std::move(parsed).error();
    return decode(parsed.value());
  }

  // A parsed envelope (detail::parseEnvelope, EventCodec::envelope).
  Result<ChangeEvent<Row>> decode(detail::Envelope& env) const {
    ChangeEvent<Row> event;
    event.op = env.op;
    event.source = std::move(env.source);
    event.tsMs = env.tsMs;
    if (env.op == Operation::kTruncate || env.op == Operation::kMessage) return event;
    const bool isDelete = env.op == Operation::kDelete;
    const detail::RowImage* image = isDelete ? env.before : env.after;
    if (!image) {
      return parseError("missing_field", std::string("'") + (isDelete ? "before" : "after") +
                                             "' is null or absent in a '" + std::string(toString(env.op)) +
                                             "' event");
    }
    if (!event.source.lsn) return parseError("missing_field", "source.lsn is null or absent");
    for (size_t i = 0; i < columns_.size(); ++i) {
      const Column& c = columns_[i];
      if (isDelete && !c.options.key) continue;  // only the key is reliable in a delete
      detail::Member value = c.setter.prototype();
      auto presence = detail::FieldPresence::kAbsent;
      if (auto error = detail::decodeField(*image, env.afterSchema, c.name, c.options, value, presence)) return *error;
      if (presence == detail::FieldPresence::kUnavailable && !c.options.key) {
        if (i < 64) event.unavailable |= uint64_t{1} << i;
        continue;
      }
      if (presence != detail::FieldPresence::kPresent) {
        if (c.setter.required() || c.options.key) {
          return parseError("missing_field", "required column '" + c.name + "' is null or absent");
        }
        continue;
      }
      c.setter.assign(event.row, std::move(value));
    }
    event.hasRow = true;
    return event;
  }

 private:
  // Stores a decoded Member into a plain or an optional member of the row. The member pointer
  // fits std::function's small buffer: no allocation, one indirect call per column.
  struct Setter {
    std::function<void(Row&, detail::Member&&)> assignFn;
    detail::Member prototypeValue;
    bool isRequired;
    void assign(Row& row, detail::Member&& v) const { assignFn(row, std::move(v)); }
    detail::Member prototype() const { return prototypeValue; }
    bool required() const { return isRequired; }
  };
  struct Column {
    std::string name;
    ColumnOptions options;
    Setter setter;
  };

  template <class M>
  static Setter bind(M Row::*member) {
    if constexpr (detail::kIsOptional<M>) {
      using V = typename M::value_type;
      static_assert(std::is_constructible_v<detail::Member, V>, "unsupported column type");
      return Setter{[member](Row& row, detail::Member&& v) { row.*member = std::get<V>(std::move(v)); },
                    detail::Member(std::in_place_type<V>), false};
    } else {
      static_assert(std::is_constructible_v<detail::Member, M>, "unsupported column type");
      return Setter{[member](Row& row, detail::Member&& v) { row.*member = std::get<M>(std::move(v)); },
                    detail::Member(std::in_place_type<M>), true};
    }
  }

  std::vector<Column> columns_;
};

}  // namespace dataflow::debezium
