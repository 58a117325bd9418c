// COPY's binary format, from the text values an UpsertRow carries: the server then stores each
// value without running its type's text parser (timestamp and numeric parsing were a fifth of the
// warehouse backend's time in a drain). A value whose text this encoder does not take exactly as
// the server would is refused, and the caller writes its batch in text form instead.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dataflow::postgres::detail {

// How one column's text becomes its binary form.
enum class BinaryType : uint8_t {
  kBool,
  kInt2,
  kInt4,
  kInt8,
  kFloat4,
  kFloat8,
  kNumeric,
  kText,  // text, varchar, bpchar, json: the bytes themselves
  kJsonb,
  kDate,
  kTimestamp,
  kTimestampTz,
  kUuid,
};

// The binary form of a column of type `typeOid`; nullopt for a type the encoder does not write
// (the table is then written in text form).
std::optional<BinaryType> binaryTypeOf(uint32_t typeOid);

// "PGCOPY\n\377\r\n\0", flags and header extension: the start of a binary COPY stream.
void appendBinaryCopyHeader(std::string& out);
// The field count that starts each row.
void appendBinaryRowStart(std::string& out, int16_t fields);
// A NULL field.
void appendBinaryNull(std::string& out);
// The length that starts a field of `bytes` bytes, for a field whose bytes are sent in pieces
// after it (bytea: the bytes themselves).
void appendBinaryFieldLength(std::string& out, size_t bytes);
// A field from its text form; false (and `out` unchanged) when the text is not one this encoder
// takes for the type.
bool appendBinaryField(std::string& out, BinaryType type, std::string_view text);
// The trailer that ends the stream.
void appendBinaryCopyTrailer(std::string& out);

// The start of a one-dimensional array without NULLs of `count` elements of type `elementOid`,
// in the binary form a parameter takes (array_recv's); each element follows as a field
// (appendBinaryField). The server then parses no array literal: for the keys of a large batch,
// that was most of the probe's bind time.
void appendBinaryArrayHeader(std::string& out, uint32_t elementOid, size_t count);

}  // namespace dataflow::postgres::detail
