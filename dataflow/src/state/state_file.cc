// The state file format, state file names, and the CheckpointStore defaults for stores that keep
// no state.
#include <charconv>
#include <cstdio>
#include <cstring>

#include "dataflow/checkpoint.h"
#include "dataflow/error.h"
#include "dataflow/state.h"
#include "dataflow/window.h"

namespace dataflow {
namespace {

constexpr std::string_view kMagic = "DFST";
constexpr char kFormatVersion = 2;
constexpr size_t kHeaderSize = 4 + 1 + 1 + 8;  // magic, version, kind, entry count

// A checksum that reads 8 bytes at a time (state files run to hundreds of megabytes): each word
// is mixed into the running value with a multiply and a rotation; the tail and the length close it.
uint64_t checksum(std::string_view bytes) {
  constexpr uint64_t kMul = 0x9E3779B97F4A7C15ULL;
  uint64_t h = 0x6A09E667F3BCC908ULL ^ bytes.size();
  size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, bytes.data() + i, 8);
    h = (h ^ (w * kMul)) * kMul;
    h ^= h >> 29;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, bytes.data() + i, bytes.size() - i);
  h = (h ^ (tail * kMul)) * kMul;
  return h ^ (h >> 32);
}

// Topic names may hold characters that a path must not: '/' and '%' are percent-encoded.
std::string encodeSegment(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '/' || c == '%' || c == '\0') {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out;
}

std::optional<std::string> decodeSegment(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    unsigned v = 0;
    auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (ec != std::errc() || p != s.data() + i + 3) return std::nullopt;
    out += static_cast<char>(v);
    i += 2;
  }
  return out;
}

template <class I>
std::optional<I> parseInt(std::string_view s) {
  I v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

[[noreturn]] void noState(const CheckpointStore& store) {
  throw ConfigurationError("checkpoint " + store.describe() +
                           " does not keep the state of stateful operators (aggregations, windows, "
                           "deduplication); use a directory checkpoint or the in-memory store");
}

}  // namespace

const char* toString(OutputMode mode) {
  switch (mode) {
    case OutputMode::kAppend: return "append";
    case OutputMode::kUpdate: return "update";
    case OutputMode::kComplete: return "complete";
  }
  return "?";
}

StateFileWriter::StateFileWriter(Kind kind) {
  body_.reserve(4096);
  body_.append(kMagic);
  body_.push_back(kFormatVersion);
  body_.push_back(static_cast<char>(kind));
  body_.append(8, '\0');  // the entry count, set by finish()
  used_ = body_.size();
}

std::string StateFileWriter::finish() {
  body_.resize(used_);
  uint64_t count = count_;
  std::memcpy(body_.data() + kMagic.size() + 2, &count, sizeof count);
  uint64_t sum = checksum(body_);
  body_.append(reinterpret_cast<const char*>(&sum), sizeof sum);
  return std::move(body_);
}

StateFileReader::StateFileReader(std::string_view bytes, std::string origin) : origin_(std::move(origin)) {
  auto bad = [&](const std::string& why) { return CheckpointError("corrupt state file " + origin_ + ": " + why); };
  if (bytes.size() < kHeaderSize + sizeof(uint64_t) || bytes.substr(0, kMagic.size()) != kMagic) {
    throw bad("not a state file (or truncated)");
  }
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - sizeof stored, sizeof stored);
  std::string_view content = bytes.substr(0, bytes.size() - sizeof stored);
  if (checksum(content) != stored) throw bad("checksum mismatch (truncated or damaged)");
  if (content[kMagic.size()] != kFormatVersion) throw bad("unknown format version");
  char kind = content[kMagic.size() + 1];
  if (kind != static_cast<char>(StateFileWriter::Kind::kDelta) &&
      kind != static_cast<char>(StateFileWriter::Kind::kSnapshot)) {
    throw bad("unknown file kind");
  }
  kind_ = static_cast<StateFileWriter::Kind>(kind);
  uint64_t count;
  std::memcpy(&count, content.data() + kMagic.size() + 2, sizeof count);
  count_ = count;
  body_ = content.substr(kHeaderSize);
}

std::string StateFileId::path() const {
  return "state/" + std::to_string(operatorId) + "/" + encodeSegment(partition.topic) + "-" +
         std::to_string(partition.partition) + "/" + std::to_string(version) + (snapshot ? ".snapshot" : ".delta");
}

std::optional<StateFileId> StateFileId::fromPath(std::string_view relative) {
  if (relative.substr(0, 6) == "state/") relative.remove_prefix(6);
  size_t s1 = relative.find('/');
  if (s1 == std::string_view::npos) return std::nullopt;
  size_t s2 = relative.find('/', s1 + 1);
  if (s2 == std::string_view::npos || relative.find('/', s2 + 1) != std::string_view::npos) return std::nullopt;
  auto op = parseInt<int>(relative.substr(0, s1));
  std::string_view part = relative.substr(s1 + 1, s2 - s1 - 1);
  std::string_view file = relative.substr(s2 + 1);
  size_t dash = part.rfind('-');
  if (!op || dash == std::string_view::npos) return std::nullopt;
  auto topic = decodeSegment(part.substr(0, dash));
  auto number = parseInt<int32_t>(part.substr(dash + 1));
  StateFileId id;
  if (file.ends_with(".delta")) {
    file.remove_suffix(6);
  } else if (file.ends_with(".snapshot")) {
    file.remove_suffix(9);
    id.snapshot = true;
  } else {
    return std::nullopt;
  }
  auto version = parseInt<int64_t>(file);
  if (!topic || !number || !version) return std::nullopt;
  id.operatorId = *op;
  id.partition = PartitionId{*topic, *number};
  id.version = *version;
  return id;
}

void CheckpointStore::writeStateFiles(const StateChanges&) { noState(*this); }
std::vector<StateFileId> CheckpointStore::listStateFiles(int) { noState(*this); }
std::string CheckpointStore::readStateFile(const StateFileId&) { noState(*this); }
void CheckpointStore::deleteStateFiles(const std::vector<StateFileId>&) { noState(*this); }

WindowSpec tumbling(std::chrono::milliseconds size) {
  if (size.count() <= 0) throw ConfigurationError("tumbling window: the size must be positive, got " + std::to_string(size.count()) + " ms");
  return WindowSpec(WindowSpec::Kind::kTumbling, size.count(), size.count());
}

WindowSpec sliding(std::chrono::milliseconds size, std::chrono::milliseconds slide) {
  if (size.count() <= 0 || slide.count() <= 0 || slide > size) {
    throw ConfigurationError("sliding window: expected 0 < slide <= size, got size " + std::to_string(size.count()) +
                             " ms, slide " + std::to_string(slide.count()) + " ms");
  }
  return WindowSpec(WindowSpec::Kind::kSliding, size.count(), slide.count());
}

SessionSpec session(std::chrono::milliseconds gap) {
  if (gap.count() <= 0) throw ConfigurationError("session window: the gap must be positive, got " + std::to_string(gap.count()) + " ms");
  return SessionSpec{gap.count()};
}

std::string WindowSpec::toString() const {
  if (kind_ == Kind::kTumbling) return "tumbling(" + std::to_string(sizeMs_) + " ms)";
  return "sliding(" + std::to_string(sizeMs_) + " ms, " + std::to_string(slideMs_) + " ms)";
}

}  // namespace dataflow
