// The micro-batch driver. The order of effects is what gives Spark's restart semantics:
//   1. plan the batch's ranges from the sources' offsets,
//   2. write them to the offsets log (durable before any record is read),
//   3. run the plan and hand the batch to the sink (retried on retriable errors),
//   4. write the commit log, then tell the sources.
// A crash between 2 and 4 leaves an offsets entry without a commit: the next run replays it with
// the same batch id and exactly the same ranges.
//
// Scale-out (sources whose partitions a Kafka consumer group assigns): several processes run the
// same query. There the durable state is the next offset of every partition, committed together
// with the batch (in the sink's transaction when the sink supports it): on assignment a partition
// is leased and resumes from its committed offset; a commit with a lost lease is refused and the
// batch abandoned. Revocations are taken between batches, so an in-flight batch always finishes
// (commits or is abandoned) before its partitions are released. No offsets log is kept: a batch
// that never committed is re-read by whichever instance owns its partitions next.
#include "dataflow/detail/micro_batch_execution.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>

#include "dataflow/error.h"
#include "state/state_manager.h"
#include "time_util.h"

namespace dataflow::detail {
namespace {

using Clock = std::chrono::steady_clock;

// Whether a batch ended short of the newest offsets its planning saw, at any of its sources.
bool leftRecordsBehind(const OffsetLogEntry& entry, const std::vector<Offsets>& latest) {
  for (size_t i = 0; i < entry.sources.size() && i < latest.size(); ++i) {
    if (entry.sources[i].end.distanceTo(latest[i]) > 0) return true;
  }
  return false;
}

int64_t elapsedMs(Clock::time_point since) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count();
}

std::string newUuid() {
  static thread_local std::mt19937_64 rng{std::random_device{}() ^
                                          static_cast<uint64_t>(Clock::now().time_since_epoch().count())};
  uint64_t hi = rng(), lo = rng();
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // variant 1
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>((hi >> 16) & 0xFFFF), static_cast<unsigned>(hi & 0xFFFF),
                static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFULL));
  return buf;
}

std::string joined(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}


// Thrown inside the driver when stop() interrupts a retry backoff or a source's read: the batch
// is abandoned uncommitted (it will be replayed) and the query ends without error.
struct StoppedMidBatch {
  const char* during;
};

}  // namespace

SessionState::SessionState(int workerThreads, size_t chunk)
    : arena(workerThreads > 0 ? workerThreads : tbb::task_arena::automatic), chunkSize(chunk) {}

MicroBatchExecution::MicroBatchExecution(std::shared_ptr<SessionState> session, PhysicalPlan plan,
                                         QueryOptions options)
    : session_(std::move(session)), plan_(std::move(plan)), options_(std::move(options)),
      runId_(newUuid()), watermarkMs_(kNoWatermark) {
  if (!options_.checkpoint) throw ConfigurationError("query has no checkpoint store");
  status_.message = "Initializing";
}

MicroBatchExecution::~MicroBatchExecution() {
  stop();
  if (driver_.joinable()) driver_.join();
  dropSpeculation(false);  // benchmarks drive runBatch() without a driver thread
}

