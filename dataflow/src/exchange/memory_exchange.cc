// The in-memory exchange: each channel keeps its partitions' records in vectors, offsets are
// positions. For tests and one-process runs; nothing survives the process.
#include <deque>
#include <map>
#include <mutex>
#include <shared_mutex>

#include "dataflow/error.h"
#include "dataflow/exchange.h"

namespace dataflow {
namespace {

class MemoryChannel final : public ExchangeChannel, public TypedSource<LogRecord>,
                            public std::enable_shared_from_this<MemoryChannel> {
 public:
  MemoryChannel(std::string name, int32_t partitions) : name_(std::move(name)), data_(static_cast<size_t>(partitions)) {}

  // ExchangeChannel
  int32_t partitions() const override { return static_cast<int32_t>(data_.size()); }
  void send(int32_t partition, std::string_view key, std::string_view value) override {
    if (partition < 0 || partition >= partitions()) {
      throw InternalError("memory exchange " + name_ + ": no partition " + std::to_string(partition));
    }
    std::unique_lock lock(mu_);
    auto& part = data_[static_cast<size_t>(partition)];
    LogRecord r;
    r.topic = name_;
    r.partition = partition;
    r.offset = static_cast<int64_t>(part.size());
    r.key.assign(key);
    r.hasKey = true;
    r.value.assign(value);
    r.hasValue = true;
    part.push_back(std::move(r));
  }
  void flush() override {}
  std::shared_ptr<TypedSource<LogRecord>> source() override { return shared_from_this(); }

  // Source
  std::string description() const override { return "MemoryExchange[" + name_ + "]"; }
  bool fedByQuery() const override { return true; }
  Offsets initialOffsets() override {
    Offsets zero;
    for (int32_t p = 0; p < partitions(); ++p) zero.set({name_, p}, 0);
    return zero;
  }
  Offsets latestOffsets() override {
    std::shared_lock lock(mu_);
    Offsets out;
    for (int32_t p = 0; p < partitions(); ++p) out.set({name_, p}, static_cast<int64_t>(data_[static_cast<size_t>(p)].size()));
    return out;
  }
  void read(const PartitionId& partition, int64_t from, int64_t until, std::vector<LogRecord>& out) override {
    std::shared_lock lock(mu_);
    if (partition.topic != name_ || partition.partition < 0 || partition.partition >= partitions()) {
      throw ConnectorError("memory exchange " + name_ + ": unknown partition " + partition.toString(), false);
    }
    const auto& part = data_[static_cast<size_t>(partition.partition)];
    if (from < 0 || from > until || until > static_cast<int64_t>(part.size())) {
      throw ConnectorError("memory exchange " + name_ + ": range [" + std::to_string(from) + ", " +
                               std::to_string(until) + ") is not available", false);
    }
    out.insert(out.end(), part.begin() + from, part.begin() + until);
  }

 private:
  const std::string name_;  // LogRecord::topic points into it
  mutable std::shared_mutex mu_;
  std::vector<std::deque<LogRecord>> data_;
};

class MemoryExchange final : public Exchange {
 public:
  explicit MemoryExchange(int32_t partitions) : partitions_(partitions) {
    if (partitions < 1) throw ConfigurationError("memoryExchange: partitions must be >= 1");
  }
  std::shared_ptr<ExchangeChannel> channel(const std::string& name) override {
    std::lock_guard lock(mu_);
    auto& c = channels_[name];
    if (!c) c = std::make_shared<MemoryChannel>(name, partitions_);
    return c;
  }
  std::string description() const override { return "MemoryExchange[" + std::to_string(partitions_) + " partitions]"; }

 private:
  int32_t partitions_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<MemoryChannel>> channels_;
};

}  // namespace

std::shared_ptr<Exchange> memoryExchange(int32_t partitions) { return std::make_shared<MemoryExchange>(partitions); }

}  // namespace dataflow
