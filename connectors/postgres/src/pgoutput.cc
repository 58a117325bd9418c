// A bounds-checked big-endian reader over one message; every read names what it reads, so that a
// truncated message says where it ended.
#include "dataflow/postgres/pgoutput.h"

#include <cstring>
#include <limits>

namespace dataflow::postgres::pgoutput {
namespace {

class Reader {
 public:
  Reader(std::string_view bytes, const char* message) : bytes_(bytes), message_(message) {}

  uint8_t u8(const char* what) { return static_cast<uint8_t>(take(1, what)[0]); }
  uint16_t u16(const char* what) { return static_cast<uint16_t>(be(take(2, what), 2)); }
  uint32_t u32(const char* what) { return static_cast<uint32_t>(be(take(4, what), 4)); }
  uint64_t u64(const char* what) { return be(take(8, what), 8); }
  int64_t i64(const char* what) { return static_cast<int64_t>(u64(what)); }
  // A NUL-terminated string.
  std::string_view cstring(const char* what) {
    const void* nul = std::memchr(bytes_.data() + pos_, '\0', bytes_.size() - pos_);
    if (!nul) fail(what, "has no terminating NUL");
    size_t length = static_cast<const char*>(nul) - (bytes_.data() + pos_);
    std::string_view s = bytes_.substr(pos_, length);
    pos_ += length + 1;
    return s;
  }
  std::string_view bytes(size_t n, const char* what) { return take(n, what); }
  std::string_view rest() {
    std::string_view s = bytes_.substr(pos_);
    pos_ = bytes_.size();
    return s;
  }
  size_t remaining() const { return bytes_.size() - pos_; }
  void expectEnd() {
    if (pos_ != bytes_.size()) {
      throw ProtocolError(std::string("pgoutput: ") + message_ + " message has " + std::to_string(bytes_.size() - pos_) +
                          " unexpected trailing bytes");
    }
  }
  [[noreturn]] void fail(const char* what, const std::string& why) const {
    throw ProtocolError(std::string("pgoutput: ") + message_ + " message: " + what + " " + why + " (at byte " +
                        std::to_string(pos_) + " of " + std::to_string(bytes_.size()) + ")");
  }

