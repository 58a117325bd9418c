// A record of a log-like source: a Kafka topic, or a database's change stream read directly. Both
// give the same shape (Spark's Kafka rows: key, value, topic, partition, offset, timestamp), so a
// job's parsing and dead-letter handling do not depend on where its changes come from.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dataflow/batch.h"

namespace dataflow {

enum class TimestampType : int8_t { kNone, kCreateTime, kLogAppendTime };

struct LogRecord;

// A source's own compact form of its records' values. A source that has already taken a record
// apart (the direct PostgreSQL source decodes pgoutput) may keep that form in `LogRecord::value`
// instead of rendering the bytes a log would hold (Debezium JSON), and name its codec: a parser
// that knows the codec reads the compact form without decoding bytes, and everything else asks
// for the bytes, rendered on demand (a dead letter's payload). Type erasure at the record's edge:
// parsers check the codec once per record, never per field.
class RecordCodec {
 public:
  virtual ~RecordCodec() = default;
  // For messages ("pgoutput-compact").
  virtual std::string name() const = 0;
  // Appends the bytes the record stands for (what `value` would hold without the codec).
  virtual void render(const LogRecord& record, std::string& out) const = 0;
};

// The batch owns the record: payloads are copied once out of the source's buffers. `topic` points
// at a name interned by the source and stays valid while the source lives.
struct LogRecord {
  std::string_view topic;
  int32_t partition = 0;
  int64_t offset = 0;
  int64_t timestamp = -1;  // ms since the epoch
  TimestampType timestampType = TimestampType::kNone;
  std::string key;
  bool hasKey = false;
  std::string value;
  bool hasValue = false;  // false: a null value (a tombstone)
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;  // only when a source is asked for them
  // Null: `value` holds the record's bytes. Otherwise `value` holds the codec's compact form
  // (RecordCodec); the codec outlives the record, as `topic` does.
  const RecordCodec* codec = nullptr;

  // The value's bytes: `value` itself, or rendered by the codec.
  std::string valueBytes() const {
    if (!codec) return value;
    std::string out;
    codec->render(*this, out);
    return out;
  }

  // Position and raw bytes for a dead letter.
  void fillDeadLetter(DeadLetter& out) const {
    out.topic = std::string(topic);
    out.partition = partition;
    out.offset = offset;
    out.key = key;
    out.hasKey = hasKey;
    out.payload = hasValue ? valueBytes() : std::string();
    out.hasPayload = hasValue;
  }
};

}  // namespace dataflow
