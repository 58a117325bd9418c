// Change events in the shape Debezium's PostgreSQL connector gives them with the JSON converter
// (schemas disabled, decimal.handling.mode=string, time.precision.mode=adaptive, as
// scripts/cdc/debezium-connector.json configures it), made from pgoutput's text form. The direct
// replication source writes them so that every job parses either source's records alike.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/debezium/change_event.h"
#include "dataflow/postgres/pgoutput.h"

namespace dataflow::postgres::detail {

// A captured table as its changes describe it: from a Relation message, or from the snapshot's
// query result and primary key.
struct TableShape {
  std::string schema;
  std::string table;
  std::string topic;  // "<prefix>.<schema>.<table>"
  std::string_view internedTopic;  // the source's copy of `topic`, which records point at
  std::vector<pgoutput::Column> columns;
};

// What every event of one change shares.
struct EventSource {
  std::string_view connectorName;  // Debezium's topic.prefix ("dbserver1")
  std::string_view database;
  int64_t commitTimeMs = 0;  // source.ts_ms
  uint32_t xid = 0;
  uint64_t lsn = 0;          // source.lsn: the change's own LSN (the snapshot's version for reads)
  uint64_t commitLsn = 0;    // the transaction's commit LSN, in source.sequence
  std::string_view snapshot = "false";  // "true", "last" or "false"
  int64_t processedMs = 0;   // ts_ms: when the source made the event
};

using Tuple = std::vector<pgoutput::Value>;

// {"id":1}: the key columns of `tuple`. Appends to `out`.
void appendKeyJson(const TableShape& shape, const Tuple& tuple, std::string& out);

// The event's value: {"before":...,"after":...,"source":{...},"op":"c","ts_ms":...}. A null
// `before` or `after` is written as JSON null (a truncate, op 't', has neither). Appends to `out`.
void appendValueJson(char op, const TableShape& shape, const Tuple* before, const Tuple* after,
                     const EventSource& source, std::string& out);

// One column's value as Debezium's JSON (exposed for the unit tests): text form in, JSON out.
void appendColumnJson(const pgoutput::Column& column, const pgoutput::Value& value, std::string& out);

// ---------------------------------------------------------------------------------------------
// The compact form (ReplicationSourceOptions::compactValues): a change kept as pgoutput gave it,
// its tuples' bytes after a fixed header that points at the change's TableShape, which must stay
// alive and unchanged while records of it exist. Dead letters render it into the JSON above; a
// Debezium TableMapping reads it through CompactEventCodec::envelope without JSON, with the
// values the JSON would have given.

// Appends the compact form of the event appendValueJson would write.
void appendCompactValue(char op, const TableShape& shape, const Tuple* before, const Tuple* after,
                        const EventSource& source, std::string& out);

class CompactEventCodec final : public debezium::EventCodec {
 public:
  // The parts of EventSource that every event of a source shares.
  CompactEventCodec(std::string connectorName, std::string database)
      : connectorName_(std::move(connectorName)), database_(std::move(database)) {}

  std::string name() const override { return "pgoutput-compact"; }
  // Exactly the bytes appendValueJson writes for the change.
  void render(const LogRecord& record, std::string& out) const override;
  dataflow::Result<debezium::detail::Envelope> envelope(const LogRecord& record) const override;

 private:
  std::string connectorName_;
  std::string database_;
};

}  // namespace dataflow::postgres::detail
