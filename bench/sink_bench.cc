// Upsert strategies into PostgreSQL, side by side with a plain COPY into the same table, for
// batches of 500, 5k and 50k rows of a 13-column table, as fresh inserts and as updates of existing
// keys. Needs a server: PG_URL (e.g. eval "$(scripts/stack env)").
//
//   PG_URL=... build/release/bench/sink_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <dataflow/postgres/warehouse.h>

#include <cstdlib>
#include <string>

namespace {

using namespace dataflow::postgres;

constexpr const char* kTable = "bench_upsert";
const std::vector<std::string> kValueColumns = {"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10"};

std::optional<Connection>& connection() {
  static std::optional<Connection> conn;
  if (!conn) {
    const char* url = std::getenv("PG_URL");
    if (!url) return conn;
    conn.emplace(Connection::open({.conninfo = url}));
    conn->exec("SET client_min_messages = warning");
  }
  return conn;
}

void resetTable(Connection& c) {
  c.exec(std::string("DROP TABLE IF EXISTS ") + kTable + "; CREATE TABLE " + kTable +
         " (id bigint PRIMARY KEY, c1 text, c2 text, c3 numeric(12,2), c4 text, c5 timestamptz, c6 timestamptz,"
         " c7 bigint, c8 text, c9 boolean, c10 text, is_deleted boolean NOT NULL DEFAULT false,"
         " source_lsn bigint NOT NULL)");
}

std::vector<UpsertRow> makeRows(int64_t firstId, int64_t n, int64_t version) {
  std::vector<UpsertRow> rows;
  rows.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t id = firstId + i;
    rows.push_back(UpsertRow{{std::to_string(id), "user" + std::to_string(id) + "@example.com", "status-" + std::to_string(id % 7),
                              std::to_string(id % 100000) + ".25", "DE", "2026-11-26T05:02:59.561558Z",
                              "2026-11-26T05:02:59.561558Z", std::to_string(id * 3), "a note about the row", "true",
                              "dbserver1.public.orders"},
                             version, false});
  }
  return rows;
}

std::string columnList() {
  std::string out = "id";
  for (const auto& c : kValueColumns) out += ", " + c;
  return out + ", source_lsn";
}

enum Strategy { kCopyMerge, kRowByRow, kMultiValues, kUnnest, kPlainCopy };

