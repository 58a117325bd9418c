// Spark-style string options for a query. Every key is known here; anything else fails fast.
#include "dataflow/query_options.h"

#include <charconv>

#include "dataflow/error.h"

namespace dataflow {
namespace {

int64_t parsePositive(const std::string& key, const std::string& value, int64_t min) {
  int64_t out = 0;
  auto [ptr, err] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (err != std::errc() || ptr != value.data() + value.size() || out < min) {
    throw ConfigurationError("option '" + key + "': expected an integer >= " + std::to_string(min) +
                             ", got '" + value + "'");
  }
  return out;
}

}  // namespace

void QueryOptions::set(const std::string& key, const std::string& value) {
  using std::chrono::milliseconds;
  if (key == "retry.maxAttempts") {
    maxBatchAttempts = static_cast<int>(parsePositive(key, value, 1));
  } else if (key == "retry.initialBackoffMs") {
    initialBackoff = milliseconds(parsePositive(key, value, 0));
  } else if (key == "retry.maxBackoffMs") {
    maxBackoff = milliseconds(parsePositive(key, value, 0));
  } else if (key == "idlePollIntervalMs") {
    idlePollInterval = milliseconds(parsePositive(key, value, 1));
  } else if (key == "progress.retained") {
    retainedProgress = static_cast<int>(parsePositive(key, value, 1));
  } else if (key == "overlapBatches") {
    if (value != "true" && value != "false") {
      throw ConfigurationError("option 'overlapBatches': expected true or false, got '" + value + "'");
    }
    overlapBatches = value == "true";
  } else if (key == "rampUpBatches") {
    rampUpBatches = static_cast<int>(parsePositive(key, value, 0));
    if (rampUpBatches > 16) throw ConfigurationError("option 'rampUpBatches': expected at most 16, got '" + value + "'");
  } else if (key == "outputMode") {
    if (value == "append") {
      outputMode = OutputMode::kAppend;
    } else if (value == "update") {
      outputMode = OutputMode::kUpdate;
    } else if (value == "complete") {
      outputMode = OutputMode::kComplete;
    } else {
      throw ConfigurationError("option 'outputMode': expected append, update or complete, got '" + value + "'");
    }
  } else if (key == "lateRecords") {
    if (value != "drop" && value != "deadLetter") {
      throw ConfigurationError("option 'lateRecords': expected drop or deadLetter, got '" + value + "'");
    }
    lateRecordsToDeadLetters = value == "deadLetter";
  } else if (key == "state.minDeltasForSnapshot") {
    state.minDeltasForSnapshot = static_cast<int>(parsePositive(key, value, 1));
  } else if (key == "state.minVersionsToRetain") {
    state.minVersionsToRetain = static_cast<int>(parsePositive(key, value, 1));
  } else if (key == "state.cachedKeysPerPartition") {
    state.cachedKeysPerPartition = parsePositive(key, value, 1);
  } else if (key == "queryName") {
    name = value;
  } else {
    throw ConfigurationError("unknown query option '" + key +
                             "' (known: queryName, retry.maxAttempts, retry.initialBackoffMs, "
                             "retry.maxBackoffMs, idlePollIntervalMs, progress.retained, overlapBatches, rampUpBatches, outputMode, "
                             "lateRecords, state.minDeltasForSnapshot, state.minVersionsToRetain, "
                             "state.cachedKeysPerPartition)");
  }
}

}  // namespace dataflow
