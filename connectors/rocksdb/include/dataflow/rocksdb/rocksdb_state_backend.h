// A StateBackend (dataflow/state_backend.h) on RocksDB, for operator state larger than memory.
//
// One database per backend, in a directory of its own that is deleted when the backend is
// destroyed: it is working storage, the checkpoint store keeps the durable copy (the deltas the
// engine writes each batch, so checkpoint cost stays proportional to what changed, as Spark's
// changelog checkpointing). Each table opened gets a key range of its own, deleted when the table
// is dropped. Writes skip RocksDB's write-ahead log for the same reason.
//
//   auto backend = dataflow::rocksdb::stateBackend({.directory = "/var/tmp/state"});
//   stream.groupByKey(&Order::customerId).sum(&Order::amount)
//       .writeStream().stateBackend(backend).checkpointLocation(dir)...
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>

#include "dataflow/state_backend.h"

namespace dataflow::rocksdb {

struct RocksDbStateOptions {
  // Under which directory the database is made (a new subdirectory per backend). Default: empty,
  // the system's temporary directory ($TMPDIR, else /tmp).
  std::filesystem::path directory;
  // RocksDB's block cache: recently read state blocks kept in memory, shared by every table.
  // Default: 64 MiB.
  size_t blockCacheBytes = size_t{64} << 20;
  // Size of a memtable (recent writes, in memory) before it is flushed to a file. Default: 32 MiB.
  size_t writeBufferBytes = size_t{32} << 20;
  // LZ4 compression of the files (less disk and I/O for a little CPU). Default: true.
  bool compress = true;
  // Into how many RocksDB values a table groups its keys (by hash; a power of two). RocksDB
  // costs per key read or written, so a batch that changes many keys of a large state costs per
  // bucket instead; a batch that changes one key rewrites that key's bucket, which holds
  // keys / bucketsPerTable entries (values of 1 KiB and more are kept apart from it). Default:
  // 16 384, some 60 entries a bucket at 1 M keys.
  uint32_t bucketsPerTable = 16384;
};

// Opens a backend; throws ConnectorError naming the directory when RocksDB cannot open it, and
// ConfigurationError naming a bad option.
std::shared_ptr<StateBackend> stateBackend(RocksDbStateOptions options = {});

}  // namespace dataflow::rocksdb
