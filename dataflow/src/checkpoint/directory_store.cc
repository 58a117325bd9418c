// The directory checkpoint store: Spark's layout, crash-safe writes, bounded retention.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include "dataflow/checkpoint.h"
#include "dataflow/error.h"

namespace dataflow {
namespace {

namespace fs = std::filesystem;

std::string errnoText() { return std::strerror(errno); }

// A write that failed with `error` (an errno). A full filesystem (or quota) is a dependency failing,
// not a broken checkpoint: freeing space fixes it, so the engine retries the batch in-process with
// its backoff rather than the job dying and restarting. Anything else is a CheckpointError.
[[noreturn]] void throwWriteError(const std::string& what, int error) {
  std::string message = what + ": " + std::strerror(error);
  if (error == ENOSPC || error == EDQUOT) throw ConnectorError(message + " (retried until space is freed)", true);
  throw CheckpointError(message);
}

void fsyncPath(const fs::path& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) throw CheckpointError("cannot open " + path.string() + " to sync: " + errnoText());
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) throw CheckpointError("fsync " + path.string() + " failed: " + errnoText());
}

// Writes `content` to `path` so that a crash leaves either no file or the whole file.
void writeAtomically(const fs::path& path, const std::string& content, bool sync) {
  fs::path tmp = path;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int error = errno;
    throwWriteError("cannot create " + tmp.string(), error);
  }
  // A failed attempt leaves no partial file behind: the retry (or a restart) starts clean.
  auto fail = [&](const std::string& what, int error) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throwWriteError(what, error);
  };
  size_t written = 0;
  while (written < content.size()) {
    ssize_t n = ::write(fd, content.data() + written, content.size() - written);
    if (n < 0) {
      const int error = errno;  // before building the message
      if (error == EINTR) continue;
      fail("cannot write " + tmp.string(), error);
    }
    written += static_cast<size_t>(n);
  }
  if (sync && ::fsync(fd) != 0) {
    const int error = errno;
    fail("fsync " + tmp.string() + " failed", error);
  }
  ::close(fd);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throwWriteError("cannot rename " + tmp.string() + " to " + path.string(), ec.value());
  if (sync) fsyncPath(path.parent_path(), true);
}

std::optional<std::string> readFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (!fs::exists(path)) return std::nullopt;
    throw CheckpointError("cannot read " + path.string());
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Batch ids present in a log folder, ascending. Temporary files are ignored.
std::vector<int64_t> listBatchIds(const fs::path& dir) {
  std::vector<int64_t> ids;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    int64_t id = 0;
    auto [ptr, err] = std::from_chars(name.data(), name.data() + name.size(), id);
    if (err == std::errc() && ptr == name.data() + name.size()) ids.push_back(id);
  }
  if (ec) throw CheckpointError("cannot list " + dir.string() + ": " + ec.message());
  std::sort(ids.begin(), ids.end());
  return ids;
}

class DirectoryCheckpointStore final : public CheckpointStore {
 public:
  DirectoryCheckpointStore(fs::path dir, DirectoryCheckpointOptions options)
      : dir_(std::move(dir)), options_(options) {
    if (options_.retainBatches < 1) {
      throw ConfigurationError("DirectoryCheckpointOptions.retainBatches must be >= 1");
    }
    std::error_code ec;
    fs::create_directories(dir_ / "offsets", ec);
    if (!ec) fs::create_directories(dir_ / "commits", ec);
    if (ec) throw CheckpointError("cannot create checkpoint directory " + dir_.string() + ": " + ec.message());
  }

  std::string describe() const override { return "dir:" + dir_.string(); }

  std::optional<QueryMetadata> readMetadata() override {
    auto path = dir_ / "metadata";
    auto text = readFile(path);
    if (!text) return std::nullopt;
    return parseMetadata(*text, path.string());
  }
  void writeMetadata(const QueryMetadata& metadata) override {
    writeAtomically(dir_ / "metadata", serializeMetadata(metadata), options_.sync);
  }

