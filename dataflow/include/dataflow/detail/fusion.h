// Compile-time fusion of stateless operators. A Pipe<In, Ops...> is a chain of operator objects
// applied to one record at a time by continuation passing: each operator calls the next one
// directly, so after inlining a map -> filter -> map chain is one loop body with no virtual call,
// no intermediate vector and no allocation per record.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/result.h"
#include "dataflow/source.h"

namespace dataflow::detail {

// Per-chunk state shared by the operators of a pipe: where the chunk comes from and where its
// dead letters go. Owned by one task; never shared between threads.
struct ChunkContext {
  const PartitionId* partition = nullptr;
  std::vector<DeadLetter>* deadLetters = nullptr;
};

// Fills the source position and raw bytes of a dead letter from the record that failed.
template <class R>
void describeRecord(const R& record, const PartitionId& partition, DeadLetter& out) {
  out.topic = partition.topic;
  out.partition = partition.partition;
  if constexpr (requires { record.fillDeadLetter(out); }) {
    record.fillDeadLetter(out);
  } else {
    if constexpr (SourcePosition<R>) {
      out.topic = std::string(record.topic);
      out.partition = record.partition;
      out.offset = record.offset;
    }
    if constexpr (std::is_convertible_v<const R&, std::string_view>) {
      out.payload = std::string(std::string_view(record));
      out.hasPayload = true;
    }
  }
}

template <class F>
struct MapOp {
  static constexpr std::string_view kName = "Map";
  F fn;
  template <class X, class K>
  void operator()(X&& x, ChunkContext&, K&& next) const {
    next(std::invoke(fn, std::forward<X>(x)));
  }
};

template <class F>
struct FilterOp {
  static constexpr std::string_view kName = "Filter";
  F fn;
  template <class X, class K>
  void operator()(X&& x, ChunkContext&, K&& next) const {
    if (std::invoke(fn, std::as_const(x))) next(std::forward<X>(x));
  }
};

template <class F>
struct FlatMapOp {
  static constexpr std::string_view kName = "FlatMap";
  F fn;
  template <class X, class K>
  void operator()(X&& x, ChunkContext&, K&& next) const {
    for (auto&& y : std::invoke(fn, std::forward<X>(x))) next(std::forward<decltype(y)>(y));
  }
};

template <class F>
struct ParseOp {
  static constexpr std::string_view kName = "Parse";
  F fn;
  template <class X, class K>
  void operator()(X&& x, ChunkContext& ctx, K&& next) const {
    auto result = std::invoke(fn, std::as_const(x));
    if (result.ok()) {
      next(std::move(result).value());
      return;
    }
    DeadLetter& letter = ctx.deadLetters->emplace_back();
    describeRecord(x, *ctx.partition, letter);
    ParseError error = std::move(result).error();
    letter.errorKind = std::move(error.kind);
    letter.errorMessage = std::move(error.message);
  }
};

template <class Op>
inline constexpr bool kIsParseOp = false;
template <class F>
inline constexpr bool kIsParseOp<ParseOp<F>> = true;

// A chain of operators from In. Empty Ops is the identity.
template <class In, class... Ops>
struct Pipe {
  using input_type = In;
  static constexpr bool kIdentity = sizeof...(Ops) == 0;
  static constexpr bool kFallible = (kIsParseOp<Ops> || ...);

  std::tuple<Ops...> ops;

  template <class Op>
  Pipe<In, Ops..., Op> append(Op op) const {
    return Pipe<In, Ops..., Op>{std::tuple_cat(ops, std::make_tuple(std::move(op)))};
  }

  // Applies the chain to one record; `emit` receives each output record.
  template <class Emit>
  void run(const In& record, ChunkContext& ctx, Emit& emit) const {
    step<0>(record, ctx, emit);
  }

  static std::vector<std::string> names() { return {std::string(Ops::kName)...}; }

 private:
  template <size_t I, class X, class Emit>
  void step(X&& x, ChunkContext& ctx, Emit& emit) const {
    if constexpr (I == sizeof...(Ops)) {
      emit(std::forward<X>(x));
    } else {
      std::get<I>(ops)(std::forward<X>(x), ctx, [&](auto&& y) {
        step<I + 1>(std::forward<decltype(y)>(y), ctx, emit);
      });
    }
  }
};

}  // namespace dataflow::detail
