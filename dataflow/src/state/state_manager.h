// The engine's side of operator state: restores every stateful operator of a query at the last
// committed version, collects and writes each batch's changes before its commit, and keeps the
// files in check (snapshots, retention) in the background.
#pragma once

#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/checkpoint.h"
#include "dataflow/detail/stateful.h"
#include "dataflow/progress.h"
#include "dataflow/state.h"

namespace dataflow::detail {

class StateManager {
 public:
  // `runId` names this run's tables in a state backend shared with other queries (and instances).
  StateManager(std::vector<StatefulOperator*> operators, std::shared_ptr<CheckpointStore> store,
               StateOptions options, std::string queryName, const std::string& runId);
  ~StateManager();

  bool empty() const { return operators_.empty(); }

  // Drops all in-memory state and restores it at `version` (the last committed batch; nullopt:
  // the query never committed, so there is no state). Files of later versions (a batch that
  // never committed) are deleted: the replay writes them again. Returns the time taken.
  int64_t restore(std::optional<int64_t> version);

  // Scale-out: a partition's state is restored when this process leases the partition (at its
  // committed offset: state versions are then the partition's end offset after the batch, the
  // same in every process) and dropped when the partition is revoked.
  void restorePartitions(const std::vector<std::pair<PartitionId, std::optional<int64_t>>>& partitions);
  void dropPartitions(const std::vector<PartitionId>& partitions);
  // Scale-out: the batch's changes were committed by the store (commitPartitions, with the
  // offsets), not by write(); keeps the bookkeeping for snapshots.
  void noteWritten(const StateChanges& changes);

  // Encodes what batch `version` changed, per operator and partition.
  StateChanges collect(int64_t version);
  // Writes them durably, before the batch's commit record.
  void write(const StateChanges& changes);
  // After batch `version` committed: snapshots of partitions with many deltas since their last
  // one, and deletion of files no longer needed, on a background thread.
  void committed(int64_t version);

  // Whether every operator can run a batch ahead (StatefulOperator::runsAhead).
  bool runsAhead() const;

  // Whether an operator wants a batch now although no data arrived (a due timer).
  bool wantsBatch(int64_t nowMs, int64_t watermarkMs) const;

  // Figures of the last batch, per operator, as collect() saw them (a batch prepared ahead may be
  // changing the state by now); commitTimeMs is that of collect + write.
  std::vector<StateOperatorProgress> progress() const;

 private:
  struct PartitionFiles {
    std::optional<int64_t> snapshot;  // newest snapshot version
    int deltasSinceSnapshot = 0;
    int64_t lastVersion = -1;         // of the newest delta written
  };
  void maintain(int operatorId, PartitionId partition, int64_t version);
  void waitForMaintenance();

  std::vector<StatefulOperator*> operators_;
  std::shared_ptr<CheckpointStore> store_;
  StateOptions options_;
  std::string queryName_;
  std::vector<int64_t> commitTimeMs_;  // by operator, last batch
  std::vector<StateOperatorProgress> collected_;  // by operator, at the last collect()
  // By operator, then partition: what the files look like (kept by the driver thread).
  std::vector<std::map<PartitionId, PartitionFiles>> files_;
  std::future<void> maintenance_;
};

}  // namespace dataflow::detail
