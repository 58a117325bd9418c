// Aggregate functions for KeyedStream::agg, evaluated incrementally: each key keeps an
// accumulator in state, every record of the key is added to it, and the output row carries
// result(accumulator). Everything is resolved at compile time: no virtual call per record.
//
//   keyed.agg(dataflow::count(), dataflow::sum(&Order::cents), dataflow::avg(&Order::cents))
//     -> rows of KeyValue<Key, std::tuple<int64_t, int64_t, double>>
//
// An aggregate function A over records of type T provides
//   template <class T> Acc init() const;          the empty accumulator
//   template <class T> void add(Acc&, const T&) const;
//   Out result(const Acc&) const;
//   static constexpr const char* kName;           for explain()
// and its accumulator must be Checkpointable (state.h).
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "dataflow/state.h"

namespace dataflow {

// A key and its value: the rows of an aggregation.
template <class K, class V>
struct KeyValue {
  K key;
  V value;
  bool operator==(const KeyValue&) const = default;
};

namespace agg {

struct Count {
  static constexpr const char* kName = "count";
  template <class T>
  int64_t init() const { return 0; }
  template <class T>
  void add(int64_t& acc, const T&) const { ++acc; }
  int64_t result(int64_t acc) const { return acc; }
  void merge(int64_t& acc, int64_t other) const { acc += other; }
  template <class T>
  void retract(int64_t& acc, const T&) const { --acc; }
};

// Integers sum into int64_t, floating-point values into double.
template <class F>
struct Sum {
  static constexpr const char* kName = "sum";
  F fn;
  template <class T>
  auto init() const {
    using V = std::decay_t<std::invoke_result_t<const F&, const T&>>;
    static_assert(std::is_arithmetic_v<V>, "sum(fn): fn must return a number");
    if constexpr (std::is_floating_point_v<V>) return 0.0; else return int64_t{0};
  }
  template <class T, class Acc>
  void add(Acc& acc, const T& row) const { acc += static_cast<Acc>(std::invoke(fn, row)); }
  template <class Acc>
  Acc result(const Acc& acc) const { return acc; }
  template <class Acc>
  void merge(Acc& acc, const Acc& other) const { acc += other; }
  // Exact for integers; a floating-point sum keeps the rounding of every step.
  template <class T, class Acc>
  void retract(Acc& acc, const T& row) const { acc -= static_cast<Acc>(std::invoke(fn, row)); }
};

// Min and Max keep {seen, value}; a key always has a value (it exists because a record arrived).
template <class F, bool kMax>
struct Extreme {
  static constexpr const char* kName = kMax ? "max" : "min";
  F fn;
  template <class T>
  auto init() const {
    using V = std::decay_t<std::invoke_result_t<const F&, const T&>>;
    static_assert(std::totally_ordered<V>, "min/max(fn): fn must return an ordered value");
    return std::pair<bool, V>{false, V{}};
  }
  template <class T, class Acc>
  void add(Acc& acc, const T& row) const {
    auto v = std::invoke(fn, row);
    if (!acc.first || (kMax ? acc.second < v : v < acc.second)) acc = {true, std::move(v)};
  }
  template <class Acc>
  auto result(const Acc& acc) const { return acc.second; }
  template <class Acc>
  void merge(Acc& acc, const Acc& other) const {
    if (other.first && (!acc.first || (kMax ? acc.second < other.second : other.second < acc.second))) acc = other;
  }
};

template <class F>
struct Avg {
  static constexpr const char* kName = "avg";
  F fn;
  template <class T>
  std::pair<double, int64_t> init() const { return {0.0, 0}; }
  template <class T>
  void add(std::pair<double, int64_t>& acc, const T& row) const {
    acc.first += static_cast<double>(std::invoke(fn, row));
    ++acc.second;
  }
  double result(const std::pair<double, int64_t>& acc) const {
    return acc.second ? acc.first / static_cast<double>(acc.second) : 0.0;
  }
  void merge(std::pair<double, int64_t>& acc, const std::pair<double, int64_t>& other) const {
    acc.first += other.first;
    acc.second += other.second;
  }
  template <class T>
  void retract(std::pair<double, int64_t>& acc, const T& row) const {
    acc.first -= static_cast<double>(std::invoke(fn, row));
    --acc.second;
  }
};

// Min or max under retraction (table aggregations, table.h): the group's values with their
// multiplicities, sorted, so that retracting the current extreme reveals the next one exactly.
// Memory grows with the distinct values of a group; a group with one value (many groups have one
// row) keeps it inline, without an allocation.
template <class F, bool kMax>
struct RetractableExtreme {
  static constexpr const char* kName = kMax ? "max" : "min";
  F fn;
  template <class T>
  auto init() const {
    using V = std::decay_t<std::invoke_result_t<const F&, const T&>>;
    static_assert(std::totally_ordered<V>, "min/max(fn): fn must return an ordered value");
    return absl::InlinedVector<std::pair<V, int64_t>, 1>{};
  }
  template <class T, class Acc>
  void add(Acc& acc, const T& row) const {
    auto v = std::invoke(fn, row);
    auto it = std::lower_bound(acc.begin(), acc.end(), v, [](const auto& e, const auto& x) { return e.first < x; });
    if (it != acc.end() && !(v < it->first)) {
      ++it->second;
    } else {
      acc.insert(it, {std::move(v), 1});
    }
  }
  template <class T, class Acc>
  void retract(Acc& acc, const T& row) const {
    auto v = std::invoke(fn, row);
    auto it = std::lower_bound(acc.begin(), acc.end(), v, [](const auto& e, const auto& x) { return e.first < x; });
    if (it == acc.end() || v < it->first) return;  // never added: nothing to take back
    if (--it->second == 0) acc.erase(it);
  }
  template <class Acc>
  auto result(const Acc& acc) const {
    using V = typename Acc::value_type::first_type;
    if (acc.empty()) return V{};
    return kMax ? acc.back().first : acc.front().first;
  }
};

// A user-defined accumulator: init() -> Acc, add(Acc&, const T&), and optionally finish(const
// Acc&) -> Out (without it the output is the accumulator) and merge(Acc&, const Acc&) (needed by
// session windows, which merge sessions).
template <class Init, class Add, class Finish, class Merge = std::nullptr_t>
struct Custom {
  static constexpr const char* kName = "aggregate";
  Init initFn;
  Add addFn;
  Finish finishFn;
  Merge mergeFn = nullptr;
  template <class Acc>
  void merge(Acc& acc, const Acc& other) const
    requires(!std::is_same_v<Merge, std::nullptr_t>)
  {
    std::invoke(mergeFn, acc, other);
  }
  template <class T>
  auto init() const { return std::invoke(initFn); }
  template <class T, class Acc>
  void add(Acc& acc, const T& row) const { std::invoke(addFn, acc, row); }
  template <class Acc>
  auto result(const Acc& acc) const {
    if constexpr (std::is_same_v<Finish, std::nullptr_t>) return acc;
    else return std::invoke(finishFn, acc);
  }
};

// Several aggregates in one pass: the accumulator and the result are tuples.
template <class... As>
struct Multi {
  static constexpr const char* kName = "multi";
  std::tuple<As...> aggs;
  template <class T>
  auto init() const {
    return std::apply([](const auto&... a) { return std::tuple{a.template init<T>()...}; }, aggs);
  }
  template <class T, class Acc>
  void add(Acc& acc, const T& row) const {
    addEach<T>(acc, row, std::index_sequence_for<As...>{});
  }
  template <class Acc>
  auto result(const Acc& acc) const {
    return resultEach(acc, std::index_sequence_for<As...>{});
  }
  template <class Acc>
  void merge(Acc& acc, const Acc& other) const {
    mergeEach(acc, other, std::index_sequence_for<As...>{});
  }
  template <class T, class Acc>
  void retract(Acc& acc, const T& row) const {
    retractEach<T>(acc, row, std::index_sequence_for<As...>{});
  }
  std::string names() const {
    std::string out;
    std::apply([&](const auto&... a) { ((out += (out.empty() ? "" : ", ") + std::string(a.kName)), ...); }, aggs);
    return out;
  }