void MicroBatchExecution::initialize() {
  if (initialized_) return;
  CheckpointStore& store = *options_.checkpoint;
  std::vector<std::string> descriptions;
  for (const auto& s : plan_.sources) descriptions.push_back(s->description());

  if (auto meta = store.readMetadata()) {
    if (meta->sourceDescriptions != descriptions) {
      throw CheckpointError("checkpoint " + store.describe() + " belongs to a query reading " +
                            joined(meta->sourceDescriptions) + ", but this query reads " +
                            joined(descriptions) + "; use a new checkpoint location");
    }
    id_ = meta->id;
  } else {
    id_ = newUuid();
    store.writeMetadata({id_, descriptions});
    // Instances of a scaled-out query may start together: keep the id that was written first.
    if (auto written = store.readMetadata()) id_ = written->id;
  }
  size_t coordinated = std::count_if(plan_.sources.begin(), plan_.sources.end(),
                                     [](const auto& s) { return s->isCoordinated(); });
  if (coordinated > 0) {
    if (coordinated != plan_.sources.size()) {
      throw ConfigurationError("query " + options_.name +
                               ": sources assigned by a consumer group cannot be mixed with other sources");
    }
    for (const StatefulOperator* op : plan_.stateful) {
      if (!op->stateFollowsPartitions()) {
        throw ConfigurationError(
            "query " + options_.name + ": the stateful operator " + op->operatorName() +
            " cannot run scaled out (sources assigned by a consumer group) yet: aggregations (windowed or not), "
            "dropDuplicates (with or without a watermark), transformWithState without processing-time timers and "
            "asTable keep state that moves with its partition, and so do stream-stream joins, table aggregations and "
            "table joins regrouped through an exchange (writeStream().exchange(...), REPARTITION=kafka in the jobs); "
            "stream-stream joins, table aggregations and table joins without an exchange (which regroup rows across "
            "partitions), and transformWithState with TimeMode::kProcessingTime (whose timers fire in batches without "
            "data), need a single instance");
      }
    }
    initializeScaleOut({id_, descriptions});
    return;
  }
  store.acquire({id_, descriptions});

  auto lastOffsets = store.latestOffsets();
  auto lastCommit = store.latestCommit();
  committedEnd_.assign(plan_.sources.size(), Offsets{});
  for (auto& s : plan_.sources) s->open();
  plan_.root->open();
  if (lastOffsets) {
    if (lastOffsets->sources.size() != plan_.sources.size()) {
      throw CheckpointError("checkpoint " + store.describe() + " batch " +
                            std::to_string(lastOffsets->batchId) + " has " +
                            std::to_string(lastOffsets->sources.size()) + " sources, the query has " +
                            std::to_string(plan_.sources.size()));
    }
    bool committed = lastCommit && lastCommit->batchId >= lastOffsets->batchId;
    for (size_t i = 0; i < plan_.sources.size(); ++i) {
      committedEnd_[i] = committed ? lastOffsets->sources[i].end : lastOffsets->sources[i].start;
      plan_.sources[i]->resumeFrom(committedEnd_[i]);
    }
    if (committed) {
      nextBatchId_ = lastOffsets->batchId + 1;
      // The last batch advanced the watermark but its no-data batch never ran: run it now.
      noDataBatchDue_ = !plan_.stateful.empty() && lastCommit->batchId == lastOffsets->batchId &&
                        lastCommit->nextBatchWatermarkMs > lastOffsets->batchWatermarkMs;
    } else {
      pendingReplay_ = *lastOffsets;
      nextBatchId_ = lastOffsets->batchId;
      spdlog::info("query {} [{}]: replaying uncommitted batch {} from {}", options_.name, id_,
                   nextBatchId_, store.describe());
    }
  } else {
    for (size_t i = 0; i < plan_.sources.size(); ++i) committedEnd_[i] = plan_.sources[i]->initialOffsets();
  }
  initializeState(lastCommit);
  if (options_.trigger.kind() == Trigger::Kind::kAvailableNow) {
    for (auto& s : plan_.sources) availableNowTarget_.push_back(s->latestOffsets());
  }
  initialized_ = true;
}

void MicroBatchExecution::initializeState(const std::optional<CommitLogEntry>& lastCommit) {
  maxEventTime_.assign(plan_.watermarkDelaysMs.size(), kNoWatermark);
  if (lastCommit) {
    // Continue with the watermark the last committed batch computed, as if its event times had
    // just been seen (each operator's newest event time is at least watermark + its delay).
    watermarkMs_ = lastCommit->nextBatchWatermarkMs;
    if (watermarkMs_ != kNoWatermark) {
      for (size_t i = 0; i < maxEventTime_.size(); ++i) maxEventTime_[i] = watermarkMs_ + plan_.watermarkDelaysMs[i];
    }
  }
  if (plan_.stateful.empty()) return;
  CheckpointStore& store = *options_.checkpoint;
  if (!store.supportsState()) {
    throw ConfigurationError("query " + options_.name + ": checkpoint " + store.describe() +
                             " does not keep operator state, which this query's stateful operators need; use "
                             "a directory checkpoint (checkpointLocation) or the in-memory store");
  }
  state_ = std::make_unique<StateManager>(plan_.stateful, options_.checkpoint, options_.state, options_.name, runId_);
  state_->restore(lastCommit ? std::optional<int64_t>(lastCommit->batchId) : std::nullopt);
}

// Scale-out: a partition's state version is its offset after the batch, which every process
// agrees on (the batch ids of different processes do not).
void MicroBatchExecution::versionByOffset(StateChanges& changes, const OffsetLogEntry& entry) const {
  for (auto& f : changes.files) {
    std::optional<int64_t> end;
    for (const auto& range : entry.sources) {
      int64_t e = range.end.get(f.id.partition, -1);
      if (e > range.start.get(f.id.partition, e)) end = e;
    }
    if (!end) {
      throw InternalError("query " + options_.name + ": state of partition " + f.id.partition.toString() +
                          " changed in a batch that read nothing from it");
    }
    f.id.version = *end;
  }
}

int64_t MicroBatchExecution::nextWatermark(const std::vector<EventTimeStats>& stats) const {
  // Spark's default multiple-watermark policy: the minimum over the watermark operators.
  int64_t candidate = kNoWatermark;
  bool all = !stats.empty();
  for (size_t i = 0; i < stats.size(); ++i) {
    int64_t newest = maxEventTime_[i];
    if (stats[i].count > 0) newest = std::max(newest, stats[i].max);
    if (newest == kNoWatermark) {
      all = false;
      break;
    }
    int64_t w = newest - plan_.watermarkDelaysMs[i];
    candidate = i == 0 ? w : std::min(candidate, w);
  }
  if (!all) return watermarkMs_;
  return std::max(watermarkMs_, candidate);
}

