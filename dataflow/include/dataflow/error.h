// The exception hierarchy of the framework. Every error that ends a query is one of these, so a
// caller can tell a user's mistake (configuration) from a flaky dependency (retriable connector
// error), a damaged checkpoint, or a bug of ours (internal).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "dataflow/offsets.h"

namespace dataflow {

// Base of every exception the framework throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad option, flag or plan, detected while a query is built, validated or started. Never
// retried. The message names the offending setting.
class ConfigurationError : public Error {
 public:
  using Error::Error;
};

// A failure talking to an external system (broker, database, file). `retriable()` tells the
// engine whether re-running the same batch after a backoff may succeed.
class ConnectorError : public Error {
 public:
  ConnectorError(const std::string& what, bool retriable) : Error(what), retriable_(retriable) {}
  bool retriable() const noexcept { return retriable_; }

 private:
  bool retriable_;
};

// A source's read, or its wait for data, gave up because the query is stopping
// (Source::interrupt). Not a failure: the batch stays uncommitted and the next run replays it.
class ReadInterrupted : public ConnectorError {
 public:
  explicit ReadInterrupted(const std::string& what) : ConnectorError(what, true) {}
};

// A checkpoint that cannot be read, is corrupt, or belongs to a different query.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// Scale-out: this instance no longer holds the lease of some partitions, because a rebalance gave
// them to another instance that has leased them since (e.g. this one was paused past the consumer
// group's session timeout). The batch is abandoned, never committed; the engine drops those
// partitions and the new owner continues from their last committed offsets.
class PartitionsFencedError : public CheckpointError {
 public:
  PartitionsFencedError(const std::string& what, std::vector<PartitionId> partitions)
      : CheckpointError(what), partitions_(std::move(partitions)) {}
  const std::vector<PartitionId>& partitions() const noexcept { return partitions_; }

 private:
  std::vector<PartitionId> partitions_;
};

// A broken invariant inside the framework: a bug, never the user's fault.
class InternalError : public Error {
 public:
  using Error::Error;
};

}  // namespace dataflow
