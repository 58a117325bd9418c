// Set-based upserts: COPY into a temporary staging table, then one INSERT ... SELECT ... ON
// CONFLICT DO UPDATE ... WHERE target.version < EXCLUDED.version. Chosen over row-by-row,
// pipelined and multi-row VALUES statements by measurement (bench/sink_bench.cc).
#include "dataflow/postgres/warehouse.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <unordered_map>

namespace dataflow::postgres {
namespace {

std::string joinQuoted(Connection& c, const std::vector<std::string>& names, const std::string& prefix = "") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + prefix + c.quoteIdentifier(names[i]);
  return out;
}

std::string quoteTable(Connection& c, const std::string& table) {
  auto dot = table.find('.');
  if (dot == std::string::npos) return c.quoteIdentifier(table);
  return c.quoteIdentifier(table.substr(0, dot)) + "." + c.quoteIdentifier(table.substr(dot + 1));
}

// COPY text format: backslash, tab, newline and carriage return are escaped; \N is NULL.
void appendCopyField(std::string& out, const std::optional<std::string>& v) {
  if (!v) {
    out += "\\N";
    return;
  }
  for (char ch : *v) {
    switch (ch) {
      case '\\': out += "\\\\"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      default: out += ch;
    }
  }
}

// Text columns must be valid UTF-8: invalid bytes in messages become '?'.
std::string validUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size() && c != 0;
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(s.substr(i, len));
      i += len;
    } else {
      out += '?';
      ++i;
    }
  }
  return out;
}

std::string stagingName(const std::string& table) {
  std::string out = "dataflow_stage_";
  for (char ch : table) out += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return out;
}

// The insert-only and touch columns of an upsert: now() on insert, touch columns also on update.
void appendTimestampColumns(Connection& conn, const UpsertTableOptions& o, std::string& insertColumns,
                            std::string& select, std::string& update) {
  for (const auto& c : o.insertOnlyColumns) {
    insertColumns += ", " + conn.quoteIdentifier(c);
    select += ", now()";
  }
  for (const auto& c : o.touchColumns) {
    std::string q = conn.quoteIdentifier(c);
    insertColumns += ", " + q;
    select += ", now()";
    update += ", " + q + " = now()";
  }
}

}  // namespace

UpsertTable::UpsertTable(UpsertTableOptions options) : options_(std::move(options)) {
  if (options_.table.empty()) throw ConfigurationError("UpsertTableOptions.table is required");
  if (options_.keyColumns.empty()) throw ConfigurationError("UpsertTableOptions.keyColumns of " + options_.table + " is empty");
  if (options_.versionColumn.empty()) throw ConfigurationError("UpsertTableOptions.versionColumn of " + options_.table + " is empty");
  std::set<std::string> seen;
  auto add = [&](const std::string& c) {
    if (c.empty()) throw ConfigurationError("UpsertTableOptions of " + options_.table + ": an empty column name");
    if (!seen.insert(c).second) throw ConfigurationError("UpsertTableOptions of " + options_.table + ": column '" + c + "' appears twice");
  };
  for (auto* list : {&options_.keyColumns, &options_.valueColumns, &options_.insertOnlyColumns, &options_.touchColumns}) {
    for (const auto& c : *list) add(c);
  }
  add(options_.versionColumn);
  if (!options_.softDeleteColumn.empty()) add(options_.softDeleteColumn);
  for (const auto& c : options_.accumulateColumns) {
    if (std::find(options_.valueColumns.begin(), options_.valueColumns.end(), c) == options_.valueColumns.end()) {
      throw ConfigurationError("UpsertTableOptions of " + options_.table + ": accumulate column '" + c +
                               "' is not one of the value columns");
    }
  }
  if (!options_.accumulateColumns.empty() && (options_.hardDelete || !options_.softDeleteColumn.empty())) {
    throw ConfigurationError("UpsertTableOptions of " + options_.table +
                             ": accumulateColumns add partial results up and cannot be deleted (hardDelete, softDeleteColumn)");
  }
  if (options_.hardDelete && !options_.softDeleteColumn.empty()) {
    throw ConfigurationError("UpsertTableOptions of " + options_.table + ": hardDelete and softDeleteColumn ('" +
                             options_.softDeleteColumn + "') exclude each other");
  }
}

