// Spark-style plan text. The logical plan shows every operator; the physical plan shows what runs:
// fused stages are marked "*(n)" like Spark's whole-stage code generation.
#include <sstream>

#include "dataflow/detail/plan.h"

namespace dataflow::detail {
namespace {

void indentLine(std::ostringstream& out, int depth) {
  if (depth == 0) return;
  out << std::string(static_cast<size_t>(depth - 1) * 3, ' ') << "+- ";
}

void logical(const LogicalNode& node, int depth, std::ostringstream& out) {
  switch (node.kind) {
    case LogicalNode::Kind::kFused:
      // Innermost operator last: print in reverse order, one level deeper each.
      for (size_t i = node.ops.size(); i-- > 0;) {
        indentLine(out, depth++);
        out << node.ops[i] << "\n";
      }
      break;
    case LogicalNode::Kind::kSource:
      indentLine(out, depth++);
      out << "StreamingRelation " << node.label << "\n";
      break;
    default:
      indentLine(out, depth++);
      out << node.label << "\n";
  }
  for (const auto& in : node.inputs) logical(*in, depth, out);
}

void physical(const LogicalNode& node, int depth, int& stage, std::ostringstream& out) {
  indentLine(out, depth);
  switch (node.kind) {
    case LogicalNode::Kind::kFused: {
      out << "*(" << ++stage << ") Fused [";
      for (size_t i = 0; i < node.ops.size(); ++i) out << (i ? " -> " : "") << node.ops[i];
      out << "]" << (node.fallible ? " (dead letters)" : "") << "\n";
      break;
    }
    case LogicalNode::Kind::kSource:
      out << "MicroBatchScan " << node.label << "\n";
      break;
    case LogicalNode::Kind::kLatestByKey:
      out << "LatestByKey (hash, per batch)\n";
      break;
    default:
      out << node.label << "\n";
  }
  for (const auto& in : node.inputs) physical(*in, depth + 1, stage, out);
}

}  // namespace

std::string explainPlan(const LogicalNode& root) {
  std::ostringstream out;
  out << "== Logical Plan ==\n";
  logical(root, 0, out);
  out << "\n== Physical Plan ==\n";
  int stage = 0;
  physical(root, 0, stage, out);
  return out.str();
}

}  // namespace dataflow::detail
