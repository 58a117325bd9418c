// Defaults of the scale-out part of CheckpointStore: a store that keeps one query's offsets log
// cannot be shared by several instances, and says so by name.
#include "dataflow/checkpoint.h"
#include "dataflow/error.h"

namespace dataflow {
namespace {

[[noreturn]] void noScaleOut(const CheckpointStore& store) {
  throw ConfigurationError("checkpoint " + store.describe() +
                           " cannot be shared by several instances of a query; a source assigned by a "
                           "consumer group needs a store that keeps offsets per partition (the PostgreSQL "
                           "store, or the in-memory store in tests)");
}

}  // namespace

void CheckpointStore::join(const QueryMetadata&) { noScaleOut(*this); }

PartitionLeases CheckpointStore::leasePartitions(size_t, const std::vector<PartitionId>&) { noScaleOut(*this); }

void CheckpointStore::commitPartitions(const BatchInfo&) { noScaleOut(*this); }

}  // namespace dataflow