int64_t WarehouseTransaction::upsert(const UpsertTable& table, std::span<const UpsertRow> rows) {
  const UpsertTableOptions& o = table.options_;
  const size_t width = table.width();
  const size_t keys = o.keyColumns.size();
  // Newest change per key: PostgreSQL refuses an ON CONFLICT DO UPDATE that touches a row twice.
  std::unordered_map<std::string, size_t> newest;
  newest.reserve(rows.size());
  std::vector<char> keep(rows.size(), 0);
  // Bits of UpsertRow::keepStored that name value columns (not keys).
  const uint64_t valueBits = (width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1) & ~((uint64_t{1} << keys) - 1);
  std::unordered_map<size_t, UpsertRow> patched;  // newest changes completed from older ones
  bool anyKept = false;
  size_t accumulated = 0;  // rows of a table that accumulates: all of them are staged
  std::string key;
  for (size_t i = 0; i < rows.size(); ++i) {
    const UpsertRow& r = rows[i];
    if (r.values.size() != width) {
      throw ConfigurationError("upsert into " + o.table + ": a row has " + std::to_string(r.values.size()) +
                               " values, the table is configured with " + std::to_string(width));
    }
    if (!o.accumulateColumns.empty()) {
      if (r.deleted || r.keepStored != 0) {
        throw ConfigurationError("upsert into " + o.table + ": a table that accumulates takes neither deletes nor kept columns");
      }
      for (size_t k = 0; k < keys; ++k) {
        if (!r.values[k]) throw ConfigurationError("upsert into " + o.table + ": key column '" + o.keyColumns[k] + "' is NULL");
      }
      keep[i] = 1;
      ++accumulated;
      continue;
    }
    if (r.deleted && o.softDeleteColumn.empty() && !o.hardDelete) continue;  // deletes are ignored for this table
    key.clear();
    for (size_t k = 0; k < keys; ++k) {
      if (!r.values[k]) throw ConfigurationError("upsert into " + o.table + ": key column '" + o.keyColumns[k] + "' is NULL");
      key += *r.values[k];
      key += '\x1f';
    }
    auto [it, inserted] = newest.try_emplace(key, i);
    if (inserted) {
      keep[i] = 1;
    } else if (rows[it->second].version <= r.version) {
      // A column the newer change did not send has the value of the previous change, unless that
      // was a delete (which carries only the key; the stored row keeps its last values).
      const uint64_t kept = r.keepStored & valueBits;
      const size_t previous = it->second;
      const UpsertRow& older = patched.contains(previous) ? patched.at(previous) : rows[previous];
      if (kept != 0 && !older.deleted && !r.deleted) {
        UpsertRow merged = r;
        for (size_t c = keys; c < width && c < 64; ++c) {
          const uint64_t bit = uint64_t{1} << c;
          if ((kept & bit) && !(older.keepStored & bit)) {
            merged.values[c] = older.values[c];
            merged.keepStored &= ~bit;
          }
        }
        patched[i] = std::move(merged);
      }
      keep[previous] = 0;
      keep[i] = 1;
      it->second = i;
    }
  }
  if (newest.empty() && accumulated == 0) return 0;

  const auto staging = std::chrono::steady_clock::now();
  const std::string target = quoteTable(conn_, o.table);
  const std::string stage = conn_.quoteIdentifier(stagingName(o.table));
  const std::string keyList = joinQuoted(conn_, o.keyColumns);
  const std::string valueList = joinQuoted(conn_, o.valueColumns);
  const std::string version = conn_.quoteIdentifier(o.versionColumn);
  std::string stageColumns = keyList + (o.valueColumns.empty() ? "" : ", " + valueList) + ", " + version;
  conn_.exec("CREATE TEMP TABLE IF NOT EXISTS " + stage + " ON COMMIT DELETE ROWS AS SELECT " + stageColumns +
             ", NULL::boolean AS __dataflow_deleted, NULL::bigint AS __dataflow_keep FROM " + target +
             " WITH NO DATA");

  conn_.copyStart("COPY " + stage + " (" + stageColumns + ", __dataflow_deleted, __dataflow_keep) FROM STDIN");
  std::string buffer;
  buffer.reserve(1 << 20);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!keep[i]) continue;
    auto patch = patched.find(i);
    const UpsertRow& r = patch != patched.end() ? patch->second : rows[i];
    const uint64_t kept = r.deleted ? 0 : r.keepStored & valueBits;
    anyKept |= kept != 0;
    for (size_t c = 0; c < r.values.size(); ++c) {
      // A kept column's text is no value (it may not even parse as the column's type).
      appendCopyField(buffer, c < 64 && ((kept >> c) & 1) ? std::nullopt : r.values[c]);
      buffer += '\t';
    }
    buffer += std::to_string(r.version);
    buffer += r.deleted ? "\tt\t" : "\tf\t";
    buffer += std::to_string(static_cast<int64_t>(kept));
    buffer += '\n';
    if (buffer.size() > (1 << 20) - 4096) {
      conn_.copyData(buffer);
      buffer.clear();
    }
  }
  if (!buffer.empty()) conn_.copyData(buffer);
  conn_.copyEnd();
  if (anyKept) {
    // Columns a change did not send take the stored value, before the merge.
    std::string set, match;
    for (size_t j = 0; j < o.valueColumns.size() && keys + j < 64; ++j) {
      std::string q = conn_.quoteIdentifier(o.valueColumns[j]);
      set += std::string(set.empty() ? "" : ", ") + q + " = CASE WHEN s.__dataflow_keep & (1::bigint << " +
             std::to_string(keys + j) + ") <> 0 THEN t." + q + " ELSE s." + q + " END";
    }
    for (const auto& k : o.keyColumns) {
      std::string q = conn_.quoteIdentifier(k);
      match += " AND s." + q + " = t." + q;
    }
    conn_.exec("UPDATE " + stage + " s SET " + set + " FROM " + target + " t WHERE s.__dataflow_keep <> 0" + match);
  }

  addPhase("stage", staging);
  const auto merging = std::chrono::steady_clock::now();
  if (!o.accumulateColumns.empty()) {
    int64_t n = accumulateStaged(table, target, stage);
    addPhase("merge", merging);
    return n;
  }

  std::string insertColumns = stageColumns;
  std::string select = stageColumns;
  std::string update = version + " = EXCLUDED." + version;
  const bool soft = !o.softDeleteColumn.empty();
  if (soft) {
    std::string sd = conn_.quoteIdentifier(o.softDeleteColumn);
    insertColumns += ", " + sd;
    select += ", __dataflow_deleted";
    update += ", " + sd + " = EXCLUDED." + sd;
    // A delete keeps the last known values: it only marks the row.
    for (const auto& v : o.valueColumns) {
      std::string q = conn_.quoteIdentifier(v);
      update += ", " + q + " = CASE WHEN EXCLUDED." + sd + " THEN t." + q + " ELSE EXCLUDED." + q + " END";
    }
  } else {
    for (const auto& v : o.valueColumns) {
      std::string q = conn_.quoteIdentifier(v);
      update += ", " + q + " = EXCLUDED." + q;
    }
  }
  appendTimestampColumns(conn_, o, insertColumns, select, update);
  int64_t deleted = 0;
  std::string where;
  if (o.hardDelete) {
    std::string match;
    for (const auto& k : o.keyColumns) {
      std::string q = conn_.quoteIdentifier(k);
      match += " AND s." + q + " = t." + q;
    }
    deleted = conn_.exec("DELETE FROM " + target + " t USING " + stage + " s WHERE s.__dataflow_deleted" + match +
                         " AND t." + version + " < s." + version).affected();
    where = " WHERE NOT __dataflow_deleted";
  }
  auto result = conn_.exec("INSERT INTO " + target + " AS t (" + insertColumns + ") SELECT " + select + " FROM " + stage +
                           where + " ON CONFLICT (" + keyList + ") DO UPDATE SET " + update + " WHERE t." + version +
                           " < EXCLUDED." + version);
  addPhase("merge", merging);
  return result.affected() + deleted;
}