 private:
  template <class T, class Acc, size_t... I>
  void addEach(Acc& acc, const T& row, std::index_sequence<I...>) const {
    (std::get<I>(aggs).template add<T>(std::get<I>(acc), row), ...);
  }
  template <class T, class Acc, size_t... I>
  void retractEach(Acc& acc, const T& row, std::index_sequence<I...>) const {
    (std::get<I>(aggs).template retract<T>(std::get<I>(acc), row), ...);
  }
  template <class Acc, size_t... I>
  void mergeEach(Acc& acc, const Acc& other, std::index_sequence<I...>) const {
    (std::get<I>(aggs).merge(std::get<I>(acc), std::get<I>(other)), ...);
  }
  template <class Acc, size_t... I>
  auto resultEach(const Acc& acc, std::index_sequence<I...>) const {
    return std::tuple{std::get<I>(aggs).result(std::get<I>(acc))...};
  }
};

// The form of aggregate A that a table aggregation uses (table.h): min and max become
// RetractableExtreme, several aggregates map each, the others retract as they are.
template <class A>
struct ForTable {
  using type = A;
  static A make(A a) { return a; }
};
template <class F, bool kMax>
struct ForTable<Extreme<F, kMax>> {
  using type = RetractableExtreme<F, kMax>;
  static type make(Extreme<F, kMax> a) { return {std::move(a.fn)}; }
};
template <class... As>
struct ForTable<Multi<As...>> {
  using type = Multi<typename ForTable<As>::type...>;
  static type make(Multi<As...> m) {
    return std::apply([](auto&... a) { return type{std::tuple{ForTable<std::decay_t<decltype(a)>>::make(std::move(a))...}}; },
                      m.aggs);
  }
};

// The accumulator and output types of aggregate A over records of T.
template <class A, class T>
using AccOf = decltype(std::declval<const A&>().template init<T>());
template <class A, class T>
using OutOf = decltype(std::declval<const A&>().result(std::declval<const AccOf<A, T>&>()));

}  // namespace agg

// An aggregate function over records of T (see the top of this file).
template <class A, class T>
concept AggregateFunction = requires(const A& a, agg::AccOf<A, T>& acc, const T& row) {
  a.template add<T>(acc, row);
  a.result(acc);
  { A::kName } -> std::convertible_to<const char*>;
} && Checkpointable<agg::AccOf<A, T>>;

inline agg::Count count() { return {}; }
template <class F>
agg::Sum<F> sum(F fn) { return {std::move(fn)}; }
template <class F>
agg::Extreme<F, false> min(F fn) { return {std::move(fn)}; }
template <class F>
agg::Extreme<F, true> max(F fn) { return {std::move(fn)}; }
template <class F>
agg::Avg<F> avg(F fn) { return {std::move(fn)}; }
// A user-defined aggregate: `init()` returns the empty accumulator, `add(acc, row)` folds a row in,
// `finish(acc)` (optional) gives the output value.
template <class Init, class Add>
agg::Custom<Init, Add, std::nullptr_t> aggregate(Init init, Add add) {
  return {std::move(init), std::move(add), nullptr};
}
template <class Init, class Add, class Finish>
agg::Custom<Init, Add, Finish> aggregate(Init init, Add add, Finish finish) {
  return {std::move(init), std::move(add), std::move(finish)};
}
// With `merge(acc, other)`, which folds one accumulator into another (session windows).
template <class Init, class Add, class Finish, class Merge>
agg::Custom<Init, Add, Finish, Merge> aggregate(Init init, Add add, Finish finish, Merge merge) {
  return {std::move(init), std::move(add), std::move(finish), std::move(merge)};
}

// An aggregate that can take a record back out of its accumulator (table aggregations: an
// updated or deleted row retracts what it added).
template <class A, class T>
concept RetractableAggregate = AggregateFunction<A, T> && requires(const A& a, agg::AccOf<A, T>& acc, const T& row) {
  a.template retract<T>(acc, row);
};

// An aggregate whose accumulators can be merged (what session windows need).
template <class A, class T>
concept MergeableAggregate = AggregateFunction<A, T> && requires(const A& a, agg::AccOf<A, T>& acc) { a.merge(acc, acc); };

}  // namespace dataflow
