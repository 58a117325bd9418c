// One progress record per batch, with Spark's StreamingQueryProgress field names, so that tools and
// people used to Spark read it without a glossary.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dataflow/source.h"

namespace dataflow {

struct SourceProgress {
  std::string description;
  std::string startOffset;   // JSON, Spark's form; "null" before the first batch
  std::string endOffset;     // JSON
  std::string latestOffset;  // JSON: what the source had available when the batch was planned
  int64_t numInputRows = 0;
  double inputRowsPerSecond = 0;
  double processedRowsPerSecond = 0;
  SourceMetrics metrics;  // source-specific, e.g. {"avgOffsetsBehindLatest", "12.0"}
};

struct SinkProgress {
  std::string description;
  int64_t numOutputRows = 0;
  int64_t numDeadLetters = 0;
};

// One stateful operator's figures for a batch (Spark's StateOperatorProgress).
struct StateOperatorProgress {
  std::string operatorName;            // "stateStoreSave" (aggregation), "dedupe", ...
  int64_t numRowsTotal = 0;            // keys in state after the batch
  int64_t numRowsUpdated = 0;          // keys written by the batch
  int64_t numRowsRemoved = 0;          // keys removed by the batch (evicted by the watermark, ...)
  int64_t numRowsDroppedByWatermark = 0;  // input rows dropped as late
  int64_t memoryUsedBytes = 0;         // estimate of the in-memory state
  int64_t commitTimeMs = 0;            // encoding and writing the batch's state changes
  int64_t numStatePartitions = 0;      // state partitions (the source partitions seen)
  int64_t numDeltaBytes = 0;           // bytes of the batch's state changes
};

struct QueryProgress {
  std::string id;
  std::string runId;
  std::string name;
  std::string timestamp;  // ISO-8601 UTC of the batch's trigger
  int64_t batchId = 0;
  int64_t numInputRows = 0;
  double inputRowsPerSecond = 0;
  double processedRowsPerSecond = 0;
  // latestOffset, walCommit, addBatch, commitOffsets, triggerExecution (milliseconds).
  std::map<std::string, int64_t> durationMs;
  // Event-time statistics of the batch, as ISO-8601 UTC strings: "watermark" (the one the batch
  // ran with), "min", "max", "avg" of the event times it read. Empty without withWatermark().
  std::map<std::string, std::string> eventTime;
  std::vector<StateOperatorProgress> stateOperators;
  std::vector<SourceProgress> sources;
  SinkProgress sink;

  // Spark's JSON shape.
  std::string toJson() const;
};

// What the query is doing now (Spark's StreamingQueryStatus).
struct QueryStatus {
  std::string message;  // "Initializing", "Waiting for data to arrive", "Processing new data", "Stopped"
  bool isDataAvailable = false;
  bool isTriggerActive = false;
  std::string toJson() const;
};

}  // namespace dataflow