void WarehouseTransaction::addPhase(const char* name, std::chrono::steady_clock::time_point since) {
  if (!phasesMicros_) return;
  (*phasesMicros_)[name] +=
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - since).count();
}

// The staged partial rows, summed per key, added to the stored ones.
int64_t WarehouseTransaction::accumulateStaged(const UpsertTable& table, const std::string& target,
                                               const std::string& stage) {
  const UpsertTableOptions& o = table.options_;
  const std::string keyList = joinQuoted(conn_, o.keyColumns);
  const std::string version = conn_.quoteIdentifier(o.versionColumn);
  std::string insertColumns = keyList, select = keyList, update;
  for (const auto& v : o.valueColumns) {
    std::string q = conn_.quoteIdentifier(v);
    insertColumns += ", " + q;
    if (std::find(o.accumulateColumns.begin(), o.accumulateColumns.end(), v) != o.accumulateColumns.end()) {
      select += ", sum(" + q + ")";
      update += q + " = t." + q + " + EXCLUDED." + q + ", ";
    } else {
      select += ", max(" + q + ")";
      update += q + " = EXCLUDED." + q + ", ";
    }
  }
  insertColumns += ", " + version;
  select += ", max(" + version + ")";
  update += version + " = GREATEST(t." + version + ", EXCLUDED." + version + ")";
  appendTimestampColumns(conn_, o, insertColumns, select, update);
  return conn_.exec("INSERT INTO " + target + " AS t (" + insertColumns + ") SELECT " + select + " FROM " + stage +
                    " GROUP BY " + keyList + " ON CONFLICT (" + keyList + ") DO UPDATE SET " + update)
      .affected();
}

