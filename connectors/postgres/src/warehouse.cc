// Set-based upserts: COPY into a temporary staging table, then one INSERT ... SELECT ... ON
// CONFLICT DO UPDATE ... WHERE target.version < EXCLUDED.version. Chosen over row-by-row,
// pipelined and multi-row VALUES statements by measurement (bench/sink_bench.cc).
#include "dataflow/postgres/warehouse.h"

#include "copy_binary.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace dataflow::postgres {
namespace {

constexpr uint32_t kBoolOid = 16, kInt8Oid = 20;

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
void appendCopyField(std::string& out, std::optional<std::string_view> v) {
  if (!v) {
    out += "\\N";
    return;
  }
  // Runs of ordinary bytes are appended whole: most values need no escape at all.
  const std::string_view text = *v;
  size_t from = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (ch != '\\' && ch != '\t' && ch != '\n' && ch != '\r') continue;
    out.append(text.substr(from, i - from));
    out += ch == '\\' ? "\\\\" : ch == '\t' ? "\\t" : ch == '\n' ? "\\n" : "\\r";
    from = i + 1;
  }
  out.append(text.substr(from));
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

// Column `c` of a row as COPY writes it: its text, or NULL (also for a column `kept` marks: its
// text is no value, and may not even parse as the column's type). A view: no copy per field.
std::optional<std::string_view> textOf(const UpsertRow& r, size_t c, uint64_t kept) {
  if ((c < 64 && ((kept >> c) & 1)) || !r.values[c]) return std::nullopt;
  return std::string_view(*r.values[c]);
}

// The bits of UpsertRow::keepStored that name value columns (not keys).
uint64_t valueColumnBits(size_t width, size_t keys) {
  return (width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1) & ~((uint64_t{1} << keys) - 1);
}

// One element of an array literal ("{...}"), quoted.
void appendArrayElement(std::string& out, std::string_view v) {
  if (out.size() > 1) out += ',';
  out += '"';
  for (char ch : v) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  out += '"';
}

// The texts of one column of the rows as an array literal, for a parameter cast to `type[]`.
std::string arrayLiteral(std::span<const UpsertRow* const> rows, size_t column) {
  std::string out = "{";
  for (const UpsertRow* r : rows) appendArrayElement(out, *r->values[column]);
  out += '}';
  return out;
}

// A COPY ... FROM STDIN, in text form or in COPY's binary format: rows are appended to buffer()
// and go to the server in pieces of about a megabyte.
class CopyIn {
 public:
  CopyIn(Connection& conn, const std::string& copySql, bool binary = false) : conn_(conn), binary_(binary) {
    conn_.copyStart(binary ? copySql + " WITH (FORMAT binary)" : copySql);
    buffer_.reserve(kChunk + 4096);
    if (binary_) detail::appendBinaryCopyHeader(buffer_);
  }
  std::string& buffer() { return buffer_; }
  void endRow() {
    if (!binary_) buffer_ += '\n';
    if (buffer_.size() > kChunk) {
      conn_.copyData(buffer_);
      buffer_.clear();
    }
  }
  void finish() {
    if (binary_) detail::appendBinaryCopyTrailer(buffer_);
    if (!buffer_.empty()) conn_.copyData(buffer_);
    conn_.copyEnd();
  }
  // Ends the COPY with an error: the statement fails, and with it the transaction.
  void fail(const std::string& why) { conn_.copyFail(why); }

 private:
  static constexpr size_t kChunk = (1 << 20) - 4096;
  Connection& conn_;
  bool binary_;
  std::string buffer_;
};

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

namespace detail {

// The rows of an upsert's COPY field by field from their text: as text, or in binary form (one
// detail::BinaryType per column, UpsertTableOptions::binaryCopy).
class CopyWriter {
 public:
  CopyWriter(Connection& conn, const std::string& copySql, const std::vector<uint8_t>& binary)
      : copy_(conn, copySql, !binary.empty()), binary_(binary), buffer_(copy_.buffer()) {}
  void beginRow() {
    column_ = 0;
    if (!binary_.empty()) detail::appendBinaryRowStart(buffer_, static_cast<int16_t>(binary_.size()));
  }
  // The row's next field from its text; nullopt is NULL. False when the binary encoder does not
  // take the text as the server would: the caller then abandons the COPY (fail()).
  bool field(std::optional<std::string_view> v) {
    const size_t c = column_++;
    if (binary_.empty()) {
      if (c) buffer_ += '\t';
      appendCopyField(buffer_, v);
      return true;
    }
    if (!v) {
      detail::appendBinaryNull(buffer_);
      return true;
    }
    return detail::appendBinaryField(buffer_, static_cast<detail::BinaryType>(binary_[c]), *v);
  }
  void endRow() { copy_.endRow(); }
  void finish() { copy_.finish(); }
  void fail(const std::string& why) { copy_.fail(why); }

