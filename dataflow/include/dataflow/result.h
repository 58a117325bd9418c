// The outcome of a fallible per-record function (`Stream::parse`): a value, or a ParseError that
// the engine turns into a dead letter carrying the record's raw bytes. Parsing failures are
// expected outcomes, so they are values, not exceptions.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace dataflow {

// Why a record could not be turned into a row. `kind` is a short stable code
// ("malformed_json", "missing_field", ...) for grouping in a dead-letter table; `message` is for
// people.
struct ParseError {
  std::string kind;
  std::string message;
};

// Either a value of type T or a ParseError.
template <class T>
class Result {
 public:
  using value_type = T;

  Result(T value) : state_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(ParseError error) : state_(std::in_place_index<1>, std::move(error)) {}  // NOLINT

  bool ok() const noexcept { return state_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(state_); }
  T&& value() && { return std::get<0>(std::move(state_)); }
  const T& value() const& { return std::get<0>(state_); }
  const ParseError& error() const& { return std::get<1>(state_); }
  ParseError&& error() && { return std::get<1>(std::move(state_)); }

 private:
  std::variant<T, ParseError> state_;
};

// Shorthand for returning a failure from a parse function.
inline ParseError parseError(std::string kind, std::string message) {
  return ParseError{std::move(kind), std::move(message)};
}

}  // namespace dataflow
