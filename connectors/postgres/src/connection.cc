// libpq error codes become dataflow exceptions here, and only here.
#include "dataflow/postgres/connection.h"

#include <libpq-fe.h>

#include <charconv>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace dataflow::postgres {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// Quotes a conninfo value: 'value' with \ and ' escaped.
std::string conninfoValue(const std::string& v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

std::string trimNewline(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

}  // namespace

ConnectionConfig ConnectionConfig::fromEnvironment() {
  ConnectionConfig config;
  if (std::string url = env("PG_URL"); !url.empty()) {
    config.conninfo = url;
    return config;
  }
  std::string parts;
  auto add = [&](const char* key, const std::string& value) {
    if (!value.empty()) parts += std::string(parts.empty() ? "" : " ") + key + "=" + conninfoValue(value);
  };
  add("host", env("PG_HOST"));
  add("port", env("PG_PORT"));
  add("dbname", env("PG_DB"));
  add("user", env("PG_USER"));
  std::string password = env("PG_PASSWORD");
  if (std::string file = env("PG_PASSWORD_FILE"); !file.empty()) {
    std::ifstream in(file);
    if (!in) throw ConfigurationError("PG_PASSWORD_FILE: cannot read '" + file + "'");
    std::stringstream ss;
    ss << in.rdbuf();
    password = trimNewline(ss.str());
  }
  add("password", password);
  config.conninfo = parts;
  return config;
}

std::string ConnectionConfig::describe() const {
  char* err = nullptr;
  PQconninfoOption* options = PQconninfoParse(conninfo.c_str(), &err);
  if (!options) {
    if (err) PQfreemem(err);
    return "<unparsable connection string>";
  }
  std::string out;
  for (PQconninfoOption* o = options; o->keyword; ++o) {
    std::string_view k = o->keyword;
    if (!o->val || !*o->val) continue;
    if (k == "host" || k == "hostaddr" || k == "port" || k == "dbname" || k == "user" || k == "sslmode") {
      out += std::string(out.empty() ? "" : " ") + o->keyword + "=" + o->val;
    }
  }
  PQconninfoFree(options);
  return out.empty() ? "<libpq defaults>" : out;
}

Result::Result(Result&& other) noexcept : result_(other.result_) { other.result_ = nullptr; }
Result& Result::operator=(Result&& other) noexcept {
  if (this != &other) {
    if (result_) PQclear(result_);
    result_ = other.result_;
    other.result_ = nullptr;
  }
  return *this;
}
Result::~Result() {
  if (result_) PQclear(result_);
}
int Result::rows() const { return PQntuples(result_); }
int Result::columns() const { return PQnfields(result_); }
bool Result::isNull(int row, int column) const { return PQgetisnull(result_, row, column) != 0; }
std::string_view Result::value(int row, int column) const {
  return {PQgetvalue(result_, row, column), static_cast<size_t>(PQgetlength(result_, row, column))};
}
std::optional<std::string> Result::optionalValue(int row, int column) const {
  if (isNull(row, column)) return std::nullopt;
  return std::string(value(row, column));
}
int64_t Result::int64(int row, int column) const {
  auto v = value(row, column);
  int64_t out = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || ptr != v.data() + v.size()) {
    throw InternalError("expected an integer in column " + std::to_string(column) + ", got '" + std::string(v) + "'");
  }
  return out;
}
std::string_view Result::columnName(int column) const { return PQfname(result_, column); }
uint32_t Result::columnType(int column) const { return PQftype(result_, column); }
int32_t Result::columnTypeModifier(int column) const { return PQfmod(result_, column); }
int64_t Result::affected() const {
  const char* n = PQcmdTuples(result_);
  return (n && *n) ? std::strtoll(n, nullptr, 10) : 0;
}

Connection Connection::open(const ConnectionConfig& config) {
  std::string conninfo = config.conninfo;
  // Append our settings; conninfo URLs take them as query parameters, key=value strings as pairs.
  std::vector<const char*> keys{"dbname", "connect_timeout", "application_name"};
  std::string timeout = std::to_string(config.connectTimeoutSeconds);
  std::vector<const char*> values{conninfo.c_str(), timeout.c_str(), config.applicationName.c_str()};
  if (config.replication) {
    keys.push_back("replication");
    values.push_back("database");
  }
  if (!config.serverOptions.empty()) {
    keys.push_back("options");
    values.push_back(config.serverOptions.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  // expand_dbname=1: the dbname value may itself be a full conninfo or URL.
  pg_conn* conn = PQconnectdbParams(keys.data(), values.data(), 1);
  std::string target = config.describe();
  if (!conn) throw ConnectorError("PostgreSQL: out of memory connecting to " + target, true);
  if (PQstatus(conn) != CONNECTION_OK) {
    std::string message = PQerrorMessage(conn);
    PQfinish(conn);
    while (!message.empty() && message.back() == '\n') message.pop_back();
    throw ConnectorError("PostgreSQL: cannot connect to " + target + ": " + message, true);
  }
  return Connection(conn, target);
}

Connection::Connection(Connection&& other) noexcept : conn_(other.conn_), target_(std::move(other.target_)) {
  other.conn_ = nullptr;
}
Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    if (conn_) PQfinish(conn_);
    conn_ = other.conn_;
    target_ = std::move(other.target_);
    other.conn_ = nullptr;
  }
  return *this;
}
Connection::~Connection() {
  if (conn_) PQfinish(conn_);
}

