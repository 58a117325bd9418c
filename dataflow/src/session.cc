#include "dataflow/session.h"

#include "dataflow/error.h"

namespace dataflow {

Session::Session(const SessionOptions& options) : options_(options) {
  if (options_.workerThreads < 0) {
    throw ConfigurationError("SessionOptions.workerThreads must be >= 0 (0 = one per core), got " +
                             std::to_string(options_.workerThreads));
  }
  if (options_.chunkSize == 0) throw ConfigurationError("SessionOptions.chunkSize must be > 0");
  state_ = std::make_shared<detail::SessionState>(options_.workerThreads, options_.chunkSize);
}

}  // namespace dataflow
