// Exchanges: how a query regroups rows by a key its source is not partitioned by, so that each
// group's state lives with one partition and several processes share the groups. As Kafka
// Streams does with its repartition topics, the rows go through a log the query writes and reads
// back as another of its sources: no network shuffle of our own, and the log's partitions are
// assigned to the query's instances by the same consumer group protocol as the source's.
//
// A batch sends the rows it regroups and flushes them before it commits; a later batch reads
// them. Nothing is transactional across the log and the checkpoint: a batch replayed after a
// crash sends its rows again, and an instance fenced after a rebalance may still send some. The
// reader must therefore be idempotent, and both readers are: a table's row carries its key's
// version, and a partition applies a version only once (table.h); a joined stream's row carries
// its origin (source partition and offset), and a partition keeps a row of an origin only once
// (exchanged_join_operators.h). The duplicates change nothing.
//
// The core defines the interface; connectors implement it (kafka::KafkaExchange: internal
// topics). memoryExchange() serves tests and one-process runs.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "dataflow/record.h"
#include "dataflow/source.h"

namespace dataflow {

// One log of an exchange: written by the query, read back as one of its sources.
class ExchangeChannel {
 public:
  virtual ~ExchangeChannel() = default;

  // The log's partitions; fixed once the log exists (rows are routed by it).
  virtual int32_t partitions() const = 0;
  // Appends a record to `partition`. Called from one thread at a time.
  virtual void send(int32_t partition, std::string_view key, std::string_view value) = 0;
  // Returns once every record sent so far is durable, each partition in the order sent; throws
  // ConnectorError (retriable where a new attempt may succeed) otherwise.
  virtual void flush() = 0;
  // The log read back (Source::fedByQuery() is true for it).
  virtual std::shared_ptr<TypedSource<LogRecord>> source() = 0;
};

class Exchange {
 public:
  virtual ~Exchange() = default;
  // The channel `name`, made when missing. Names are given by the plan (e.g.
  // "orders-stats-groupBy-1") and stay the same across restarts of the query.
  virtual std::shared_ptr<ExchangeChannel> channel(const std::string& name) = 0;
  // For plans and logs; no secrets.
  virtual std::string description() const = 0;
};

// An exchange in memory with `partitions` partitions per channel: it lives as long as the object
// (pass the same one to a restarted query, as with memoryCheckpoint()), one process only.
std::shared_ptr<Exchange> memoryExchange(int32_t partitions);

// A stable 64-bit hash of bytes (FNV-1a): rows are routed by it, and every process of a query
// must route a key to the same partition (absl::Hash is seeded per process).
inline uint64_t stableHash(std::string_view bytes) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace dataflow
