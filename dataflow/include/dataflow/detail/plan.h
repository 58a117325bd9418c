// The logical plan: an immutable tree of descriptions, built by the typed API and kept apart from
// the runtime operators, so that a query is validated and explained before its first batch.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace dataflow::detail {

struct LogicalNode {
  enum class Kind { kSource, kFused, kUnion, kLatestByKey, kWatermark, kStateful, kSink };
  Kind kind;
  std::string label;              // e.g. the source's description, the sink's description
  std::vector<std::string> ops;   // kFused: the stateless operators in order
  std::vector<std::shared_ptr<const LogicalNode>> inputs;
  bool fallible = false;          // kFused: contains a parse step
};

using LogicalNodePtr = std::shared_ptr<const LogicalNode>;

// Spark-style "== Logical Plan ==" / "== Physical Plan ==" text.
std::string explainPlan(const LogicalNode& root);

}  // namespace dataflow::detail
