// Where stateful operators keep their working state when it may not fit in memory.
//
// By default an operator keeps all of a partition's state in a flat hash map (stateful.h). With a
// StateBackend (QueryOptions::state.backend; connectors/rocksdb implements one on RocksDB) the
// backend holds the state and the map only caches it: before a batch touches its keys the
// operator loads the missing ones with one multiGet per partition, the batch runs on the map
// exactly as in memory, and after the batch the same delta that goes to the checkpoint store is
// applied to the backend; the cache is then trimmed to its budget. So per-record work stays in
// the typed loop (no virtual call, no backend access per record), and the checkpoint still
// writes only what changed (changelog checkpointing).
//
// The backend is working storage, not durable storage: the checkpoint store (directory or
// PostgreSQL) holds the state files, and a restore rebuilds a table from them. A backend may
// therefore lose everything when the process ends.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/offsets.h"
#include "dataflow/state.h"

namespace dataflow {

// The state of one operator in one source partition: keys and values as the state codec
// encodes them (StateCodec). Used by one task at a time; different tables of one backend are
// used from different threads at once.
class StateTable {
 public:
  virtual ~StateTable() = default;

  // Looks up `keys`; calls found(i, value) for each keys[i] that is present. The value's bytes
  // are valid during the call only.
  virtual void multiGet(const std::vector<std::string_view>& keys,
                        const std::function<void(size_t, std::string_view)>& found) = 0;
  // Applies the puts and removes of a state file (a batch's delta, or a snapshot on restore)
  // as one atomic write.
  virtual void apply(const StateFileReader& changes) = 0;
  // Calls fn(key, value) for every entry, in no particular order (a backend may keep its keys
  // by hash).
  virtual void scan(const std::function<void(std::string_view, std::string_view)>& fn) = 0;
  // Bytes the backend holds in memory for this table's data (approximate; may be shared).
  virtual int64_t memoryBytes() const { return 0; }
};

// Opens tables. Shared by the queries of a process; thread-safe.
class StateBackend {
 public:
  virtual ~StateBackend() = default;
  // For logs and explain(): "rocksdb(/var/tmp/...)".
  virtual std::string describe() const = 0;
  // The table of operator `operatorId` of the query run `runId` in `partition`, empty: whatever an
  // earlier table of the same name held is gone (a restore rebuilds it from the checkpoint). Its
  // data is deleted when the table is destroyed (the partition dropped, the query stopped).
  virtual std::unique_ptr<StateTable> openTable(std::string_view runId, int operatorId, const PartitionId& partition) = 0;
};

}  // namespace dataflow
