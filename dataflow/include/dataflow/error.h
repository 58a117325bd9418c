// The exception hierarchy of the framework. Every error that ends a query is one of these, so a
// caller can tell a user's mistake (configuration) from a flaky dependency (retriable connector
// error), a damaged checkpoint, or a bug of ours (internal).
#pragma once

#include <stdexcept>
#include <string>

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

// A checkpoint that cannot be read, is corrupt, or belongs to a different query.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A broken invariant inside the framework: a bug, never the user's fault.
class InternalError : public Error {
 public:
  using Error::Error;
};

}  // namespace dataflow
