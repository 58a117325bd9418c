// The untyped driver of a query: plans each batch from the sources' offsets, writes the offsets
// log, runs the physical plan on the session's oneTBB arena, writes the commit log and reports
// progress. One driver thread per query; the batch itself runs in parallel on the arena.
#pragma once

#include <oneapi/tbb/task_arena.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "dataflow/checkpoint.h"
#include "dataflow/error.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/plan.h"
#include "dataflow/progress.h"
#include "dataflow/query.h"
#include "dataflow/query_options.h"
#include "dataflow/source.h"

namespace dataflow::detail {

// State shared by every query of a session.
struct SessionState {
  explicit SessionState(int workerThreads, size_t chunkSize);
  tbb::task_arena arena;
  size_t chunkSize;
};

struct PhysicalPlan {
  std::vector<std::shared_ptr<Source>> sources;
  std::unique_ptr<RootOperator> root;
  LogicalNodePtr logical;  // includes the sink node
  // Stateful operators of the plan, owned by `root`'s tree, in planning order (their ids).
  std::vector<StatefulOperator*> stateful;
  // Delay of each watermark operator (withWatermark), by its index.
  std::vector<int64_t> watermarkDelaysMs;
};

class StateManager;

class MicroBatchExecution {
 public:
  MicroBatchExecution(std::shared_ptr<SessionState> session, PhysicalPlan plan,
                      QueryOptions options);
  ~MicroBatchExecution();

  // Reads or creates the checkpoint's metadata, opens sources and sink. Throws on a bad
  // checkpoint. Called by start(); benchmarks call it and then runBatch() themselves.
  void initialize();
  // Starts the driver thread (calls initialize() first).
  void start();
  // Runs at most one batch on the calling thread: the uncommitted batch of a previous run if
  // there is one, else a new batch if data is available. Returns whether a batch ran.
  bool runBatch();

  void stop();
  void awaitTermination();
  bool awaitTermination(std::chrono::milliseconds timeout);
  void processAllAvailable();

  const std::string& id() const { return id_; }
  const std::string& runId() const { return runId_; }
  const std::string& name() const { return options_.name; }
  bool isActive() const;
  std::exception_ptr exception() const;
  std::optional<QueryProgress> lastProgress() const;
  std::vector<QueryProgress> recentProgress() const;
  QueryStatus status() const;
  std::string explain() const;

 private:
  struct PlannedBatch {
    OffsetLogEntry entry;
    std::vector<Offsets> latest;
    bool replay = false;
    bool speculated = false;  // the ranges of the batch prepared while the previous one was written
  };

  // Overlap (QueryOptions::overlapBatches): the next batch, read and processed on the arena while
  // the sink writes the current one. The next plan adopts its ranges when the current batch
  // commits (the plan is then logged as usual, before the sink sees the batch).
  struct Speculation {
    std::vector<Offsets> base;         // per source: where it starts (the current batch's end)
    std::vector<SourceRange> ranges;   // per source
    std::unique_ptr<ExecContext> ctx;  // its ranges and input-row counters
    std::future<std::unique_ptr<RootOperator::Prepared>> prepared;
    bool changesState = false;         // its plan has stateful operators
  };

  void driverLoop();
  // The ranges from `start` (per source) to `latest`, within the AvailableNow target and the
  // sources' per-batch limits. `hasData`: whether any range is non-empty.
  std::vector<SourceRange> planRanges(const std::vector<Offsets>& start, const std::vector<Offsets>& latest,
                                      bool& hasData);
  std::unique_ptr<ExecContext> makeContext(const std::vector<SourceRange>& ranges) const;
  // Prepares the batch after `current` on the arena while `current` is written; its stateful
  // operators (when every one can run ahead) run with the watermark `nextWatermarkMs`.
  void startSpeculation(const OffsetLogEntry& current, int64_t nextWatermarkMs);
  // Waits for a running one and forgets it; with `undoState`, operator state it changed is
  // restored at the last committed batch (its batch will not be the next one).
  void dropSpeculation(bool undoState = true);
  // Restores operator state at the last committed batch (after a batch prepared ahead was dropped
  // or failed: it changed the state of a batch that is not the one committing next).
  void undoRunAhead(int64_t lastCommittedBatch);
  void initializeScaleOut(const QueryMetadata& metadata);
  // Scale-out: drops revoked partitions and leases newly assigned ones, from the sources' latest
  // offsets (which cover only the partitions assigned to this instance).
  void followAssignment(const std::vector<Offsets>& latest);
  void dropFencedPartitions(const PartitionsFencedError& e, int64_t batchId, const OffsetLogEntry& entry);
  void versionByOffset(StateChanges& changes, const OffsetLogEntry& entry) const;
  void initializeState(const std::optional<CommitLogEntry>& lastCommit);
  // The watermark after a batch that read `stats` (by watermark operator): never lower than now.
  int64_t nextWatermark(const std::vector<EventTimeStats>& stats) const;
  std::optional<PlannedBatch> planNextBatch(std::map<std::string, int64_t>& durations);
  void executeBatch(PlannedBatch batch, std::map<std::string, int64_t> durations,
                    std::chrono::steady_clock::time_point triggerStart);
  void setStatus(const char* message, bool dataAvailable, bool triggerActive);
  void sleepUntil(std::chrono::steady_clock::time_point deadline);
  void notifyIdle();
  void finish(std::exception_ptr error);

  std::shared_ptr<SessionState> session_;
  PhysicalPlan plan_;
  QueryOptions options_;
  std::string id_;
  std::string runId_;

  // Driver-thread state.
  bool initialized_ = false;
  std::optional<OffsetLogEntry> pendingReplay_;  // uncommitted batch found at start
  // Event time and state (only with withWatermark or stateful operators). Scaled out, event time
  // is kept per partition, as part of the state (declared first: state_ refers to it).
  std::unique_ptr<PartitionWatermarks> partitionWatermarks_;
  std::unique_ptr<StateManager> state_;
  int64_t watermarkMs_;                // the watermark the next new batch runs with
  std::vector<int64_t> maxEventTime_;  // by watermark operator: the newest event time seen
  bool noDataBatchDue_ = false;        // the watermark advanced: run a batch even without data
  int64_t nextBatchId_ = 0;
  std::vector<Offsets> committedEnd_;  // per source
  int64_t plannedWithData_ = 0;  // batches with records planned in this run (QueryOptions::rampUpBatches)
  // Scale-out (coordinated sources): per source, the lease epoch of each partition read here.
  bool scaleOut_ = false;
  std::vector<std::map<PartitionId, int64_t>> leaseEpochs_;
  std::vector<Offsets> availableNowTarget_;
  std::optional<Speculation> speculation_;
  std::chrono::steady_clock::time_point lastTriggerEnd_{};
  std::chrono::steady_clock::time_point lastIdleEvent_{};
  bool wasIdle_ = false;
  int planFailures_ = 0;          // consecutive triggers whose planning failed retriably
  bool lastTriggerFailed_ = false;

  // Shared with other threads, under mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopRequested_ = false;
  bool active_ = false;
  bool terminated_ = false;
  std::exception_ptr error_;
  std::deque<QueryProgress> progress_;
  QueryStatus status_;
  uint64_t idleTriggers_ = 0;  // incremented on each trigger that found no new data
  std::thread driver_;
};

}  // namespace dataflow::detail
