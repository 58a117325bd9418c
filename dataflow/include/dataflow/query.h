// A running streaming query (Spark's StreamingQuery) and the listener interface.
#pragma once

#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/progress.h"

namespace dataflow {

namespace detail {
class MicroBatchExecution;
}

// Callbacks on the query's driver thread. They must be quick and must not throw; an exception is
// logged and swallowed. Default implementations do nothing.
class QueryListener {
 public:
  virtual ~QueryListener() = default;
  struct Started {
    std::string id, runId, name, timestamp;
  };
  struct Idle {
    std::string id, runId, name, timestamp;
  };
  struct Terminated {
    std::string id, runId, name;
    std::optional<std::string> exception;  // what() of the error that ended the query
  };
  virtual void onQueryStarted(const Started&) {}
  virtual void onQueryProgress(const QueryProgress&) {}
  // A trigger found no new data.
  virtual void onQueryIdle(const Idle&) {}
  virtual void onQueryTerminated(const Terminated&) {}
};

// Handle to a started query. Thread-safe. Destroying the last handle stops the query gracefully.
class StreamingQuery {
 public:
  explicit StreamingQuery(std::shared_ptr<detail::MicroBatchExecution> execution);
  ~StreamingQuery();
  StreamingQuery(StreamingQuery&&) noexcept;
  StreamingQuery& operator=(StreamingQuery&&) noexcept;

  // Stable across restarts: kept in the checkpoint.
  const std::string& id() const;
  // New for every start.
  const std::string& runId() const;
  const std::string& name() const;

  // Blocks until the query ends; rethrows the exception that ended it, if any.
  void awaitTermination();
  // Returns false when `timeout` elapsed first; rethrows like awaitTermination().
  bool awaitTermination(std::chrono::milliseconds timeout);
  // Blocks until every record available when called has been processed and committed (tests).
  // Rethrows the exception that ended the query, if any.
  void processAllAvailable();
  // Graceful: lets a running batch finish and commit, starts no new one, and returns when the
  // query has ended. Never leaves a half-committed batch. Idempotent.
  void stop();

  bool isActive() const;
  std::exception_ptr exception() const;
  std::optional<QueryProgress> lastProgress() const;
  // The most recent progress records, oldest first (at most 100).
  std::vector<QueryProgress> recentProgress() const;
  QueryStatus status() const;
  // The logical and physical plan.
  std::string explain() const;

 private:
  std::shared_ptr<detail::MicroBatchExecution> execution_;
};

}  // namespace dataflow