void MicroBatchExecution::initializeScaleOut(const QueryMetadata& metadata) {
  CheckpointStore& store = *options_.checkpoint;
  if (!store.supportsScaleOut()) store.join(metadata);  // throws, naming the store
  auto kind = options_.trigger.kind();
  if (kind == Trigger::Kind::kOnce || kind == Trigger::Kind::kAvailableNow) {
    throw ConfigurationError("query " + options_.name + ": trigger " + options_.trigger.toString() +
                             " cannot be used with a source assigned by a consumer group (what is available "
                             "depends on the assignment, which changes)");
  }
  store.join(metadata);
  scaleOut_ = true;
  maxEventTime_.assign(plan_.watermarkDelaysMs.size(), kNoWatermark);
  if (!plan_.stateful.empty()) {
    if (!store.supportsState()) {
      throw ConfigurationError("query " + options_.name + ": checkpoint " + store.describe() + " does not keep operator state");
    }
    // No state at start: each partition's state is restored when it is leased. With event time,
    // that includes the partition's own clock (partition_watermarks.h).
    std::vector<StatefulOperator*> operators = plan_.stateful;
    if (!plan_.watermarkDelaysMs.empty()) {
      partitionWatermarks_ = std::make_unique<PartitionWatermarks>(plan_.watermarkDelaysMs);
      operators.push_back(partitionWatermarks_.get());
    }
    state_ = std::make_unique<StateManager>(std::move(operators), options_.checkpoint, options_.state, options_.name, runId_);
  }
  committedEnd_.assign(plan_.sources.size(), Offsets{});
  leaseEpochs_.assign(plan_.sources.size(), {});
  for (auto& s : plan_.sources) s->open();
  plan_.root->open();
  spdlog::info("query {} [{}]: scale-out: partitions are assigned by the consumer group, offsets kept per "
               "partition in {}", options_.name, id_, store.describe());
  initialized_ = true;
}

void MicroBatchExecution::followAssignment(const std::vector<Offsets>& latest) {
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    Source& source = *plan_.sources[i];
    auto& committed = committedEnd_[i].partitions();
    std::vector<std::string> revoked;
    for (auto it = committed.begin(); it != committed.end();) {
      if (latest[i].partitions().contains(it->first)) {
        ++it;
        continue;
      }
      revoked.push_back(it->first.toString());
      if (state_) state_->dropPartitions({it->first});
      leaseEpochs_[i].erase(it->first);
      it = committed.erase(it);
    }
    if (!revoked.empty()) spdlog::info("query {}: partitions revoked: {}", options_.name, joined(revoked));

    std::vector<PartitionId> assigned;
    for (const auto& [p, _] : latest[i].partitions()) {
      if (!committed.contains(p)) assigned.push_back(p);
    }
    if (assigned.empty()) continue;
    PartitionLeases leased = options_.checkpoint->leasePartitions(i, assigned);
    std::optional<Offsets> initial;
    std::vector<std::string> resumed;
    std::vector<std::pair<PartitionId, std::optional<int64_t>>> toRestore;
    for (const PartitionLease& lease : leased.leases) {
      toRestore.emplace_back(lease.partition, lease.committed);
      int64_t start;
      if (lease.committed) {
        start = *lease.committed;
      } else if (!leased.sourceHasCommits) {
        if (!initial) initial = source.initialOffsets();  // a new query: its starting offsets
        start = initial->get(lease.partition, source.startOfNewPartition(lease.partition));
      } else {
        start = source.startOfNewPartition(lease.partition);
      }
      committed[lease.partition] = start;
      leaseEpochs_[i][lease.partition] = lease.epoch;
      resumed.push_back(lease.partition.toString() + "@" + std::to_string(start) + " (lease " +
                        std::to_string(lease.epoch) + (lease.committed ? ")" : ", never committed)"));
    }
    spdlog::info("query {}: partitions assigned: {}", options_.name, joined(resumed));
    // The partition's state comes with it: restored at its committed offset.
    if (state_) state_->restorePartitions(toRestore);
  }
}

void MicroBatchExecution::dropFencedPartitions(const PartitionsFencedError& e, int64_t batchId,
                                               const OffsetLogEntry& entry) {
  spdlog::warn("query {} batch {}: abandoned, nothing committed: {}", options_.name, batchId, e.what());
  if (state_) {
    // The abandoned batch changed the state of every partition it read: those this process
    // still owns go back to their committed state; the lost ones are dropped below.
    std::vector<std::pair<PartitionId, std::optional<int64_t>>> kept;
    std::vector<PartitionId> read;
    for (size_t i = 0; i < entry.sources.size(); ++i) {
      for (const auto& [p, end] : entry.sources[i].end.partitions()) {
        if (end <= entry.sources[i].start.get(p, end)) continue;
        read.push_back(p);
        bool lost = std::find(e.partitions().begin(), e.partitions().end(), p) != e.partitions().end();
        if (!lost) kept.emplace_back(p, entry.sources[i].start.get(p, end));
      }
    }
    state_->dropPartitions(read);
    state_->restorePartitions(kept);
  }
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    std::vector<PartitionId> lost;
    for (const auto& p : e.partitions()) {
      if (committedEnd_[i].partitions().erase(p) > 0) {
        leaseEpochs_[i].erase(p);
        lost.push_back(p);
      }
    }
    if (!lost.empty()) plan_.sources[i]->onPartitionsFenced(lost);
  }
  nextBatchId_ = batchId + 1;
}