  void writeOffsets(const OffsetLogEntry& entry) override {
    writeAtomically(dir_ / "offsets" / std::to_string(entry.batchId), serializeOffsetLogEntry(entry),
                    options_.sync);
  }
  std::optional<OffsetLogEntry> latestOffsets() override {
    auto ids = listBatchIds(dir_ / "offsets");
    if (ids.empty()) return std::nullopt;
    return readOffsets(ids.back());
  }
  std::optional<OffsetLogEntry> readOffsets(int64_t batchId) override {
    auto path = dir_ / "offsets" / std::to_string(batchId);
    auto text = readFile(path);
    if (!text) return std::nullopt;
    auto entry = parseOffsetLogEntry(*text, path.string());
    if (entry.batchId != batchId) {
      throw CheckpointError("corrupt checkpoint entry " + path.string() + ": holds batch " +
                            std::to_string(entry.batchId));
    }
    return entry;
  }

  void writeCommit(const CommitLogEntry& entry) override {
    writeAtomically(dir_ / "commits" / std::to_string(entry.batchId), serializeCommitLogEntry(entry),
                    options_.sync);
    purge(entry.batchId);
  }
  std::optional<CommitLogEntry> latestCommit() override {
    auto ids = listBatchIds(dir_ / "commits");
    if (ids.empty()) return std::nullopt;
    auto path = dir_ / "commits" / std::to_string(ids.back());
    auto text = readFile(path);
    if (!text) return std::nullopt;
    return parseCommitLogEntry(*text, path.string());
  }

  bool supportsState() const override { return true; }
  void writeStateFiles(const StateChanges& changes) override {
    for (const auto& f : changes.files) {
      fs::path path = dir_ / f.id.path();
      std::error_code ec;
      fs::create_directories(path.parent_path(), ec);
      if (ec) throw CheckpointError("cannot create " + path.parent_path().string() + ": " + ec.message());
      writeAtomically(path, f.bytes, options_.sync);
    }
  }
  std::vector<StateFileId> listStateFiles(int operatorId) override {
    std::vector<StateFileId> out;
    fs::path opDir = dir_ / "state" / std::to_string(operatorId);
    std::error_code ec;
    if (!fs::exists(opDir, ec)) return out;
    for (const auto& part : fs::directory_iterator(opDir, ec)) {
      for (const auto& file : fs::directory_iterator(part.path(), ec)) {
        auto rel = fs::relative(file.path(), dir_, ec).generic_string();
        if (auto id = StateFileId::fromPath(rel)) out.push_back(*id);  // skips *.tmp leftovers
      }
    }
    if (ec) throw CheckpointError("cannot list " + opDir.string() + ": " + ec.message());
    return out;
  }
  std::string readStateFile(const StateFileId& id) override {
    auto path = dir_ / id.path();
    auto bytes = readFile(path);
    if (!bytes) throw CheckpointError("state file " + path.string() + " is missing");
    return *bytes;
  }
  void deleteStateFiles(const std::vector<StateFileId>& ids) override {
    for (const auto& id : ids) {
      std::error_code ec;
      fs::remove(dir_ / id.path(), ec);
    }
  }

 private:
  // Deletes entries older than the retention window. Never touches the newest entries, so a crash
  // here loses nothing that a restart needs.
  void purge(int64_t committed) {
    int64_t threshold = committed - options_.retainBatches;
    if (threshold < 0 || committed % 10 != 0) return;  // amortise the directory scans
    for (const char* log : {"offsets", "commits"}) {
      for (int64_t id : listBatchIds(dir_ / log)) {
        if (id > threshold) break;
        std::error_code ec;
        fs::remove(dir_ / log / std::to_string(id), ec);
      }
    }
  }

  fs::path dir_;
  DirectoryCheckpointOptions options_;
};

}  // namespace

std::shared_ptr<CheckpointStore> directoryCheckpoint(const std::filesystem::path& dir,
                                                     const DirectoryCheckpointOptions& options) {
  if (dir.empty()) throw ConfigurationError("checkpoint directory is empty");
  return std::make_shared<DirectoryCheckpointStore>(dir, options);
}

}  // namespace dataflow
