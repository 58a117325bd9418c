// Reads PostgreSQL's logical replication stream directly (the built-in pgoutput plugin over
// libpq's streaming replication protocol): the pipeline without Kafka, Kafka Connect or a JVM.
// Its records are the change events Debezium's connector would have written to Kafka
// (dataflow::LogRecord, topic "<prefix>.<schema>.<table>", Debezium's JSON value and key), so a
// job parses either source alike; only the source is configured differently.
//
// Offsets. The source has two partitions, named after the slot:
//   - "<slot>" partition 0, the stream. Its offsets are log sequence numbers: offset o means every
//     transaction whose commit ends before o has been read. A batch takes whole transactions, in
//     commit order, and its end LSN is committed with its rows; only after that commit does the
//     slot's confirmed_flush_lsn move (so a crash replays from the last committed LSN and the
//     server keeps no more WAL than needed).
//   - "<slot>" partition 1, the initial snapshot: the rows that existed when the slot was made,
//     read in the slot's exported snapshot (so the seam with the stream neither misses nor
//     doubles a row), a FETCH at a time; offsets count rows. When the snapshot is complete the
//     partition's offset jumps to kSnapshotComplete. A snapshot interrupted by a crash is read
//     again from the start, in a new snapshot, after the rows already committed (see below).
// Snapshot rows are versioned (source.lsn) just below the slot's restart_lsn, so that every
// streamed change of the same row, which the slot can still send, is newer: the per-key LSN guard
// of the warehouse then makes snapshot and stream converge in any order.
//
// Records move into the batch that reads them (no copy). A range read again (a batch retried
// after its records were handed out) is received again from the server for the stream, the same
// records; for the snapshot, as many rows from a new snapshot, which the LSN guard reconciles
// with the stream as above.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dataflow/postgres/connection.h"
#include "dataflow/record.h"
#include "dataflow/source.h"

namespace dataflow::postgres {

struct ReplicationSourceOptions {
  // The source database. The role needs the REPLICATION attribute (or superuser), SELECT on the
  // tables, and, to create the publication, ownership of the tables.
  ConnectionConfig connection;
  // Tables to capture, "schema.table" or "table" (schema public). Required.
  std::vector<std::string> tables;
  // The replication slot; created when missing. Required.
  std::string slotName;
  // The publication; created FOR TABLE `tables` when missing. Default: the slot's name.
  std::string publicationName;
  // Debezium's topic.prefix: records go to "<prefix>.<schema>.<table>". Default: "dbserver1".
  std::string topicPrefix = "dbserver1";
  // Read the existing rows first when a new query starts (Debezium's snapshot.mode=initial);
  // false streams changes only. Default: true.
  bool snapshot = true;
  // Keep each change in a compact form (pgoutput's tuple bytes, LogRecord::codec) instead of
  // rendering it as Debezium JSON: a debezium::TableMapping decodes it without any JSON, into the
  // same typed event, and a dead letter gets the JSON rendered. For jobs that parse records only
  // through debezium::TableMapping::decode(record) (or LogRecord::valueBytes()); code that reads
  // `value` as JSON needs false. Default: false.
  bool compactValues = false;
  // Rows per FETCH while snapshotting. Default: 10 000.
  int snapshotFetchRows = 10000;
  // Records per batch; whole transactions, so a larger transaction makes a larger batch. 0: no
  // limit. Default: 0.
  int64_t maxRecordsPerBatch = 0;
  // Bytes of change events per batch (whole transactions, at least one); 0: no limit. With
  // maxRecordsPerBatch, whichever is reached first. Default: 0.
  int64_t maxBytesPerBatch = 0;
  // Memory for changes received but not yet read by a batch: beyond it the source stops reading
  // from the server (PostgreSQL keeps the WAL meanwhile). A transaction is held whole, however
  // large. Default: 16 MiB (some 25 000 order changes).
  int64_t maxBufferedBytes = int64_t{16} << 20;
  // How often the source reports its position to the server (standby status update). The server
  // disconnects a client silent for wal_sender_timeout (60 s by default). Default: 1 s.
  std::chrono::milliseconds statusInterval{1000};
  // While changes stream in, how long the source waits after reading what had arrived before it
  // reads again, so that the next ones arrive as one burst: PostgreSQL sends each message on its
  // own, and waking up for every one costs both processes more than the messages themselves
  // (what Kafka's fetch.wait.max.ms trades). At most this much latency is added; an idle stream
  // is read as soon as something arrives. 0: read each message as it comes. Default: 200 us.
  std::chrono::microseconds receiveCoalesce{200};
  // An idle source moves its offset this often to the server's position (an empty batch), so
  // that the slot advances and the server recycles WAL written by other tables and databases.
  // Default: 10 s.
  std::chrono::milliseconds idleAdvanceInterval{10000};
  // How long a batch waits for changes it knows exist (after a restart, or while the server is
  // unreachable) before failing, retriably. Default: 120 s.
  std::chrono::milliseconds readTimeout{120000};
  // When the slot has confirmed more than the checkpoint committed (someone else advanced it, or
  // the checkpoint was restored from an older copy), the changes in between are gone: true fails
  // the query with a clear error; false logs it and continues. Default: true.
  bool failOnDataLoss = true;

  // Throws ConfigurationError naming what is wrong.
  void validate() const;
};

class ReplicationSource final : public TypedSource<LogRecord> {
 public:
  // The snapshot partition's offset once every snapshot row has been committed.
  static constexpr int64_t kSnapshotComplete = int64_t{1} << 62;

  explicit ReplicationSource(ReplicationSourceOptions options);
  ~ReplicationSource() override;

  std::string description() const override;
  // Checks the server (wal_level, the role's rights, the publication) and fails fast, naming the fix.
  void open() override;
  void resumeFrom(const Offsets& next) override;
  void close() override;
  // A batch waiting for changes it knows exist throws ReadInterrupted at once.
  void interrupt() override;
  // Creates the slot when missing (with an exported snapshot) and starts streaming.
  Offsets initialOffsets() override;
  Offsets latestOffsets() override;
  std::optional<int64_t> maxRecordsPerBatch() const override;
  bool offsetsCountRecords() const override { return false; }
  Offsets batchEnd(const Offsets& start, const Offsets& available, std::optional<int64_t> limit) override;
  void read(const PartitionId& partition, int64_t from, int64_t until, std::vector<LogRecord>& out) override;
  // Confirms the committed LSN to the server and drops what the batch read.
  void onBatchCommitted(const Offsets& end) override;
  // bufferedTransactions, bufferedBytes, receivedLsn, confirmedLsn, snapshotRows.
  SourceMetrics metrics(const Offsets& end, const Offsets& latest) override;

  const PartitionId& streamPartition() const;
  const PartitionId& snapshotPartition() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Offsets are LSNs in PostgreSQL's text form "16/B374D848" <-> integers.
std::string formatLsn(uint64_t lsn);
// Throws ConfigurationError for text that is not an LSN.
uint64_t parseLsn(std::string_view text);

}  // namespace dataflow::postgres
