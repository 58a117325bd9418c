// Exchanges that misbehave as real logs do, for the tests of operators that regroup rows through
// an exchange (exchange.h): records sent again after newer ones, and a partition read late.
#pragma once

#include <dataflow/dataflow.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace dataflow::exchange_testing {

// An exchange whose channels, at every flush, also send again some records sent before: what a
// replayed batch and an instance fenced after a rebalance do to a real log (stale copies arriving
// after newer records of the same key).
class StaleCopiesExchange final : public Exchange {
 public:
  StaleCopiesExchange(std::shared_ptr<Exchange> inner, uint32_t seed) : inner_(std::move(inner)), rng_(seed) {}
  std::shared_ptr<ExchangeChannel> channel(const std::string& name) override {
    return std::make_shared<Channel>(inner_->channel(name), rng_);
  }
  std::string description() const override { return "StaleCopies"; }

 private:
  struct Channel final : ExchangeChannel {
    Channel(std::shared_ptr<ExchangeChannel> inner, std::mt19937& rng) : inner(std::move(inner)), rng(rng) {}
    int32_t partitions() const override { return inner->partitions(); }
    void send(int32_t partition, std::string_view key, std::string_view value) override {
      sent.push_back({partition, std::string(key), std::string(value)});
      inner->send(partition, key, value);
      fresh = true;
    }
    void flush() override {
      // Only after new records, or an available-now run would never see the exchange drained.
      for (int i = 0; i < 3 && fresh; ++i) {
        const auto& [p, k, v] = sent[rng() % sent.size()];
        inner->send(p, k, v);
      }
      fresh = false;
      inner->flush();
    }
    std::shared_ptr<TypedSource<LogRecord>> source() override { return inner->source(); }
    std::shared_ptr<ExchangeChannel> inner;
    std::mt19937& rng;
    std::vector<std::tuple<int32_t, std::string, std::string>> sent;
    bool fresh = false;
  };
  std::shared_ptr<Exchange> inner_;
  std::mt19937 rng_;
};

// An exchange whose partition 0 is read one poll late: latestOffsets() shows it where it was at
// the previous call, so the other partitions run ahead of it.
class LaggingExchange final : public Exchange {
 public:
  explicit LaggingExchange(std::shared_ptr<Exchange> inner) : inner_(std::move(inner)) {}
  std::shared_ptr<ExchangeChannel> channel(const std::string& name) override {
    return std::make_shared<Channel>(inner_->channel(name));
  }
  std::string description() const override { return "Lagging"; }

 private:
  struct LaggingSource final : TypedSource<LogRecord> {
    explicit LaggingSource(std::shared_ptr<TypedSource<LogRecord>> inner) : inner(std::move(inner)) {}
    std::string description() const override { return inner->description(); }
    void open() override { inner->open(); }
    void close() override { inner->close(); }
    Offsets initialOffsets() override { return inner->initialOffsets(); }
    Offsets latestOffsets() override {
      Offsets now = inner->latestOffsets();
      Offsets shown = now;
      for (auto& [p, end] : shown.partitions()) {
        if (p.partition == 0) end = std::min(end, previous.get(p, 0));
      }
      previous = now;
      return shown;
    }
    bool fedByQuery() const override { return true; }
    void read(const PartitionId& p, int64_t from, int64_t until, std::vector<LogRecord>& out) override {
      inner->read(p, from, until, out);
    }
    std::shared_ptr<TypedSource<LogRecord>> inner;
    Offsets previous;
  };
  struct Channel final : ExchangeChannel {
    explicit Channel(std::shared_ptr<ExchangeChannel> inner)
        : inner(std::move(inner)), lagging(std::make_shared<LaggingSource>(this->inner->source())) {}
    int32_t partitions() const override { return inner->partitions(); }
    void send(int32_t partition, std::string_view key, std::string_view value) override { inner->send(partition, key, value); }
    void flush() override { inner->flush(); }
    std::shared_ptr<TypedSource<LogRecord>> source() override { return lagging; }
    std::shared_ptr<ExchangeChannel> inner;
    std::shared_ptr<LaggingSource> lagging;
  };
  std::shared_ptr<Exchange> inner_;
};

}  // namespace dataflow::exchange_testing
