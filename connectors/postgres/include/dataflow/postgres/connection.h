// RAII over a libpq connection. This library is the only one that links libpq. Values travel only
// as parameters (or COPY); identifiers are quoted with quoteIdentifier(); no SQL is ever built from
// data.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dataflow/error.h"

struct pg_conn;
struct pg_result;

namespace dataflow::postgres {

// Where to connect. Built from a libpq connection string or URL; never printed with its password.
struct ConnectionConfig {
  // A libpq conninfo ("host=... port=...") or URL ("postgresql://..."). Empty means libpq's own
  // defaults (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, ...).
  std::string conninfo;
  // Seconds libpq waits for a connection. Default: 10.
  int connectTimeoutSeconds = 10;
  // Reported to the server (pg_stat_activity.application_name). Default: "dataflow".
  std::string applicationName = "dataflow";
  // Opens a replication connection (replication=database): for the streaming replication
  // protocol's commands (CREATE_REPLICATION_SLOT, START_REPLICATION). Default: false.
  bool replication = false;
  // Server settings for the session ("-c DateStyle=ISO -c TimeZone=UTC"), libpq's `options`.
  // Default: none.
  std::string serverOptions;

  // From the environment, first match wins: PG_URL; else PG_HOST, PG_PORT, PG_DB, PG_USER,
  // PG_PASSWORD or PG_PASSWORD_FILE (any subset; the rest from libpq's PG* variables); else
  // libpq's PG* variables alone. Throws ConfigurationError for an unreadable password file.
  static ConnectionConfig fromEnvironment();
  // The connection target without secrets, for logs: "host=127.0.0.1 port=5432 dbname=appdb user=postgres".
  std::string describe() const;
};

// A query result. Movable, owns the PGresult.
class Result {
 public:
  explicit Result(pg_result* result) : result_(result) {}
  Result(Result&&) noexcept;
  Result& operator=(Result&&) noexcept;
  ~Result();

  int rows() const;
  int columns() const;
  bool isNull(int row, int column) const;
  std::string_view value(int row, int column) const;  // text format
  std::optional<std::string> optionalValue(int row, int column) const;
  int64_t int64(int row, int column) const;
  // The result's columns: name, type OID and type modifier.
  std::string_view columnName(int column) const;
  uint32_t columnType(int column) const;
  int32_t columnTypeModifier(int column) const;
  // Rows affected by INSERT/UPDATE/DELETE.
  int64_t affected() const;

 private:
  pg_result* result_;
};

// One connection. Not thread-safe: use one per thread.
class Connection {
 public:
  // Connects; throws ConnectorError (retriable: the server may come back) naming the target.
  static Connection open(const ConnectionConfig& config);

  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  ~Connection();

  // Runs SQL without parameters (several statements allowed).
  Result exec(std::string_view sql);
  // Runs one statement with text parameters ($1, $2, ...); nullopt is SQL NULL.
  Result execParams(std::string_view sql, const std::vector<std::optional<std::string>>& params);
  // Runs one statement with parameters that may be binary: `binary[i]` tells which are sent in
  // binary format (bytea needs no escaping; the rest are text). The parameters are views: a large
  // value (a state file) is not copied on its way to libpq. With `binaryResult` every column of
  // the result is in binary format (a bytea as its bytes, not twice as many hex digits).
  Result execParamsBinary(std::string_view sql, const std::vector<std::optional<std::string_view>>& params,
                          const std::vector<bool>& binary, bool binaryResult = false);

  // COPY ... FROM STDIN: start, send chunks, end. Throws on any failure.
  void copyStart(std::string_view copySql);
  void copyData(std::string_view data);
  void copyEnd();
  // Ends a COPY with an error message: the statement fails (no exception; the transaction is then
  // aborted).
  void copyFail(const std::string& message);

  // Quotes an identifier with PQescapeIdentifier ("my table" -> "\"my table\"").
  std::string quoteIdentifier(std::string_view identifier) const;

  bool isOpen() const;
  pg_conn* raw() { return conn_; }

 private:
  Connection(pg_conn* conn, std::string target) : conn_(conn), target_(std::move(target)) {}
  [[noreturn]] void fail(std::string_view what, pg_result* result);
  pg_conn* conn_;
  std::string target_;
};

// The SQLSTATE classes after which retrying on a new connection may succeed (connection loss,
// server shutdown, serialization failure, deadlock).
bool isRetriableSqlState(std::string_view sqlstate);

// A statement PostgreSQL refused (or a connection it lost): the SQLSTATE tells callers that handle
// some conditions themselves (a foreign-key race, a unique violation) from the others.
class PostgresError : public ConnectorError {
 public:
  PostgresError(const std::string& what, bool retriable, std::string sqlState, bool connectionLost)
      : ConnectorError(what, retriable), sqlState_(std::move(sqlState)), connectionLost_(connectionLost) {}
  // Five characters ("23503"), or empty when the server sent none (the connection was lost).
  const std::string& sqlState() const noexcept { return sqlState_; }
  bool connectionLost() const noexcept { return connectionLost_; }

 private:
  std::string sqlState_;
  bool connectionLost_;
};

}  // namespace dataflow::postgres