std::optional<MicroBatchExecution::PlannedBatch> MicroBatchExecution::planNextBatch(
    std::map<std::string, int64_t>& durations) {
  PlannedBatch batch;
  auto t0 = Clock::now();
  for (auto& s : plan_.sources) batch.latest.push_back(s->latestOffsets());
  durations["latestOffset"] = elapsedMs(t0);
  if (scaleOut_) followAssignment(batch.latest);

  if (pendingReplay_) {
    batch.entry = std::move(*pendingReplay_);
    pendingReplay_.reset();
    batch.replay = true;
    return batch;
  }

  batch.entry.batchId = nextBatchId_;
  batch.entry.batchTimestampMs = nowEpochMs();
  // Scaled out, each partition runs with its own watermark; the batch reports the lowest.
  batch.entry.batchWatermarkMs = partitionWatermarks_ ? partitionWatermarks_->lowest() : watermarkMs_;
  if (speculation_) {
    if (speculation_->base == committedEnd_) {
      // The batch prepared during the previous write starts right here: its ranges are a valid
      // plan (offsets only grow), and adopting them lets the prepared records be used.
      batch.entry.sources = speculation_->ranges;
      batch.speculated = true;
      return batch;
    }
    dropSpeculation();
  }
  bool hasData = false;
  batch.entry.sources = planRanges(committedEnd_, batch.latest, hasData);
  // A batch without data still runs when the watermark advanced, so that windows it closed are
  // emitted and their state dropped (Spark's no-data batches).
  // So does one when a stateful operator has a timer due at this batch's time or watermark.
  // Scaled out there are none: a partition's state changes only in a batch that reads it.
  if (!hasData && !noDataBatchDue_ &&
      !(state_ && !scaleOut_ && state_->wantsBatch(batch.entry.batchTimestampMs, batch.entry.batchWatermarkMs))) {
    return std::nullopt;
  }
  return batch;
}

std::vector<SourceRange> MicroBatchExecution::planRanges(const std::vector<Offsets>& starts,
                                                         const std::vector<Offsets>& latest, bool& hasData) {
  hasData = false;
  std::vector<SourceRange> ranges;
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    Source& source = *plan_.sources[i];
    Offsets start = starts[i];
    Offsets target = latest[i];
    if (!availableNowTarget_.empty() && !source.fedByQuery()) {
      Offsets capped;
      for (const auto& [p, t] : availableNowTarget_[i].partitions()) capped.set(p, std::min(t, target.get(p, t)));
      target = std::move(capped);
    }
    for (const auto& [p, t] : target.partitions()) {
      if (!start.partitions().contains(p)) start.set(p, source.startOfNewPartition(p));
    }
    std::optional<int64_t> limit =
        options_.trigger.kind() == Trigger::Kind::kOnce ? std::nullopt : source.maxRecordsPerBatch();
    if (limit && plannedWithData_ < options_.rampUpBatches) {
      limit = std::max<int64_t>(1, *limit >> (options_.rampUpBatches - plannedWithData_));
    }
    Offsets end = source.batchEnd(start, target, limit);
    if (start.distanceTo(end) > 0) hasData = true;
    ranges.push_back({source.description(), std::move(start), std::move(end)});
  }
  if (hasData) ++plannedWithData_;
  return ranges;
}

std::unique_ptr<ExecContext> MicroBatchExecution::makeContext(const std::vector<SourceRange>& ranges) const {
  auto ctx = std::make_unique<ExecContext>();
  ctx->chunkSize = session_->chunkSize;
  ctx->info.queryId = id_;  // known before the batch id: an exchange tags what it sends with it
  ctx->ranges.resize(plan_.sources.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    for (const auto& [p, until] : ranges[i].end.partitions()) {
      int64_t from = ranges[i].start.get(p, until);
      if (until > from) ctx->ranges[i].push_back({p, from, until});
    }
  }
  ctx->eventTime.assign(plan_.watermarkDelaysMs.size(), EventTimeStats{});  // a batch prepared ahead fills them too
  ctx->partitionWatermarks = partitionWatermarks_.get();
  ctx->scaledOut = scaleOut_;
  ctx->inputRows = std::make_unique<std::atomic<int64_t>[]>(plan_.sources.size());
  for (size_t i = 0; i < plan_.sources.size(); ++i) ctx->inputRows[i].store(0);
  return ctx;
}

