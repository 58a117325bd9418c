// StreamingQuery is a thin handle over the driver.
#include "dataflow/detail/micro_batch_execution.h"
#include "dataflow/query.h"

namespace dataflow {

StreamingQuery::StreamingQuery(std::shared_ptr<detail::MicroBatchExecution> execution)
    : execution_(std::move(execution)) {}
StreamingQuery::~StreamingQuery() = default;
StreamingQuery::StreamingQuery(StreamingQuery&&) noexcept = default;
StreamingQuery& StreamingQuery::operator=(StreamingQuery&&) noexcept = default;

const std::string& StreamingQuery::id() const { return execution_->id(); }
const std::string& StreamingQuery::runId() const { return execution_->runId(); }
const std::string& StreamingQuery::name() const { return execution_->name(); }
void StreamingQuery::awaitTermination() { execution_->awaitTermination(); }
bool StreamingQuery::awaitTermination(std::chrono::milliseconds timeout) {
  return execution_->awaitTermination(timeout);
}
void StreamingQuery::processAllAvailable() { execution_->processAllAvailable(); }
void StreamingQuery::stop() { execution_->stop(); }
bool StreamingQuery::isActive() const { return execution_->isActive(); }
std::exception_ptr StreamingQuery::exception() const { return execution_->exception(); }
std::optional<QueryProgress> StreamingQuery::lastProgress() const { return execution_->lastProgress(); }
std::vector<QueryProgress> StreamingQuery::recentProgress() const { return execution_->recentProgress(); }
QueryStatus StreamingQuery::status() const { return execution_->status(); }
std::string StreamingQuery::explain() const { return execution_->explain(); }

}  // namespace dataflow