 private:
  std::string_view take(size_t n, const char* what) {
    if (bytes_.size() - pos_ < n) fail(what, "is truncated");
    std::string_view s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  static uint64_t be(std::string_view s, size_t n) {
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v = v << 8 | static_cast<uint8_t>(s[i]);
    return v;
  }

  std::string_view bytes_;
  const char* message_;
  size_t pos_ = 0;
};

void readTuple(Reader& r, std::vector<Value>& out) {
  uint16_t columns = r.u16("tuple column count");
  // Each column takes at least one byte: a count larger than what is left is corrupt, and must not
  // make us allocate for it.
  if (columns > r.remaining()) r.fail("tuple column count", std::to_string(columns) + " exceeds the message");
  out.resize(columns);
  for (uint16_t i = 0; i < columns; ++i) {
    uint8_t kind = r.u8("tuple column kind");
    Value& v = out[i];
    switch (kind) {
      case 'n':
        v = {Value::Kind::kNull, {}};
        break;
      case 'u':
        v = {Value::Kind::kUnchangedToast, {}};
        break;
      case 't':
      case 'b': {
        uint32_t length = r.u32("tuple column length");
        v = {kind == 't' ? Value::Kind::kText : Value::Kind::kBinary, r.bytes(length, "tuple column value")};
        break;
      }
      default:
        r.fail("tuple column kind", "is '" + std::string(1, static_cast<char>(kind)) + "', not n, u, t or b");
    }
  }
}

// Saturates: PostgreSQL's infinite timestamps are INT64_MIN/MAX, and a corrupt one must not overflow.
// The new tuple of an Insert or Update, after its 'N' marker (already read into `marker`).
void readNewTuple(Reader& r, uint8_t marker, std::vector<Value>& out) {
  if (marker != 'N') r.fail("new tuple marker", "is not 'N'");
  readTuple(r, out);
}

int64_t unixMicros(int64_t postgresMicros) {
  int64_t out;
  if (__builtin_add_overflow(postgresMicros, kPostgresEpochOffsetMicros, &out)) return std::numeric_limits<int64_t>::max();
  return out;
}

}  // namespace

ServerFrame decodeFrame(std::string_view frame) {
  Reader r(frame, "replication frame");
  ServerFrame out{};
  uint8_t kind = r.u8("kind");
  if (kind == 'w') {
    out.kind = ServerFrame::Kind::kXLogData;
    out.walStart = r.u64("XLogData start");
    out.walEnd = r.u64("XLogData end");
    out.sendTimeMicros = unixMicros(r.i64("XLogData send time"));
    out.data = r.rest();
  } else if (kind == 'k') {
    out.kind = ServerFrame::Kind::kKeepalive;
    out.walEnd = r.u64("keepalive end");
    out.sendTimeMicros = unixMicros(r.i64("keepalive send time"));
    out.replyRequested = r.u8("keepalive reply flag") != 0;
    r.expectEnd();
  } else {
    r.fail("kind", "is '" + std::string(1, static_cast<char>(kind)) + "', not 'w' (XLogData) or 'k' (keepalive)");
  }
  return out;
}

std::string encodeStatusUpdate(uint64_t written, uint64_t flushed, uint64_t applied, int64_t nowUnixMicros,
                               bool replyRequested) {
  std::string out(34, '\0');
  out[0] = 'r';
  auto put = [&](size_t at, uint64_t v) {
    for (int i = 7; i >= 0; --i, v >>= 8) out[at + i] = static_cast<char>(v & 0xff);
  };
  put(1, written);
  put(9, flushed);
  put(17, applied);
  put(25, static_cast<uint64_t>(nowUnixMicros - kPostgresEpochOffsetMicros));
  out[33] = replyRequested ? 1 : 0;
  return out;
}

void decodeMessage(std::string_view bytes, Message& out) {
  if (bytes.empty()) throw ProtocolError("pgoutput: empty message");
  const char type = bytes[0];
  const char* name = "unknown";
  switch (type) {
    case 'B': name = "Begin"; break;
    case 'C': name = "Commit"; break;
    case 'O': name = "Origin"; break;
    case 'R': name = "Relation"; break;
    case 'Y': name = "Type"; break;
    case 'I': name = "Insert"; break;
    case 'U': name = "Update"; break;
    case 'D': name = "Delete"; break;
    case 'T': name = "Truncate"; break;
    case 'M': name = "Message"; break;
    default:
      throw ProtocolError("pgoutput: unknown message type '" + std::string(1, type) + "' (byte " +
                          std::to_string(static_cast<uint8_t>(type)) + ")");
  }
  Reader r(bytes.substr(1), name);
  out.type = static_cast<Message::Type>(type);
  switch (out.type) {
    case Message::Type::kBegin:
      out.finalLsn = r.u64("final LSN");
      out.commitTimeMicros = unixMicros(r.i64("commit time"));
      out.xid = r.u32("xid");
      break;
    case Message::Type::kCommit:
      out.flags = r.u8("flags");
      out.commitLsn = r.u64("commit LSN");
      out.endLsn = r.u64("end LSN");
      out.commitTimeMicros = unixMicros(r.i64("commit time"));
      break;
    case Message::Type::kOrigin:
      out.originLsn = r.u64("origin LSN");
      out.originName = r.cstring("origin name");
      break;
    case Message::Type::kRelation: {
      Relation& rel = out.relation;
      rel.oid = r.u32("relation oid");
      rel.schema = r.cstring("namespace");
      rel.name = r.cstring("relation name");
      rel.replicaIdentity = static_cast<char>(r.u8("replica identity"));
      uint16_t columns = r.u16("column count");
      if (columns > r.remaining()) r.fail("column count", std::to_string(columns) + " exceeds the message");
      rel.columns.resize(columns);
      for (auto& c : rel.columns) {
        c.key = (r.u8("column flags") & 1) != 0;
        c.name = r.cstring("column name");
        c.typeOid = r.u32("column type");
        c.typeModifier = static_cast<int32_t>(r.u32("column type modifier"));
      }
      break;
    }
    case Message::Type::kType:
      out.typeOid = r.u32("type oid");
      out.typeSchema = r.cstring("type namespace");
      out.typeName = r.cstring("type name");
      break;
    case Message::Type::kInsert: {
      out.relationOid = r.u32("relation oid");
      out.oldKind = 0;
      out.oldTuple.clear();
      readNewTuple(r, r.u8("new tuple marker"), out.newTuple);
      break;
    }
    case Message::Type::kUpdate: {
      out.relationOid = r.u32("relation oid");
      out.oldKind = 0;
      out.oldTuple.clear();
      uint8_t marker = r.u8("tuple marker");
      if (marker == 'K' || marker == 'O') {
        out.oldKind = static_cast<char>(marker);
        readTuple(r, out.oldTuple);
        marker = r.u8("new tuple marker");
      }
      readNewTuple(r, marker, out.newTuple);
      break;
    }
    case Message::Type::kDelete: {
      out.relationOid = r.u32("relation oid");
      out.newTuple.clear();
      uint8_t marker = r.u8("old tuple marker");
      if (marker != 'K' && marker != 'O') r.fail("old tuple marker", "is not 'K' or 'O'");
      out.oldKind = static_cast<char>(marker);
      readTuple(r, out.oldTuple);
      break;
    }
    case Message::Type::kTruncate: {
      uint32_t count = r.u32("relation count");
      out.truncateOptions = r.u8("options");
      if (count > r.remaining() / 4) r.fail("relation count", std::to_string(count) + " exceeds the message");
      out.truncatedRelations.resize(count);
      for (auto& oid : out.truncatedRelations) oid = r.u32("relation oid");
      break;
    }
    case Message::Type::kLogicalMessage: {
      out.transactional = r.u8("flags") & 1;
      r.u64("message LSN");
      out.prefix = r.cstring("prefix");
      uint32_t length = r.u32("content length");
      out.content = r.bytes(length, "content");
      break;
    }
  }
  r.expectEnd();
}

}  // namespace dataflow::postgres::pgoutput