void MicroBatchExecution::startSpeculation(const OffsetLogEntry& current, int64_t nextWatermarkMs) {
  if (speculation_ && speculation_->changesState) {
    // Undoing it now would also undo `current`, whose state is collected but not committed.
    throw InternalError("query " + options_.name + ": a batch prepared ahead was neither adopted nor dropped");
  }
  dropSpeculation(false);
  // A stateful plan prepares ahead only when each of its operators can (StatefulOperator::runsAhead):
  // the next batch then changes the state the current one has already collected, and a batch
  // prepared ahead but not committed next is undone by a restore. Scaled out, partitions may move
  // between batches: never.
  if (!options_.overlapBatches || scaleOut_ || options_.trigger.kind() == Trigger::Kind::kOnce ||
      (state_ && !state_->runsAhead())) {
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (stopRequested_) return;
  }
  std::vector<Offsets> base, latest;
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    base.push_back(current.sources[i].end);
    latest.push_back(plan_.sources[i]->latestOffsets());
  }
  bool hasData = false;
  auto ranges = planRanges(base, latest, hasData);
  if (!hasData) return;
  Speculation spec{std::move(base), std::move(ranges), nullptr, {}, state_ != nullptr};
  spec.ctx = makeContext(spec.ranges);
  spec.ctx->info.batchId = current.batchId + 1;
  spec.ctx->info.batchWatermarkMs = nextWatermarkMs;  // what the next batch runs with
  ExecContext* ctx = spec.ctx.get();
  spec.prepared = std::async(std::launch::async, [this, ctx] {
    std::unique_ptr<RootOperator::Prepared> out;
    auto started = Clock::now();
    session_->arena.execute([&] { out = plan_.root->prepare(*ctx); });
    ctx->prepareMicros = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count();
    return out;
  });
  speculation_ = std::move(spec);
}

void MicroBatchExecution::dropSpeculation(bool undoState) {
  if (!speculation_) return;
  try {
    speculation_->prepared.wait();
    speculation_->prepared.get();
  } catch (const std::exception& e) {
    spdlog::debug("query {}: a batch prepared ahead failed and is dropped: {}", options_.name, e.what());
  }
  bool changedState = speculation_->changesState;
  speculation_.reset();
  if (undoState && changedState) undoRunAhead(nextBatchId_ - 1);
}

void MicroBatchExecution::undoRunAhead(int64_t lastCommittedBatch) {
  spdlog::info("query {}: a batch prepared ahead is not the next one; restoring operator state at batch {}",
               options_.name, lastCommittedBatch);
  state_->restore(lastCommittedBatch >= 0 ? std::optional<int64_t>(lastCommittedBatch) : std::nullopt);
}

bool MicroBatchExecution::runBatch() {
  initialize();
  auto triggerStart = Clock::now();
  std::map<std::string, int64_t> durations;
  setStatus("Checking for new data", false, true);
  lastTriggerFailed_ = false;
  std::optional<PlannedBatch> batch;
  try {
    batch = planNextBatch(durations);
    if (batch && !batch->replay && !scaleOut_) {
      auto t = Clock::now();
      options_.checkpoint->writeOffsets(batch->entry);
      durations["walCommit"] = elapsedMs(t);
    }
    planFailures_ = 0;
  } catch (const ReadInterrupted&) {
    throw;  // the query is stopping: no retry
  } catch (const ConnectorError& e) {
    // A source or the checkpoint store is unreachable before anything was read: nothing to undo.
    // Retry on a later trigger, after a backoff, up to maxBatchAttempts times in a row.
    if (!e.retriable() || ++planFailures_ >= options_.maxBatchAttempts) throw;
    if (batch && batch->replay) pendingReplay_ = std::move(batch->entry);
    auto backoff = std::min(options_.maxBackoff, options_.initialBackoff * (1 << std::min(planFailures_ - 1, 16)));
    spdlog::warn("query {}: planning batch {} failed (attempt {}/{}), retrying in {} ms: {}", options_.name,
                 nextBatchId_, planFailures_, options_.maxBatchAttempts, backoff.count(), e.what());
    setStatus("Retrying after a source error", false, false);
    lastTriggerFailed_ = true;
    sleepUntil(Clock::now() + backoff);
    return false;
  }
  if (!batch) {
    setStatus("Waiting for data to arrive", false, false);
    return false;
  }
  setStatus("Processing new data", true, true);
  if (batch->replay) durations["walCommit"] = 0;
  executeBatch(std::move(*batch), std::move(durations), triggerStart);
  setStatus("Waiting for next trigger", false, false);
  return true;
}