bool Connection::isOpen() const { return conn_ && PQstatus(conn_) == CONNECTION_OK; }

void Connection::fail(std::string_view what, pg_result* result) {
  std::string sqlstate;
  std::string message;
  if (result) {
    if (const char* s = PQresultErrorField(result, PG_DIAG_SQLSTATE)) sqlstate = s;
    message = PQresultErrorMessage(result);
    PQclear(result);
  }
  if (message.empty()) message = PQerrorMessage(conn_);
  while (!message.empty() && message.back() == '\n') message.pop_back();
  bool lost = PQstatus(conn_) != CONNECTION_OK;
  bool retriable = lost || isRetriableSqlState(sqlstate);
  std::string text = "PostgreSQL (" + target_ + "): " + std::string(what) + " failed" +
                     (sqlstate.empty() ? "" : " [" + sqlstate + "]") + ": " + message;
  throw PostgresError(text, retriable, std::move(sqlstate), lost);
}

Result Connection::exec(std::string_view sql) {
  pg_result* r = PQexec(conn_, std::string(sql).c_str());
  auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail("query", r);
  return Result(r);
}

Result Connection::execParams(std::string_view sql, const std::vector<std::optional<std::string>>& params) {
  std::vector<std::optional<std::string_view>> views(params.begin(), params.end());
  return execParamsBinary(sql, views, {});
}

Result Connection::execParamsBinary(std::string_view sql, const std::vector<std::optional<std::string_view>>& params,
                                    const std::vector<bool>& binary, bool binaryResult) {
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size()), formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    values[i] = params[i] ? params[i]->data() : nullptr;
    lengths[i] = params[i] ? static_cast<int>(params[i]->size()) : 0;
    formats[i] = (i < binary.size() && binary[i]) ? 1 : 0;
  }
  pg_result* r = PQexecParams(conn_, std::string(sql).c_str(), static_cast<int>(params.size()), nullptr,
                              values.data(), lengths.data(), formats.data(), binaryResult ? 1 : 0);
  auto status = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) fail("statement", r);
  return Result(r);
}

void Connection::copyStart(std::string_view copySql) {
  pg_result* r = PQexec(conn_, std::string(copySql).c_str());
  if (!r || PQresultStatus(r) != PGRES_COPY_IN) fail("COPY", r);
  PQclear(r);
}

void Connection::copyData(std::string_view data) {
  if (PQputCopyData(conn_, data.data(), static_cast<int>(data.size())) != 1) fail("COPY data", nullptr);
}

void Connection::copyEnd() {
  if (PQputCopyEnd(conn_, nullptr) != 1) fail("COPY end", nullptr);
  pg_result* r = PQgetResult(conn_);
  if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) fail("COPY", r);
  PQclear(r);
  while ((r = PQgetResult(conn_)) != nullptr) PQclear(r);
}

void Connection::copyFail(const std::string& message) {
  if (PQputCopyEnd(conn_, message.c_str()) != 1) fail("COPY end", nullptr);
  pg_result* r;
  while ((r = PQgetResult(conn_)) != nullptr) PQclear(r);
}

std::string Connection::quoteIdentifier(std::string_view identifier) const {
  char* quoted = PQescapeIdentifier(conn_, identifier.data(), identifier.size());
  if (!quoted) throw ConfigurationError("cannot quote identifier '" + std::string(identifier) + "'");
  std::string out(quoted);
  PQfreemem(quoted);
  return out;
}

bool isRetriableSqlState(std::string_view s) {
  return s.starts_with("08") ||  // connection exception
         s == "57P01" || s == "57P02" || s == "57P03" ||  // admin/crash shutdown, cannot connect now
         s == "40001" || s == "40P01" ||  // serialization failure, deadlock
         s == "53300";  // too many connections
}

}  // namespace dataflow::postgres