// One batch with the given strategy, in one transaction.
void writeBatch(Connection& c, Strategy strategy, const std::vector<UpsertRow>& rows) {
  static const UpsertTable table({.table = kTable, .keyColumns = {"id"}, .valueColumns = kValueColumns,
                                  .softDeleteColumn = "is_deleted"});
  const std::string cols = columnList();
  std::string update;
  for (const auto& v : kValueColumns) update += v + " = EXCLUDED." + v + ", ";
  update += "source_lsn = EXCLUDED.source_lsn";
  const std::string conflict = " ON CONFLICT (id) DO UPDATE SET " + update + " WHERE t.source_lsn < EXCLUDED.source_lsn";
  if (strategy == kCopyMerge) {  // the sink itself, with its own connection and transaction
    static Warehouse warehouse({.connection = {.conninfo = std::getenv("PG_URL")}});
    warehouse.writeBatch({}, [&](WarehouseTransaction& tx) { tx.upsert(table, std::span<const UpsertRow>(rows)); });
    return;
  }
  c.exec("BEGIN");
  switch (strategy) {
    case kCopyMerge:
      break;
    case kRowByRow: {
      std::string sql = std::string("INSERT INTO ") + kTable + " AS t (" + cols + ") VALUES ($1";
      for (size_t i = 2; i <= kValueColumns.size() + 2; ++i) sql += ", $" + std::to_string(i);
      sql += ")" + conflict;
      for (const auto& r : rows) {
        auto params = r.values;
        params.push_back(std::to_string(r.version));
        c.execParams(sql, params);
      }
      break;
    }
    case kMultiValues: {
      const size_t width = kValueColumns.size() + 2;
      for (size_t start = 0; start < rows.size(); start += 1000) {
        size_t end = std::min(rows.size(), start + 1000);
        std::string sql = std::string("INSERT INTO ") + kTable + " AS t (" + cols + ") VALUES ";
        std::vector<std::optional<std::string>> params;
        for (size_t i = start; i < end; ++i) {
          sql += (i == start ? "(" : ", (");
          for (size_t k = 0; k < width; ++k) sql += (k ? ", $" : "$") + std::to_string(params.size() + k + 1);
          sql += ")";
          params.insert(params.end(), rows[i].values.begin(), rows[i].values.end());
          params.push_back(std::to_string(rows[i].version));
        }
        c.execParams(sql + conflict, params);
      }
      break;
    }
    case kUnnest: {
      // One array parameter per column, in PostgreSQL's text array form.
      const size_t width = kValueColumns.size() + 2;
      std::vector<std::string> arrays(width, "{");
      for (size_t i = 0; i < rows.size(); ++i) {
        for (size_t k = 0; k < width; ++k) {
          const std::optional<std::string> v = k + 1 < width ? rows[i].values[k] : std::optional<std::string>(std::to_string(rows[i].version));
          if (i) arrays[k] += ',';
          if (!v) { arrays[k] += "NULL"; continue; }
          arrays[k] += '"';
          for (char ch : *v) { if (ch == '"' || ch == '\\') arrays[k] += '\\'; arrays[k] += ch; }
          arrays[k] += '"';
        }
      }
      static const char* types[] = {"bigint", "text", "text", "numeric", "text", "timestamptz", "timestamptz", "bigint", "text", "boolean", "text", "bigint"};
      std::string sql = std::string("INSERT INTO ") + kTable + " AS t (" + cols + ") SELECT * FROM unnest(";
      for (size_t k = 0; k < width; ++k) sql += (k ? ", $" : "$") + std::to_string(k + 1) + "::" + types[k] + "[]";
      std::vector<std::optional<std::string>> params;
      for (auto& a : arrays) params.push_back(a + "}");
      c.execParams(sql + ")" + conflict, params);
      break;
    }
    case kPlainCopy: {
      c.copyStart(std::string("COPY ") + kTable + " (" + cols + ") FROM STDIN");
      std::string buffer;
      for (const auto& r : rows) {
        for (const auto& v : r.values) buffer += (v ? *v : "\\N") + "\t";
        buffer += std::to_string(r.version) + "\n";
      }
      c.copyData(buffer);
      c.copyEnd();
      break;
    }
  }
  c.exec("COMMIT");
}

// range(0): strategy, range(1): batch size, range(2): 0 inserts, 1 updates.
void BM_Sink(benchmark::State& state) {
  auto& conn = connection();
  if (!conn) {
    state.SkipWithError("PG_URL is not set");
    return;
  }
  auto strategy = static_cast<Strategy>(state.range(0));
  const int64_t batch = state.range(1);
  const bool updates = state.range(2) == 1;
  if (strategy == kPlainCopy && updates) {
    state.SkipWithError("COPY cannot update");
    return;
  }
  resetTable(*conn);
  if (updates) writeBatch(*conn, kPlainCopy, makeRows(0, batch, 1));
  int64_t next = 0, version = 2;
  for (auto _ : state) {
    state.PauseTiming();
    auto rows = updates ? makeRows(0, batch, version++) : makeRows(next, batch, 1);
    next += batch;
    state.ResumeTiming();
    writeBatch(*conn, strategy, rows);
  }
  state.SetItemsProcessed(state.iterations() * batch);
  static const char* names[] = {"copy+merge (ours)", "row-by-row", "multi-row VALUES", "unnest arrays", "plain COPY insert"};
  state.SetLabel(std::string(names[strategy]) + (updates ? ", updates" : ", inserts"));
}
BENCHMARK(BM_Sink)
    ->ArgsProduct({{kPlainCopy, kCopyMerge, kUnnest, kMultiValues, kRowByRow}, {500, 1000, 5000, 50000}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