void MicroBatchExecution::executeBatch(PlannedBatch batch, std::map<std::string, int64_t> durations,
                                       Clock::time_point triggerStart) {
  const OffsetLogEntry& entry = batch.entry;
  std::unique_ptr<ExecContext> context;
  std::unique_ptr<RootOperator::Prepared> prepared;
  if (batch.speculated) {
    context = std::move(speculation_->ctx);
    try {
      prepared = speculation_->prepared.get();
    } catch (const std::exception& e) {
      // Read or processed ahead and failed (e.g. the broker was away): do it again, with retries,
      // from the state of the last commit (the failed run may have changed part of it).
      spdlog::debug("query {} batch {}: preparing ahead failed, preparing again: {}", options_.name, entry.batchId, e.what());
      context = makeContext(entry.sources);
      if (speculation_->changesState) undoRunAhead(entry.batchId - 1);
    }
    speculation_.reset();
  } else {
    context = makeContext(entry.sources);
  }
  ExecContext& ctx = *context;
  ctx.info.batchId = entry.batchId;
  ctx.info.queryId = id_;
  ctx.info.runId = runId_;
  ctx.info.queryName = options_.name;
  ctx.info.batchTimestampMs = entry.batchTimestampMs;
  ctx.info.sources = entry.sources;
  if (scaleOut_) ctx.info.leaseEpochs = leaseEpochs_;
  ctx.info.batchWatermarkMs = entry.batchWatermarkMs;
  StateChanges stateChanges;
  bool stateCollected = false;

  auto t = Clock::now();
  RootOperator::Result result;
  std::map<std::string, int64_t> sinkPhases;
  try {  // scale-out: a commit refused for lost partitions abandons the batch
    auto backoff = options_.initialBackoff;
    bool overlapped = false;
    for (int attempt = 1;; ++attempt) {
      try {
        if (!prepared) {
          for (size_t i = 0; i < plan_.sources.size(); ++i) ctx.inputRows[i].store(0);
          for (auto& e : ctx.eventTime) e = EventTimeStats{};
          if (partitionWatermarks_) partitionWatermarks_->beginBatch();
          ctx.readMicros.store(0);
          auto started = Clock::now();
          session_->arena.execute([&] { prepared = plan_.root->prepare(ctx); });
          ctx.prepareMicros = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count();
        }
        if (!stateCollected) {
          stateCollected = true;
          if (partitionWatermarks_) {
            partitionWatermarks_->advance();  // the partitions' clocks are state: collected below
            ctx.info.nextBatchWatermarkMs = partitionWatermarks_->lowest();
          } else {
            ctx.info.nextBatchWatermarkMs = nextWatermark(ctx.eventTime);
          }
          if (state_) {
            session_->arena.execute([&] { stateChanges = state_->collect(entry.batchId); });
            if (scaleOut_) versionByOffset(stateChanges, entry);
            ctx.info.stateChanges = &stateChanges;
          }
        }
        // The next batch is read and processed while the sink writes this one, when this one left
        // records behind (a per-batch limit cut it: a backlog). Caught up, the next batch would
        // hold only what arrived while this one was processed, and what arrives during the write
        // would wait for the batch after it: live at 1 000 events/s that doubled the latency.
        if (!overlapped) {
          overlapped = true;
          if (leftRecordsBehind(entry, batch.latest)) startSpeculation(entry, ctx.info.nextBatchWatermarkMs);
        }
        // A retriable failure of the sink hands it the same prepared batch again.
        sinkPhases.clear();
        ctx.info.sinkPhasesMicros = &sinkPhases;
        result = plan_.root->deliver(*prepared, ctx);
        ctx.info.sinkPhasesMicros = nullptr;
        break;
      } catch (const ReadInterrupted&) {
        throw StoppedMidBatch{"a read"};  // stop() interrupted a source
      } catch (const ConnectorError& e) {
        if (!e.retriable() || attempt >= options_.maxBatchAttempts) throw;
        spdlog::warn("query {} batch {}: attempt {}/{} failed, retrying in {} ms: {}", options_.name,
                     entry.batchId, attempt, options_.maxBatchAttempts, backoff.count(), e.what());
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, backoff, [&] { return stopRequested_; })) throw StoppedMidBatch{"a retry backoff"};
        backoff = std::min(backoff * 2, options_.maxBackoff);
      }
    }
    durations["addBatch"] = elapsedMs(t);
    // Where the time went (a batch prepared ahead did its reading during the previous write).
    durations["read"] = ctx.readMicros.load() / 1000;
    durations["process"] = std::max<int64_t>(0, ctx.prepareMicros - ctx.readMicros.load()) / 1000;
    for (const auto& [phase, micros] : sinkPhases) durations[phase] += micros / 1000;

    t = Clock::now();
    for (int attempt = 1;; ++attempt) {
      try {
        if (scaleOut_) {
          options_.checkpoint->commitPartitions(ctx.info);  // with the state changes, atomically
        } else {
          if (state_) state_->write(stateChanges);
          options_.checkpoint->writeCommit({entry.batchId, nowEpochMs(), ctx.info.nextBatchWatermarkMs});
        }
        break;
      } catch (const ConnectorError& e) {
        // The sink has its data; without the commit the batch would be replayed. Keep trying.
        if (!e.retriable() || attempt >= options_.maxBatchAttempts) throw;
        spdlog::warn("query {} batch {}: writing the commit failed, retrying: {}", options_.name, entry.batchId, e.what());
        std::unique_lock lock(mu_);
        if (cv_.wait_for(lock, options_.initialBackoff * attempt, [&] { return stopRequested_; })) {
          throw StoppedMidBatch{"a retry backoff"};
        }
      }
    }
  } catch (const PartitionsFencedError& e) {
    if (!scaleOut_) throw;
    dropFencedPartitions(e, entry.batchId, entry);
    return;
  }
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    committedEnd_[i] = entry.sources[i].end;
    plan_.sources[i]->onBatchCommitted(committedEnd_[i]);
  }
  nextBatchId_ = entry.batchId + 1;
  for (size_t i = 0; i < ctx.eventTime.size(); ++i) {
    if (ctx.eventTime[i].count > 0) maxEventTime_[i] = std::max(maxEventTime_[i], ctx.eventTime[i].max);
  }
  watermarkMs_ = ctx.info.nextBatchWatermarkMs;
  // Scaled out, a batch closes what its own event times passed (partition_watermarks.h).
  noDataBatchDue_ = state_ && !scaleOut_ && watermarkMs_ > entry.batchWatermarkMs;
  if (state_) {
    if (scaleOut_) state_->noteWritten(stateChanges);
    state_->committed(entry.batchId);
  }
  durations["commitOffsets"] = elapsedMs(t);
  durations["triggerExecution"] = elapsedMs(triggerStart);

  QueryProgress progress;
  progress.id = id_;
  progress.runId = runId_;
  progress.name = options_.name;
  progress.timestamp = isoTimestamp(entry.batchTimestampMs);
  progress.batchId = entry.batchId;
  double sinceLastTrigger =
      lastTriggerEnd_ == Clock::time_point{}
          ? 0.0
          : std::chrono::duration<double>(Clock::now() - lastTriggerEnd_).count();
  // From the clock, not the rounded milliseconds: a sub-millisecond batch would divide by zero.
  double execSeconds = std::max(1e-6, std::chrono::duration<double>(Clock::now() - triggerStart).count());
  for (size_t i = 0; i < plan_.sources.size(); ++i) {
    SourceProgress sp;
    sp.description = entry.sources[i].description;
    sp.startOffset = entry.sources[i].start.toJson();
    sp.endOffset = entry.sources[i].end.toJson();
    sp.latestOffset = batch.latest[i].toJson();
    sp.numInputRows = ctx.inputRows[i].load();
    sp.inputRowsPerSecond = sinceLastTrigger > 0 ? sp.numInputRows / sinceLastTrigger : 0.0;
    sp.processedRowsPerSecond = sp.numInputRows / execSeconds;
    sp.metrics = plan_.sources[i]->metrics(entry.sources[i].end, batch.latest[i]);
    progress.numInputRows += sp.numInputRows;
    progress.sources.push_back(std::move(sp));
  }
  progress.inputRowsPerSecond = sinceLastTrigger > 0 ? progress.numInputRows / sinceLastTrigger : 0.0;
  progress.processedRowsPerSecond = progress.numInputRows / execSeconds;
  progress.durationMs = std::move(durations);
  if (!plan_.watermarkDelaysMs.empty()) {
    EventTimeStats all;
    for (const auto& e : ctx.eventTime) all.merge(e);
    if (entry.batchWatermarkMs != kNoWatermark) progress.eventTime["watermark"] = isoTimestamp(entry.batchWatermarkMs);
    if (all.count > 0) {
      progress.eventTime["min"] = isoTimestamp(all.min);
      progress.eventTime["max"] = isoTimestamp(all.max);
      progress.eventTime["avg"] = isoTimestamp(static_cast<int64_t>(all.sum / static_cast<double>(all.count)));
    }
  }
  if (state_) progress.stateOperators = state_->progress();
  progress.sink.description = plan_.logical->label;
  progress.sink.numOutputRows = result.outputRows;
  progress.sink.numDeadLetters = result.deadLetters;
  lastTriggerEnd_ = Clock::now();
  wasIdle_ = false;

  spdlog::debug("query {} batch {}: {} rows in, {} out, {} dead letters, {} ms", options_.name,
                entry.batchId, progress.numInputRows, result.outputRows, result.deadLetters,
                progress.durationMs["triggerExecution"]);
  {
    std::lock_guard lock(mu_);
    progress_.push_back(progress);
    while (static_cast<int>(progress_.size()) > std::max(1, options_.retainedProgress)) progress_.pop_front();
  }
  for (auto& l : options_.listeners) {
    try {
      l->onQueryProgress(progress);
    } catch (const std::exception& e) {
      spdlog::error("query {}: listener onQueryProgress threw: {}", options_.name, e.what());
    }
  }
}