int64_t WarehouseTransaction::deadLetters(std::span<const DeadLetter> letters, const BatchInfo& info) {
  if (letters.empty()) return 0;
  const std::string sql = "INSERT INTO " + table_ +
                          " (source_topic, source_partition, source_offset, record_key, raw_payload, error_kind, "
                          "error_message, query_name, batch_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) "
                          "ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING";
  const std::vector<bool> binary{false, false, false, true, true, false, false, false, false};
  const auto started = std::chrono::steady_clock::now();
  int64_t inserted = 0;
  for (const DeadLetter& d : letters) {
    auto r = conn_.execParamsBinary(
        sql,
        {validUtf8(d.topic), std::to_string(d.partition), std::to_string(d.offset),
         d.hasKey ? std::optional<std::string>(d.key) : std::nullopt,
         d.hasPayload ? std::optional<std::string>(d.payload) : std::nullopt, validUtf8(d.errorKind),
         validUtf8(d.errorMessage), validUtf8(info.queryName), std::to_string(info.batchId)},
        binary);
    inserted += r.affected();
  }
  addPhase("deadLetters", started);
  return inserted;
}

Warehouse::Warehouse(WarehouseOptions options, std::shared_ptr<PostgresCheckpointStore> store)
    : options_(std::move(options)), store_(std::move(store)) {
  if (options_.deadLetterTable.empty()) throw ConfigurationError("WarehouseOptions.deadLetterTable is empty");
}

void Warehouse::writeBatch(const BatchInfo& info, const std::function<void(WarehouseTransaction&)>& body) {
  if (!conn_ || !conn_->isOpen()) {
    conn_.reset();
    conn_.emplace(Connection::open(options_.connection));
    conn_->exec("SET client_min_messages = warning");
  }
  try {
    conn_->exec("BEGIN");
    WarehouseTransaction tx(*conn_, info.sinkPhasesMicros);
    tx.table_ = quoteTable(*conn_, options_.deadLetterTable);
    body(tx);
    auto committing = std::chrono::steady_clock::now();
    if (store_) store_->commitWithin(*conn_, info);
    conn_->exec("COMMIT");
    tx.addPhase("commit", committing);
  } catch (...) {
    if (conn_->isOpen()) {
      try {
        conn_->exec("ROLLBACK");
      } catch (const std::exception& e) {
        spdlog::warn("warehouse: ROLLBACK failed: {}", e.what());
        conn_.reset();
      }
    } else {
      conn_.reset();  // reconnect on the next attempt
    }
    throw;
  }
}

}  // namespace dataflow::postgres
