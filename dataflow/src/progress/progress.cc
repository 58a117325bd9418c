// JSON forms of progress and status, in Spark's shape. Offsets are embedded as JSON, not strings.
#include "dataflow/progress.h"

#include <boost/json.hpp>

namespace dataflow {
namespace {

boost::json::value offsetJson(const std::string& json) {
  if (json.empty()) return nullptr;
  boost::json::error_code ec;
  auto v = boost::json::parse(json, ec);
  if (ec) return boost::json::value(json);
  return v;
}

}  // namespace

std::string QueryProgress::toJson() const {
  boost::json::object o;
  o["id"] = id;
  o["runId"] = runId;
  o["name"] = name.empty() ? boost::json::value(nullptr) : boost::json::value(name);
  o["timestamp"] = timestamp;
  o["batchId"] = batchId;
  o["numInputRows"] = numInputRows;
  o["inputRowsPerSecond"] = inputRowsPerSecond;
  o["processedRowsPerSecond"] = processedRowsPerSecond;
  boost::json::object d;
  for (const auto& [k, v] : durationMs) d[k] = v;
  o["durationMs"] = std::move(d);
  if (!eventTime.empty()) {
    boost::json::object e;
    for (const auto& [k, v] : eventTime) e[k] = v;
    o["eventTime"] = std::move(e);
  }
  boost::json::array ops;
  for (const auto& s : stateOperators) {
    boost::json::object so;
    so["operatorName"] = s.operatorName;
    so["numRowsTotal"] = s.numRowsTotal;
    so["numRowsUpdated"] = s.numRowsUpdated;
    so["numRowsRemoved"] = s.numRowsRemoved;
    so["numRowsDroppedByWatermark"] = s.numRowsDroppedByWatermark;
    so["memoryUsedBytes"] = s.memoryUsedBytes;
    so["commitTimeMs"] = s.commitTimeMs;
    so["numShufflePartitions"] = s.numStatePartitions;
    so["numStateStoreInstances"] = s.numStatePartitions;
    so["customMetrics"] = boost::json::object{{"stateDeltaBytes", s.numDeltaBytes}};
    ops.push_back(std::move(so));
  }
  o["stateOperators"] = std::move(ops);
  boost::json::array sourcesJson;
  for (const auto& s : sources) {
    boost::json::object so;
    so["description"] = s.description;
    so["startOffset"] = offsetJson(s.startOffset);
    so["endOffset"] = offsetJson(s.endOffset);
    so["latestOffset"] = offsetJson(s.latestOffset);
    so["numInputRows"] = s.numInputRows;
    so["inputRowsPerSecond"] = s.inputRowsPerSecond;
    so["processedRowsPerSecond"] = s.processedRowsPerSecond;
    if (!s.metrics.empty()) {
      boost::json::object m;
      for (const auto& [k, v] : s.metrics) m[k] = v;
      so["metrics"] = std::move(m);
    }
    sourcesJson.push_back(std::move(so));
  }
  o["sources"] = std::move(sourcesJson);
  boost::json::object sinkJson;
  sinkJson["description"] = sink.description;
  sinkJson["numOutputRows"] = sink.numOutputRows;
  sinkJson["numDeadLetters"] = sink.numDeadLetters;
  o["sink"] = std::move(sinkJson);
  return boost::json::serialize(o);
}

std::string QueryStatus::toJson() const {
  boost::json::object o;
  o["message"] = message;
  o["isDataAvailable"] = isDataAvailable;
  o["isTriggerActive"] = isTriggerActive;
  return boost::json::serialize(o);
}

}  // namespace dataflow