void MicroBatchExecution::setStatus(const char* message, bool dataAvailable, bool triggerActive) {
  std::lock_guard lock(mu_);
  status_.message = message;
  status_.isDataAvailable = dataAvailable;
  status_.isTriggerActive = triggerActive;
}

void MicroBatchExecution::sleepUntil(Clock::time_point deadline) {
  std::unique_lock lock(mu_);
  cv_.wait_until(lock, deadline, [&] { return stopRequested_; });
}

void MicroBatchExecution::notifyIdle() {
  {
    std::lock_guard lock(mu_);
    ++idleTriggers_;
  }
  cv_.notify_all();
  // Like Spark's noDataProgressEventInterval: report the first idle trigger, then every 10 s.
  auto now = Clock::now();
  if (wasIdle_ && now - lastIdleEvent_ < std::chrono::seconds(10)) return;
  wasIdle_ = true;
  lastIdleEvent_ = now;
  QueryListener::Idle event{id_, runId_, options_.name, isoTimestamp(nowEpochMs())};
  for (auto& l : options_.listeners) {
    try {
      l->onQueryIdle(event);
    } catch (const std::exception& e) {
      spdlog::error("query {}: listener onQueryIdle threw: {}", options_.name, e.what());
    }
  }
}

void MicroBatchExecution::start() {
  initialize();
  {
    std::lock_guard lock(mu_);
    if (active_ || terminated_) throw ConfigurationError("query " + options_.name + " was already started");
    active_ = true;
  }
  QueryListener::Started event{id_, runId_, options_.name, isoTimestamp(nowEpochMs())};
  for (auto& l : options_.listeners) {
    try {
      l->onQueryStarted(event);
    } catch (const std::exception& e) {
      spdlog::error("query {}: listener onQueryStarted threw: {}", options_.name, e.what());
    }
  }
  spdlog::info("query {} started: id={} runId={} trigger={} checkpoint={}", options_.name, id_, runId_,
               options_.trigger.toString(), options_.checkpoint->describe());
  driver_ = std::thread([this] { driverLoop(); });
}