 private:
  CopyIn copy_;
  const std::vector<uint8_t>& binary_;
  std::string& buffer_;
  size_t column_ = 0;
};

}  // namespace detail

using detail::CopyWriter;

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
  for (const auto& c : options_.changeColumns) {
    auto it = std::find(options_.valueColumns.begin(), options_.valueColumns.end(), c);
    if (it == options_.valueColumns.end()) {
      throw ConfigurationError("UpsertTableOptions of " + options_.table + ": change column '" + c +
                               "' is not one of the value columns");
    }
    const size_t column = options_.keyColumns.size() + static_cast<size_t>(it - options_.valueColumns.begin());
    if (column >= 64) {
      throw ConfigurationError("UpsertTableOptions of " + options_.table + ": change column '" + c +
                               "' is past the 64th column");
    }
    changeBits_ |= uint64_t{1} << column;
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
  const uint64_t valueBits = valueColumnBits(width, keys);
  std::unordered_map<size_t, UpsertRow> patched;  // newest changes completed from older ones
  // Soft deletes that follow a change of their key in this batch. One by one, the change would
  // have set the row's values and the delete kept them: such a delete carries that change's values
  // (and its kept columns) instead of keeping the stored row's, so where the batches end does not
  // change what is written.
  std::unordered_set<size_t> carries;
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
      // was a plain delete (which carries only the key; the stored row keeps its last values).
      const uint64_t kept = r.keepStored & valueBits;
      const size_t previous = it->second;
      const UpsertRow& older = patched.contains(previous) ? patched.at(previous) : rows[previous];
      const bool olderHasValues = !older.deleted || carries.contains(previous);
      if (r.deleted && olderHasValues && !o.softDeleteColumn.empty()) {
        UpsertRow carrying = r;
        carrying.keepStored = older.keepStored & valueBits & ~table.changeBits_;
        for (size_t c = keys; c < width; ++c) {
          if (c < 64 && (table.changeBits_ >> c) & 1) continue;
          // A column the earlier change did not send has no value here: stored or unknown.
          carrying.values[c] = c < 64 && (carrying.keepStored >> c) & 1 ? std::nullopt : older.values[c];
        }
        patched[i] = std::move(carrying);
        carries.insert(i);
      } else if (kept != 0 && olderHasValues && !r.deleted) {
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
  // The rows to write, in input order (a key's newest change, completed from older ones).
  std::vector<const UpsertRow*> chosen;
  std::vector<uint8_t> chosenCarries;  // per chosen row: a delete that carries values
  chosen.reserve(newest.size() + accumulated);
  chosenCarries.reserve(newest.size() + accumulated);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (!keep[i]) continue;
    auto patch = patched.find(i);
    chosen.push_back(patch != patched.end() ? &patch->second : &rows[i]);
    chosenCarries.push_back(!carries.empty() && carries.contains(i));  // no hashing in the common case
  }

  const auto staging = std::chrono::steady_clock::now();
  const std::string target = quoteTable(conn_, o.table);
  if (o.directInsert && o.accumulateColumns.empty()) {
    if (auto now = noKeyStored(table, target, chosen)) {
      if (auto written = copyDirect(table, target, chosen, *now)) {
        addPhase("copy", staging);
        return *written;
      }
    }
  }
  const std::string stage = conn_.quoteIdentifier(stagingName(o.table));
  const std::string keyList = joinQuoted(conn_, o.keyColumns);
  const std::string valueList = joinQuoted(conn_, o.valueColumns);
  const std::string version = conn_.quoteIdentifier(o.versionColumn);
  std::string stageColumns = keyList + (o.valueColumns.empty() ? "" : ", " + valueList) + ", " + version;
  conn_.exec("CREATE TEMP TABLE IF NOT EXISTS " + stage + " ON COMMIT DELETE ROWS AS SELECT " + stageColumns +
             ", NULL::boolean AS __dataflow_deleted, NULL::bigint AS __dataflow_keep, NULL::boolean AS __dataflow_carries FROM " +
             target + " WITH NO DATA");

  std::vector<std::string> columnNames = o.keyColumns;
  columnNames.insert(columnNames.end(), o.valueColumns.begin(), o.valueColumns.end());
  columnNames.push_back(o.versionColumn);
  columnNames.insert(columnNames.end(), {"__dataflow_deleted", "__dataflow_keep", "__dataflow_carries"});
  const auto binary = binaryColumns(table, target, columnNames,
                                    {{"__dataflow_deleted", kBoolOid}, {"__dataflow_keep", kInt8Oid}, {"__dataflow_carries", kBoolOid}});
  CopyWriter copy(conn_, "COPY " + stage + " (" + stageColumns + ", __dataflow_deleted, __dataflow_keep, __dataflow_carries) FROM STDIN",
                  binary);
  bool anyCarries = false;
  for (size_t n = 0; n < chosen.size(); ++n) {
    const UpsertRow& r = *chosen[n];
    anyCarries |= chosenCarries[n] != 0;
    const uint64_t kept = r.deleted && !chosenCarries[n] ? 0 : r.keepStored & valueBits;
    anyKept |= kept != 0;
    copy.beginRow();
    for (size_t c = 0; c < r.values.size(); ++c) {
      // A kept column's text is no value (it may not even parse as the column's type).
      if (!copy.field(textOf(r, c, kept))) refuseBinary(copy, o, target, columnNames[c], *r.values[c]);
    }
    copy.field(std::to_string(r.version));
    copy.field(r.deleted ? "t" : "f");
    copy.field(std::to_string(static_cast<int64_t>(kept)));
    copy.field(chosenCarries[n] ? "t" : "f");
    copy.endRow();
  }
  copy.finish();
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

  const char* guard = o.equalVersionReplaces ? " <= " : " < ";
  std::string insertColumns = stageColumns;
  std::string select = stageColumns;
  std::string update = version + " = EXCLUDED." + version;
  std::string carryingUpdate;  // for deletes that carry values: every column from the change
  const bool soft = !o.softDeleteColumn.empty();
  if (soft) {
    std::string sd = conn_.quoteIdentifier(o.softDeleteColumn);
    insertColumns += ", " + sd;
    select += ", __dataflow_deleted";
    update += ", " + sd + " = EXCLUDED." + sd;
    carryingUpdate = update;
    // A delete keeps the last known values: it only marks the row (and sets the change columns).
    for (size_t j = 0; j < o.valueColumns.size(); ++j) {
      std::string q = conn_.quoteIdentifier(o.valueColumns[j]);
      carryingUpdate += ", " + q + " = EXCLUDED." + q;
      if (keys + j < 64 && (table.changeBits_ >> (keys + j)) & 1) {
        update += ", " + q + " = EXCLUDED." + q;
      } else {
        update += ", " + q + " = CASE WHEN EXCLUDED." + sd + " THEN t." + q + " ELSE EXCLUDED." + q + " END";
      }
    }
  } else {
    for (const auto& v : o.valueColumns) {
      std::string q = conn_.quoteIdentifier(v);
      update += ", " + q + " = EXCLUDED." + q;
    }
  }
  std::string carryingColumns = insertColumns, carryingSelect = select;
  appendTimestampColumns(conn_, o, insertColumns, select, update);
  int64_t deleted = 0;
  std::string where;
  if (anyCarries) {
    appendTimestampColumns(conn_, o, carryingColumns, carryingSelect, carryingUpdate);
    deleted = conn_.exec("INSERT INTO " + target + " AS t (" + carryingColumns + ") SELECT " + carryingSelect + " FROM " +
                         stage + " WHERE __dataflow_carries ON CONFLICT (" + keyList + ") DO UPDATE SET " +
                         carryingUpdate + " WHERE t." + version + guard + "EXCLUDED." + version).affected();
    where = " WHERE NOT __dataflow_carries";
  }
  if (o.hardDelete) {
    std::string match;
    for (const auto& k : o.keyColumns) {
      std::string q = conn_.quoteIdentifier(k);
      match += " AND s." + q + " = t." + q;
    }
    deleted += conn_.exec("DELETE FROM " + target + " t USING " + stage + " s WHERE s.__dataflow_deleted" + match +
                          " AND t." + version + guard + "s." + version).affected();
    where = " WHERE NOT __dataflow_deleted";
  }
  auto result = conn_.exec("INSERT INTO " + target + " AS t (" + insertColumns + ") SELECT " + select + " FROM " + stage +
                           where + " ON CONFLICT (" + keyList + ") DO UPDATE SET " + update + " WHERE t." + version +
                           guard + "EXCLUDED." + version);
  addPhase("merge", merging);
  return result.affected() + deleted;
}

std::optional<std::string> WarehouseTransaction::noKeyStored(const UpsertTable& table, const std::string& target,
                                                             std::span<const UpsertRow* const> rows) {
  const UpsertTableOptions& o = table.options_;
  auto types = keyTypes_.find(target);
  if (types == keyTypes_.end()) {
    std::string names = "{";
    for (const auto& k : o.keyColumns) appendArrayElement(names, k);
    auto r = conn_.execParams(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM unnest($2::text[]) WITH ORDINALITY AS k(name, i) "
        "JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attname = k.name AND NOT a.attisdropped ORDER BY k.i",
        {target, names + "}"});
    if (static_cast<size_t>(r.rows()) != o.keyColumns.size()) {
      throw ConfigurationError("upsert into " + o.table + ": a key column is not in the table");
    }
    std::vector<std::string> list;
    for (int i = 0; i < r.rows(); ++i) list.emplace_back(r.value(i, 0));
    types = keyTypes_.emplace(target, std::move(list)).first;
  }
  // Each key column's values as an array parameter: in binary form where the column's type has
  // one (no literal for the server to parse), else as a literal.
  const auto keyBinary = binaryColumns(table, target, o.keyColumns);
  std::vector<std::string> arrays;
  std::vector<bool> binary;
  for (size_t k = 0; k < o.keyColumns.size(); ++k) {
    std::string array;
    bool encoded = !keyBinary.empty();
    if (encoded) {
      detail::appendBinaryArrayHeader(array, columnTypes_.at(target)->at(o.keyColumns[k]), rows.size());
      const auto type = static_cast<detail::BinaryType>(keyBinary[k]);
      for (const UpsertRow* r : rows) {
        if (!(encoded = detail::appendBinaryField(array, type, *r->values[k]))) break;
      }
    }
    if (!encoded) array = arrayLiteral(rows, k);  // the server parses it, and names a bad value
    arrays.push_back(std::move(array));
    binary.push_back(encoded);
  }
  std::string sql;
  if (o.keyColumns.size() == 1) {
    // First the range probe: every new key past the greatest stored one (one step down the key's
    // index; new ids past the stored ones, the common case, end there), else a probe of each key.
    // The probe's array comes through a scalar subquery, so that the planner sees a parameter:
    // given the array itself it estimates the selectivity of each element (7 ms for 13 000 keys,
    // more than the probe), for the same index scan.
    const std::string k = conn_.quoteIdentifier(o.keyColumns[0]);
    const std::string arrayType = types->second[0] + "[]";
    const std::string array = "$1::" + arrayType;
    sql = "SELECT CASE WHEN COALESCE((SELECT " + k + " FROM " + target + " ORDER BY " + k + " DESC LIMIT 1) < ALL(" +
          array + "), true) THEN true ELSE NOT EXISTS (SELECT 1 FROM " + target + " WHERE " + k + " = ANY((SELECT " +
          array + ")::" + arrayType + ")) END, now()";
  } else {
    std::string arrays, names, match;
    for (size_t k = 0; k < o.keyColumns.size(); ++k) {
      const std::string n = "k" + std::to_string(k);
      arrays += (k ? ", $" : "$") + std::to_string(k + 1) + "::" + types->second[k] + "[]";
      names += (k ? ", " : "") + n;
      match += std::string(k ? " AND " : "") + "t." + conn_.quoteIdentifier(o.keyColumns[k]) + " = u." + n;
    }
    sql = "SELECT NOT EXISTS (SELECT 1 FROM " + target + " t JOIN unnest(" + arrays + ") AS u(" + names + ") ON " +
          match + "), now()";
  }
  std::vector<std::optional<std::string_view>> params(arrays.begin(), arrays.end());
  auto r = conn_.execParamsBinary(sql, params, binary);
  if (r.value(0, 0) != "t") return std::nullopt;
  return std::string(r.value(0, 1));
}

std::optional<int64_t> WarehouseTransaction::copyDirect(const UpsertTable& table, const std::string& target,
                                                        std::span<const UpsertRow* const> rows, const std::string& now) {
  const UpsertTableOptions& o = table.options_;
  const uint64_t valueBits = valueColumnBits(table.width(), o.keyColumns.size());
  std::string columns = joinQuoted(conn_, o.keyColumns);
  if (!o.valueColumns.empty()) columns += ", " + joinQuoted(conn_, o.valueColumns);
  columns += ", " + conn_.quoteIdentifier(o.versionColumn);
  const bool soft = !o.softDeleteColumn.empty();
  if (soft) columns += ", " + conn_.quoteIdentifier(o.softDeleteColumn);
  std::vector<std::string> columnNames = o.keyColumns;
  columnNames.insert(columnNames.end(), o.valueColumns.begin(), o.valueColumns.end());
  columnNames.push_back(o.versionColumn);
  if (soft) columnNames.push_back(o.softDeleteColumn);
  // The merge's now() for inserted rows: the same transaction's, so the same instant.
  size_t stamps = 0;
  for (const auto* list : {&o.insertOnlyColumns, &o.touchColumns}) {
    for (const auto& c : *list) {
      columns += ", " + conn_.quoteIdentifier(c);
      columnNames.push_back(c);
      ++stamps;
    }
  }
  const auto binary = binaryColumns(table, target, columnNames);
  // A key stored by another writer since the probe (a fenced zombie's late commit) makes the COPY
  // fail with a unique violation: undone to the savepoint, and the caller merges instead. The
  // savepoint goes in the COPY's own query string, and is not released after it (the commit ends
  // it): the live job's batches are a few ms, and every round trip is a part of them.
  int64_t written = 0;
  try {
    CopyWriter copy(conn_, "SAVEPOINT dataflow_direct_insert; COPY " + target + " (" + columns + ") FROM STDIN", binary);
    for (const UpsertRow* row : rows) {
      const UpsertRow& r = *row;
      if (r.deleted && o.hardDelete) continue;  // deletes a row that is not there
      // (A delete that carries values has none for the columns its earlier change did not send.)
      const uint64_t kept = r.deleted ? 0 : r.keepStored & valueBits;
      copy.beginRow();
      for (size_t c = 0; c < r.values.size(); ++c) {
        // A kept column of a key never stored: the merge finds no stored value either.
        if (!copy.field(textOf(r, c, kept))) refuseBinary(copy, o, target, columnNames[c], *r.values[c]);
      }
      copy.field(std::to_string(r.version));
      if (soft) copy.field(r.deleted ? "t" : "f");
      for (size_t k = 0; k < stamps; ++k) {
        if (!copy.field(now)) refuseBinary(copy, o, target, columnNames[columnNames.size() - stamps + k], now);
      }
      copy.endRow();
      ++written;
    }
    copy.finish();
  } catch (const PostgresError& e) {
    if (e.connectionLost() || e.sqlState() != "23505") throw;
    spdlog::info("upsert into {}: a key was stored since the probe; merging instead", o.table);
    conn_.exec("ROLLBACK TO SAVEPOINT dataflow_direct_insert; RELEASE SAVEPOINT dataflow_direct_insert");
    return std::nullopt;
  }
  return written;
}

std::vector<uint8_t> WarehouseTransaction::binaryColumns(const UpsertTable& table, const std::string& target,
                                                         const std::vector<std::string>& columns,
                                                         const std::vector<std::pair<std::string, uint32_t>>& extra) {
  if (!table.options_.binaryCopy) return {};
  auto it = columnTypes_.find(target);
  if (it == columnTypes_.end()) {
    auto r = conn_.execParams(
        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped",
        {target});
    std::map<std::string, uint32_t> types;
    for (int i = 0; i < r.rows(); ++i) {
      uint32_t oid = 0;
      auto text = r.value(i, 1);
      std::from_chars(text.data(), text.data() + text.size(), oid);
      types.emplace(std::string(r.value(i, 0)), oid);
    }
    it = columnTypes_.emplace(target, std::move(types)).first;
  }
  if (!it->second) return {};
  std::vector<uint8_t> out;
  out.reserve(columns.size());
  for (const auto& c : columns) {
    auto e = std::find_if(extra.begin(), extra.end(), [&](const auto& x) { return x.first == c; });
    uint32_t oid = 0;
    if (e != extra.end()) {
      oid = e->second;
    } else if (auto t = it->second->find(c); t != it->second->end()) {
      oid = t->second;
    }
    auto type = detail::binaryTypeOf(oid);
    if (!type) return {};  // a type without a binary form here (or a column the COPY will name as missing)
    out.push_back(static_cast<uint8_t>(*type));
  }
  return out;
}

void WarehouseTransaction::refuseBinary(CopyWriter& copy, const UpsertTableOptions& o, const std::string& target,
                                        const std::string& column, std::string_view value) {
  copy.fail("dataflow: a value the binary COPY encoder does not take");
  columnTypes_[target] = std::nullopt;  // text while this connection lasts
  throw ConnectorError("upsert into " + o.table + ": column " + column + " has the value '" +
                           std::string(value.substr(0, 64)) +
                           "', which binary COPY does not write as the server would read it; the batch is retried with "
                           "the table written as text",
                       true);
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
  // Staged with one COPY and inserted with one statement: a batch of malformed events (a poison
  // burst) costs about what the same rows cost as upserts, not a round trip each.
  const auto started = std::chrono::steady_clock::now();
  const std::string columns =
      "source_topic, source_partition, source_offset, record_key, raw_payload, error_kind, error_message, query_name, batch_id";
  const std::string stage = conn_.quoteIdentifier(stagingName(table_));
  conn_.exec("CREATE TEMP TABLE IF NOT EXISTS " + stage + " ON COMMIT DELETE ROWS AS SELECT " + columns + " FROM " + table_ +
             " WITH NO DATA");
  CopyIn copy(conn_, "COPY " + stage + " (" + columns + ") FROM STDIN");
  std::string& buffer = copy.buffer();
  const std::string query = validUtf8(info.queryName), batch = std::to_string(info.batchId);
  auto bytes = [&buffer](bool present, std::string_view v) {  // bytea in hex, its backslash escaped for COPY
    if (!present) {
      buffer += "\\N";
      return;
    }
    static constexpr char kHex[] = "0123456789abcdef";
    buffer += "\\\\x";
    for (unsigned char ch : v) {
      buffer += kHex[ch >> 4];
      buffer += kHex[ch & 15];
    }
  };
  for (const DeadLetter& d : letters) {
    appendCopyField(buffer, validUtf8(d.topic));
    buffer += '\t';
    buffer += std::to_string(d.partition);
    buffer += '\t';
    buffer += std::to_string(d.offset);
    buffer += '\t';
    bytes(d.hasKey, d.key);
    buffer += '\t';
    bytes(d.hasPayload, d.payload);
    buffer += '\t';
    appendCopyField(buffer, validUtf8(d.errorKind));
    buffer += '\t';
    appendCopyField(buffer, validUtf8(d.errorMessage));
    buffer += '\t';
    appendCopyField(buffer, query);
    buffer += '\t';
    buffer += batch;
    copy.endRow();
  }
  copy.finish();
  // A (topic, partition, offset) already there, from a replayed batch, is skipped.
  const int64_t inserted = conn_.exec("INSERT INTO " + table_ + " (" + columns + ") SELECT " + columns + " FROM " + stage +
                                      " ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING")
                               .affected();
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
    keyTypes_.clear();  // a table may have been altered meanwhile
    columnTypes_.clear();
    conn_.emplace(Connection::open(options_.connection));
    conn_->exec("SET client_min_messages = warning");
  }
  try {
    conn_->exec("BEGIN");
    WarehouseTransaction tx(*conn_, info.sinkPhasesMicros, keyTypes_, columnTypes_);
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
