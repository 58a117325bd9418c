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

  // Position and raw bytes for a dead letter.
  void fillDeadLetter(DeadLetter& out) const {
    out.topic = std::string(topic);
    out.partition = partition;
    out.offset = offset;
    out.key = key;
    out.hasKey = hasKey;
    out.payload = value;
    out.hasPayload = hasValue;
  }
};

}  // namespace dataflow
