// Options of one streaming query, filled by DataStreamWriter (queryName, trigger, checkpoint,
// option(key, value)).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "dataflow/checkpoint.h"
#include "dataflow/exchange.h"
#include "dataflow/query.h"
#include "dataflow/state.h"
#include "dataflow/trigger.h"

namespace dataflow {

struct QueryOptions {
  // Shown in progress and logs. Default: empty (Spark's null name).
  std::string name;
  // When to run the next batch. Default: as soon as the previous one ends.
  Trigger trigger = Trigger::defaultTrigger();
  // Where offsets and commits are kept. Default: a fresh in-memory store (nothing survives the
  // process: fine for tests, wrong for production).
  std::shared_ptr<CheckpointStore> checkpoint;
  // Attempts per batch when the sink or a source throws a retriable ConnectorError, including the
  // first. Option "retry.maxAttempts". Default: 20.
  int maxBatchAttempts = 20;
  // First backoff between attempts, doubled each time up to maxBackoff.
  // Options "retry.initialBackoffMs" / "retry.maxBackoffMs". Defaults: 100 ms / 5 s.
  std::chrono::milliseconds initialBackoff{100};
  std::chrono::milliseconds maxBackoff{5000};
  // How often the default trigger polls the sources while there is no new data.
  // Option "idlePollIntervalMs". Default: 10 ms.
  std::chrono::milliseconds idlePollInterval{10};
  // Read and process the next batch while the sink writes the current one. The next batch's plan
  // is still logged before its sink runs, so restarts replay exactly as without overlap. Stateful
  // operators take part when each can (StatefulOperator::runsAhead: not transformWithState, whose
  // timers follow the batch's time); a batch processed ahead that does not run next has its state
  // changes undone by a restore. It costs memory for a second batch in flight; with a scaled-out
  // source it is not used (partitions may move between batches). Only a batch that left records
  // behind (cut by a per-batch limit: a backlog) has the next one prepared during its write: a
  // query that has caught up plans its next batch after the commit, with all that arrived
  // meanwhile, which is sooner for each record. Option "overlapBatches". Default: false.
  bool overlapBatches = false;
  // The first batches of a run with a backlog are smaller: under a record limit
  // (Source::maxRecordsPerBatch), batch k < rampUpBatches takes limit / 2^(rampUpBatches - k).
  // The first rows commit sooner, and with overlapBatches reading the next batch overlaps writing
  // from the start instead of after one full batch. Option "rampUpBatches". Default: 0 (off).
  int rampUpBatches = 0;
  // What a stateful query writes each batch (Spark's outputMode; stateless queries ignore it).
  // Option "outputMode" (append, update, complete). Default: append, as Spark's.
  OutputMode outputMode = OutputMode::kAppend;
  // Records that arrive behind the watermark are dropped and counted; with this they also become
  // dead letters (kind "late_event", with their raw bytes where the record type carries them),
  // which then must be routed. Option "lateRecords" (drop, deadLetter). Default: false (drop).
  bool lateRecordsToDeadLetters = false;
  // Snapshots and retention of operator state. Options "state.minDeltasForSnapshot",
  // "state.minVersionsToRetain".
  StateOptions state;
  // Where table aggregations, table joins and stream-stream joins regroup their rows
  // (exchange.h): a log per regrouping, named after the query, so that each group's state lives
  // with a partition of it and the query can run scaled out. Needs a query name. Default: none:
  // the groups' state is one partition, kept by one process.
  std::shared_ptr<Exchange> exchange;
  // How many progress records recentProgress() keeps. Option "progress.retained". Default: 100.
  int retainedProgress = 100;
  std::vector<std::shared_ptr<QueryListener>> listeners;

  // Sets a field from its option key; throws ConfigurationError naming an unknown key or a bad
  // value.
  void set(const std::string& key, const std::string& value);
};

}  // namespace dataflow