void MicroBatchExecution::driverLoop() {
  std::exception_ptr error;
  try {
    const Trigger& trigger = options_.trigger;
    while (true) {
      {
        std::lock_guard lock(mu_);
        if (stopRequested_) break;
      }
      auto triggerStart = Clock::now();
      bool replay = pendingReplay_.has_value();
      bool ran = runBatch();
      if (!ran && lastTriggerFailed_) continue;  // runBatch has backed off; try again
      if (trigger.kind() == Trigger::Kind::kOnce) {
        if (!ran || !replay) break;
        continue;
      }
      if (trigger.kind() == Trigger::Kind::kAvailableNow) {
        if (!ran) break;
        continue;
      }
      if (!ran) {
        notifyIdle();
        sleepUntil(std::max(triggerStart + trigger.interval(), Clock::now() + options_.idlePollInterval));
      } else if (trigger.interval().count() > 0) {
        sleepUntil(triggerStart + trigger.interval());
      }
    }
  } catch (const StoppedMidBatch& stopped) {
    spdlog::info("query {}: stopped during {}; the batch will be replayed", options_.name, stopped.during);
  } catch (const ReadInterrupted& e) {  // stop() interrupted a source outside a batch (planning, start)
    spdlog::info("query {}: stopped while waiting for a source: {}", options_.name, e.what());
  } catch (...) {
    error = std::current_exception();
  }
  finish(error);
}

void MicroBatchExecution::finish(std::exception_ptr error) {
  dropSpeculation(false);  // it reads from the sources closed below
  try {
    plan_.root->close();
  } catch (const std::exception& e) {
    spdlog::warn("query {}: closing the sink failed: {}", options_.name, e.what());
  }
  for (auto& s : plan_.sources) {
    try {
      s->close();
    } catch (const std::exception& e) {
      spdlog::warn("query {}: closing source {} failed: {}", options_.name, s->description(), e.what());
    }
  }
  std::optional<std::string> what;
  if (error) {
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
      what = "unknown exception";
    }
    spdlog::error("query {} [{}] terminated with error: {}", options_.name, id_, *what);
  } else {
    spdlog::info("query {} [{}] stopped", options_.name, id_);
  }
  for (auto& l : options_.listeners) {
    try {
      l->onQueryTerminated({id_, runId_, options_.name, what});
    } catch (const std::exception& e) {
      spdlog::error("query {}: listener onQueryTerminated threw: {}", options_.name, e.what());
    }
  }
  {
    std::lock_guard lock(mu_);
    error_ = error;
    active_ = false;
    terminated_ = true;
    status_ = {"Stopped", false, false};
  }
  cv_.notify_all();
}

void MicroBatchExecution::stop() {
  {
    std::lock_guard lock(mu_);
    stopRequested_ = true;
  }
  cv_.notify_all();
  // A batch waiting on a source (a stalled broker) would otherwise finish its wait first.
  for (const auto& source : plan_.sources) source->interrupt();
  if (driver_.joinable() && driver_.get_id() != std::this_thread::get_id()) driver_.join();
}

void MicroBatchExecution::awaitTermination() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !active_; });
  if (error_) std::rethrow_exception(error_);
}

bool MicroBatchExecution::awaitTermination(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  bool done = cv_.wait_for(lock, timeout, [&] { return !active_; });
  if (done && error_) std::rethrow_exception(error_);
  return done;
}

void MicroBatchExecution::processAllAvailable() {
  std::unique_lock lock(mu_);
  // An idle trigger that *started* after this call proves that everything available now was
  // committed; the second idle trigger from here is the first one guaranteed to have started later.
  uint64_t target = idleTriggers_ + 2;
  cv_.wait(lock, [&] { return terminated_ || idleTriggers_ >= target; });
  if (error_) std::rethrow_exception(error_);
}

bool MicroBatchExecution::isActive() const {
  std::lock_guard lock(mu_);
  return active_;
}

std::exception_ptr MicroBatchExecution::exception() const {
  std::lock_guard lock(mu_);
  return error_;
}

std::optional<QueryProgress> MicroBatchExecution::lastProgress() const {
  std::lock_guard lock(mu_);
  if (progress_.empty()) return std::nullopt;
  return progress_.back();
}

std::vector<QueryProgress> MicroBatchExecution::recentProgress() const {
  std::lock_guard lock(mu_);
  return {progress_.begin(), progress_.end()};
}

QueryStatus MicroBatchExecution::status() const {
  std::lock_guard lock(mu_);
  return status_;
}

std::string MicroBatchExecution::explain() const { return explainPlan(*plan_.logical); }

}  // namespace dataflow::detail
