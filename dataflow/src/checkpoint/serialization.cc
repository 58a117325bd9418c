// Text forms of checkpoint entries. Offsets files follow Spark's layout: a version line, a JSON
// metadata line, then one JSON line per source. Ours also records each batch's start offsets in the
// metadata line, so a replay does not depend on an older entry that retention may have deleted.
#include <boost/json.hpp>

#include <sstream>

#include "dataflow/checkpoint.h"
#include "dataflow/error.h"

namespace dataflow {
namespace {

constexpr std::string_view kVersionLine = "v1";

boost::json::value parseJson(std::string_view text, const std::string& origin) {
  boost::json::error_code ec;
  boost::json::value v = boost::json::parse(text, ec);
  if (ec) throw CheckpointError("corrupt checkpoint entry " + origin + ": " + ec.message());
  return v;
}

const boost::json::value& field(const boost::json::object& o, std::string_view key,
                                const std::string& origin) {
  auto it = o.find(key);
  if (it == o.end()) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": missing field '" + std::string(key) + "'");
  }
  return it->value();
}

int64_t intField(const boost::json::object& o, std::string_view key, const std::string& origin) {
  const auto& v = field(o, key, origin);
  if (!v.is_int64()) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": field '" + std::string(key) + "' is not an integer");
  }
  return v.as_int64();
}

// Splits into lines; the last line must end with '\n', else the file was truncated.
std::vector<std::string_view> lines(std::string_view text, const std::string& origin) {
  if (text.empty() || text.back() != '\n') {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": truncated (no final newline)");
  }
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

std::string serializeOffsetLogEntry(const OffsetLogEntry& entry) {
  boost::json::object meta;
  meta["batchId"] = entry.batchId;
  meta["batchTimestampMs"] = entry.batchTimestampMs;
  meta["batchWatermarkMs"] = entry.batchWatermarkMs;
  boost::json::array sources;
  for (const auto& s : entry.sources) {
    boost::json::object o;
    o["description"] = s.description;
    o["startOffset"] = boost::json::parse(s.start.toJson());
    sources.push_back(std::move(o));
  }
  meta["sources"] = std::move(sources);
  std::string out(kVersionLine);
  out += '\n';
  out += boost::json::serialize(meta);
  out += '\n';
  for (const auto& s : entry.sources) {
    out += s.end.toJson();
    out += '\n';
  }
  return out;
}

OffsetLogEntry parseOffsetLogEntry(std::string_view text, const std::string& origin) {
  auto ls = lines(text, origin);
  if (ls.size() < 2 || ls[0] != kVersionLine) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": expected version line 'v1'");
  }
  auto meta = parseJson(ls[1], origin);
  if (!meta.is_object()) throw CheckpointError("corrupt checkpoint entry " + origin + ": metadata is not an object");
  const auto& m = meta.as_object();
  OffsetLogEntry entry;
  entry.batchId = intField(m, "batchId", origin);
  entry.batchTimestampMs = intField(m, "batchTimestampMs", origin);
  if (m.contains("batchWatermarkMs")) entry.batchWatermarkMs = intField(m, "batchWatermarkMs", origin);
  const auto& sources = field(m, "sources", origin);
  if (!sources.is_array() || sources.as_array().size() != ls.size() - 2) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": source count does not match offset lines");
  }
  for (size_t i = 0; i < sources.as_array().size(); ++i) {
    const auto& s = sources.as_array()[i];
    if (!s.is_object()) throw CheckpointError("corrupt checkpoint entry " + origin + ": bad source entry");
    const auto& desc = field(s.as_object(), "description", origin);
    if (!desc.is_string()) throw CheckpointError("corrupt checkpoint entry " + origin + ": bad source description");
    SourceRange range;
    range.description = std::string(desc.as_string());
    try {
      range.start = Offsets::fromJson(boost::json::serialize(field(s.as_object(), "startOffset", origin)));
      range.end = Offsets::fromJson(ls[i + 2]);
    } catch (const CheckpointError& e) {
      throw CheckpointError("corrupt checkpoint entry " + origin + ": " + e.what());
    }
    entry.sources.push_back(std::move(range));
  }
  return entry;
}

std::string serializeCommitLogEntry(const CommitLogEntry& entry) {
  boost::json::object o;
  o["batchId"] = entry.batchId;
  o["commitTimestampMs"] = entry.commitTimestampMs;
  o["nextBatchWatermarkMs"] = entry.nextBatchWatermarkMs;
  return std::string(kVersionLine) + "\n" + boost::json::serialize(o) + "\n";
}

CommitLogEntry parseCommitLogEntry(std::string_view text, const std::string& origin) {
  auto ls = lines(text, origin);
  if (ls.size() != 2 || ls[0] != kVersionLine) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": expected 'v1' and one JSON line");
  }
  auto v = parseJson(ls[1], origin);
  if (!v.is_object()) throw CheckpointError("corrupt checkpoint entry " + origin + ": not an object");
  CommitLogEntry entry;
  entry.batchId = intField(v.as_object(), "batchId", origin);
  entry.commitTimestampMs = intField(v.as_object(), "commitTimestampMs", origin);
  if (v.as_object().contains("nextBatchWatermarkMs")) {
    entry.nextBatchWatermarkMs = intField(v.as_object(), "nextBatchWatermarkMs", origin);
  }
  return entry;
}

std::string serializeMetadata(const QueryMetadata& metadata) {
  boost::json::object o;
  o["id"] = metadata.id;
  boost::json::array sources;
  for (const auto& s : metadata.sourceDescriptions) sources.emplace_back(s);
  o["sources"] = std::move(sources);
  return boost::json::serialize(o) + "\n";
}

QueryMetadata parseMetadata(std::string_view text, const std::string& origin) {
  auto ls = lines(text, origin);
  if (ls.size() != 1) throw CheckpointError("corrupt checkpoint entry " + origin + ": expected one JSON line");
  auto v = parseJson(ls[0], origin);
  if (!v.is_object()) throw CheckpointError("corrupt checkpoint entry " + origin + ": not an object");
  QueryMetadata m;
  const auto& id = field(v.as_object(), "id", origin);
  if (!id.is_string() || id.as_string().empty()) {
    throw CheckpointError("corrupt checkpoint entry " + origin + ": bad query id");
  }
  m.id = std::string(id.as_string());
  const auto& sources = field(v.as_object(), "sources", origin);
  if (!sources.is_array()) throw CheckpointError("corrupt checkpoint entry " + origin + ": bad sources");
  for (const auto& s : sources.as_array()) {
    if (!s.is_string()) throw CheckpointError("corrupt checkpoint entry " + origin + ": bad source");
    m.sourceDescriptions.emplace_back(s.as_string());
  }
  return m;
}

}  // namespace dataflow
