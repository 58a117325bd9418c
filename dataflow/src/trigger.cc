#include "dataflow/trigger.h"

namespace dataflow {

std::string Trigger::toString() const {
  switch (kind_) {
    case Kind::kAvailableNow:
      return "AvailableNow";
    case Kind::kOnce:
      return "Once";
    case Kind::kProcessingTime:
      return "ProcessingTime(" + std::to_string(interval_.count()) + "ms)";
  }
  return "?";
}

}  // namespace dataflow
