// Decoding of PostgreSQL's logical replication stream: the CopyBoth frames of the streaming
// replication protocol (XLogData, primary keepalive) and the messages of the built-in `pgoutput`
// plugin, protocol version 1 (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete,
// Truncate, logical Message). Parsing only, no I/O: the replication source feeds it bytes, the
// fuzz target feeds it anything.
//
// Reference: "Streaming Replication Protocol" and "Logical Replication Message Formats" in the
// PostgreSQL 15 documentation. Every integer is big-endian. A truncated or corrupt message throws
// ProtocolError naming what was being read; nothing is read past the end of the input.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/error.h"

namespace dataflow::postgres::pgoutput {

// A message that does not follow the protocol. Never retriable: the same bytes decode the same way.
class ProtocolError : public ConnectorError {
 public:
  explicit ProtocolError(const std::string& what) : ConnectorError(what, false) {}
};

// PostgreSQL's timestamps count microseconds from 2000-01-01; Unix time from 1970-01-01.
inline constexpr int64_t kPostgresEpochOffsetMicros = 946684800LL * 1000000;

// One frame of the CopyBoth stream sent by the server.
struct ServerFrame {
  enum class Kind : char { kXLogData = 'w', kKeepalive = 'k' } kind;
  uint64_t walStart = 0;   // XLogData: where the data starts
  uint64_t walEnd = 0;     // the server's position: for a keepalive, everything before it was sent
  int64_t sendTimeMicros = 0;  // Unix microseconds
  bool replyRequested = false;  // keepalive: answer at once or be disconnected
  std::string_view data;   // XLogData: one pgoutput message (a view into the frame)
};
ServerFrame decodeFrame(std::string_view frame);

// The client's Standby Status Update ('r'): written/flushed/applied positions and the client's
// clock. Flushed is what the slot's confirmed_flush_lsn becomes.
std::string encodeStatusUpdate(uint64_t written, uint64_t flushed, uint64_t applied, int64_t nowUnixMicros,
                               bool replyRequested);

struct Column {
  bool key = false;  // part of the replica identity (the primary key under REPLICA IDENTITY DEFAULT)
  std::string name;
  uint32_t typeOid = 0;
  int32_t typeModifier = -1;
};

struct Relation {
  uint32_t oid = 0;
  std::string schema;  // "" means pg_catalog, as the protocol sends it
  std::string name;
  char replicaIdentity = 'd';  // d default, n nothing, f full, i index
  std::vector<Column> columns;
};

// One column of a tuple. Views point into the message being decoded.
struct Value {
  enum class Kind : char { kNull = 'n', kUnchangedToast = 'u', kText = 't', kBinary = 'b' } kind = Kind::kNull;
  std::string_view bytes;
};

// A decoded message. One object is reused for every message of a stream, so that decoding a
// change allocates nothing once its tuples have grown to the widest table.
struct Message {
  enum class Type : char {
    kBegin = 'B',
    kCommit = 'C',
    kOrigin = 'O',
    kRelation = 'R',
    kType = 'Y',
    kInsert = 'I',
    kUpdate = 'U',
    kDelete = 'D',
    kTruncate = 'T',
    kLogicalMessage = 'M',
  } type = Type::kBegin;

  // Begin: finalLsn (the commit's LSN), commitTimeMicros (Unix), xid.
  // Commit: flags, commitLsn, endLsn (the end of the commit record: the position to confirm),
  // commitTimeMicros.
  uint64_t finalLsn = 0, commitLsn = 0, endLsn = 0;
  int64_t commitTimeMicros = 0;
  uint32_t xid = 0;
  uint8_t flags = 0;

  // Insert, Update, Delete: the relation; oldKind is 'K' (key columns only), 'O' (the whole old
  // row, REPLICA IDENTITY FULL) or 0 when the message has no old tuple.
  uint32_t relationOid = 0;
  char oldKind = 0;
  std::vector<Value> oldTuple;
  std::vector<Value> newTuple;

  // Relation.
  Relation relation;
  // Type: oid, schema and name of a non-builtin type used by a relation's column.
  uint32_t typeOid = 0;
  std::string typeSchema, typeName;
  // Origin: its LSN and name.
  uint64_t originLsn = 0;
  std::string originName;
  // Truncate: option bits (1 CASCADE, 2 RESTART IDENTITY) and the relations.
  uint8_t truncateOptions = 0;
  std::vector<uint32_t> truncatedRelations;
  // Logical message (pg_logical_emit_message): transactional flag, prefix, content.
  bool transactional = false;
  std::string_view prefix, content;
};

// Decodes one pgoutput message into `out` (which keeps views into `bytes`).
void decodeMessage(std::string_view bytes, Message& out);

}  // namespace dataflow::postgres::pgoutput
