// The typed, fluent query API: Stream<T> and DataStreamWriter<T>.
//
// A whole query, from an in-memory source to a foreachBatch sink:
//
//   dataflow::Session session({.workerThreads = 2});
//   auto orders = std::make_shared<dataflow::MemoryStream<std::string>>("orders");
//   auto query = session.readStream(orders)
//       .parse([](const std::string& json) -> dataflow::Result<Order> {
//         if (json.empty()) return dataflow::parseError("empty", "empty payload");
//         return Order::fromJson(json);
//       })
//       .filter([](const Order& o) { return o.amount > 0; })
//       .map([](const Order& o) { return Row{o.id, o.amount * 100}; })
//       .latestByKey([](const Row& r) { return r.id; }, [](const Row& r) { return r.version; })
//       .deadLetters([](std::span<const dataflow::DeadLetter> bad, const dataflow::BatchInfo&) {
//         for (const auto& d : bad) std::cerr << d.errorKind << ": " << d.payload << "\n";
//       })
//       .writeStream()
//       .queryName("orders")
//       .trigger(dataflow::Trigger::processingTime(std::chrono::milliseconds(100)))
//       .checkpointLocation("/var/lib/app/checkpoints/orders")
//       .foreachBatch([](const dataflow::Batch<Row>& batch, const dataflow::BatchInfo& info) {
//         for (const Row& r : batch.rows()) upsert(r, info.batchId);
//       })
//       .start();
//   query.awaitTermination();
//
// Each method returns a new handle; handles are cheap values over an immutable plan. Consecutive
// map/filter/flatMap/parse steps are fused into one loop at compile time (the second template
// parameter carries the chain); union, latestByKey and the sink are batch boundaries. A lambda of
// the wrong type fails to compile at the call site with the concept it violates.
#pragma once

#include <concepts>
#include <filesystem>
#include <functional>
#include <memory>
#include <ranges>
#include <string>
#include <type_traits>
#include <utility>

#include "dataflow/aggregates.h"
#include "dataflow/batch.h"
#include "dataflow/checkpoint.h"
#include "dataflow/detail/fusion.h"
#include "dataflow/detail/exchanged_join_operators.h"
#include "dataflow/detail/join_operators.h"
#include "dataflow/detail/micro_batch_execution.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/plan.h"
#include "dataflow/detail/stateful_operators.h"
#include "dataflow/error.h"
#include "dataflow/exchange.h"
#include "dataflow/join.h"
#include "dataflow/query.h"
#include "dataflow/query_options.h"
#include "dataflow/result.h"
#include "dataflow/sink.h"
#include "dataflow/source.h"
#include "dataflow/state.h"
#include "dataflow/trigger.h"
#include "dataflow/window.h"

namespace dataflow {

template <class T>
inline constexpr bool kIsResult = false;
template <class T>
inline constexpr bool kIsResult<Result<T>> = true;

// A per-record transformation T -> U (U not void).
template <class F, class T>
concept MapFunction = std::invocable<const F&, const T&> &&
                      !std::is_void_v<std::invoke_result_t<const F&, const T&>>;
// A per-record test T -> bool.
template <class F, class T>
concept FilterPredicate = std::predicate<const F&, const T&>;
// T -> a range of U (zero or more records per input record).
template <class F, class T>
concept FlatMapFunction = std::invocable<const F&, const T&> &&
                          std::ranges::input_range<std::invoke_result_t<const F&, const T&>>;
// T -> Result<U>: a value, or a ParseError that becomes a dead letter.
template <class F, class T>
concept ParseFunction = std::invocable<const F&, const T&> &&
                        kIsResult<std::decay_t<std::invoke_result_t<const F&, const T&>>>;
// T -> a hashable, equality-comparable key.
template <class F, class T>
concept KeyFunction = std::invocable<const F&, const T&> &&
                      std::equality_comparable<std::decay_t<std::invoke_result_t<const F&, const T&>>>;
// T -> a totally ordered version (e.g. the source LSN).
template <class F, class T>
concept VersionFunction = std::invocable<const F&, const T&> &&
                          std::totally_ordered<std::decay_t<std::invoke_result_t<const F&, const T&>>>;
// T -> a key that state can be kept under: hashable (absl::Hash), comparable and Checkpointable.
template <class F, class T>
concept StateKeyFunction = KeyFunction<F, T> && Checkpointable<std::decay_t<std::invoke_result_t<const F&, const T&>>>;
// (const Batch<T>&, const BatchInfo&) -> anything.
template <class F, class T>
concept BatchFunction = std::invocable<F&, const Batch<T>&, const BatchInfo&>;

namespace detail {

// Turns logical nodes into runtime operators, deduplicating sources.
class Planner {
 public:
  size_t sourceIndex(const std::shared_ptr<Source>& source) {
    for (size_t i = 0; i < sources_.size(); ++i) {
      if (sources_[i] == source) return i;
    }
    sources_.push_back(source);
    return sources_.size() - 1;
  }
  std::vector<std::shared_ptr<Source>> takeSources() { return std::move(sources_); }

  // Set by the writer before building: what stateful operators emit.
  OutputMode outputMode = OutputMode::kAppend;
  // Registered while building: stateful operators in planning order, watermark delays by index.
  std::vector<StatefulOperator*> stateful;
  std::vector<int64_t> watermarkDelaysMs;
  bool hasAggregation = false;
  // Set by the writer: the query's name and exchange (QueryOptions::exchange).
  std::string queryName;
  std::shared_ptr<Exchange> exchange;

  // The channel of the next regrouping that goes through the exchange, named after the query and
  // the regrouping's place in the plan (stable across restarts of the same query).
  std::shared_ptr<ExchangeChannel> exchangeChannel(const std::string& what) {
    if (queryName.empty()) {
      throw ConfigurationError("a query with an exchange needs a name (queryName(...)): its logs are named after it");
    }
    return exchange->channel(queryName + "-" + what + "-" + std::to_string(++exchanges_));
  }

 private:
  std::vector<std::shared_ptr<Source>> sources_;
  int exchanges_ = 0;
};

// A batch boundary of element type T: its logical node and how to build its operator.
template <class T>
struct Producer {
  LogicalNodePtr node;
  std::function<std::unique_ptr<BatchOperator<T>>(Planner&)> build;
};

// Where the dead letters of fallible steps go.
struct Routing {
  bool fallible = false;          // a parse step exists upstream
  DeadLetterHandler handler;      // set by Stream::deadLetters
  bool handledBySink = false;     // set by Stream::deadLettersHandledBySink
  bool routed() const { return !fallible || handler || handledBySink; }
};

}  // namespace detail

template <class T>
class DataStreamWriter;
template <class T, class KeyFn, class Windowing>
class KeyedStream;
template <class K, class V>
class Table;
template <class K, class V, class GroupFn>
class GroupedTable;

template <class T, class P = detail::Pipe<T>>
class Stream {
  using In = typename P::input_type;
  template <class U, class Q>
  friend class Stream;
  template <class U, class KeyFn, class Windowing>
  friend class KeyedStream;
  template <class K, class V>
  friend class Table;
  template <class K, class V, class GroupFn>
  friend class GroupedTable;

 public:
  using value_type = T;

  Stream(std::shared_ptr<detail::SessionState> session, detail::Producer<In> input, P pipe,
         detail::Routing routing)
      : session_(std::move(session)), input_(std::move(input)), pipe_(std::move(pipe)),
        routing_(std::move(routing)) {}

  // Any chain converts to a plain Stream<T> (its steps end in a fused stage).
  operator Stream<T>() const  // NOLINT: implicit by design, like a view
    requires(!std::is_same_v<P, detail::Pipe<T>>)
  {
    return Stream<T>(session_, materialize(), detail::Pipe<T>{}, routing_);
  }

  // One output record per input record.
  template <class F>
    requires MapFunction<F, T>
  auto map(F fn) const {
    using U = std::decay_t<std::invoke_result_t<const F&, const T&>>;
    return next<U>(detail::MapOp<F>{std::move(fn)}, false);
  }

  // Keeps the records for which `fn` returns true.
  template <class F>
    requires FilterPredicate<F, T>
  auto filter(F fn) const {
    return next<T>(detail::FilterOp<F>{std::move(fn)}, false);
  }

  // Zero or more output records per input record; `fn` returns a range.
  template <class F>
    requires FlatMapFunction<F, T>
  auto flatMap(F fn) const {
    using U = std::decay_t<std::ranges::range_value_t<std::invoke_result_t<const F&, const T&>>>;
    return next<U>(detail::FlatMapOp<F>{std::move(fn)}, false);
  }

  // Like map, but `fn` may fail with a ParseError: the record then becomes a dead letter, with its
  // raw bytes and source position where the record type knows them. Dead letters must be routed
  // (deadLetters() or deadLettersHandledBySink()) or start() refuses the query.
  template <class F>
    requires ParseFunction<F, T>
  auto parse(F fn) const {
    using U = typename std::decay_t<std::invoke_result_t<const F&, const T&>>::value_type;
    return next<U>(detail::ParseOp<F>{std::move(fn)}, true);
  }

  // Calls `handler` with the batch's dead letters before the sink sees the batch, within the
  // same attempt (so a failure in either replays both).
  Stream deadLetters(DeadLetterHandler handler) const {
    if (!handler) throw ConfigurationError("deadLetters: the handler is empty");
    Stream copy = *this;
    copy.routing_.handler = std::move(handler);
    return copy;
  }

  // Declares that the sink writes Batch::deadLetters() itself (e.g. in the same transaction as
  // the rows).
  Stream deadLettersHandledBySink() const {
    Stream copy = *this;
    copy.routing_.handledBySink = true;
    return copy;
  }

  // The records of both streams (Spark's union; `union` is a C++ keyword).
  template <class Q>
  Stream<T> unionWith(const Stream<T, Q>& other) const {
    if (routing_.handler && other.routing_.handler) {
      throw ConfigurationError("unionWith: both inputs route dead letters; route them once, after the union");
    }
    auto left = materialize();
    auto right = other.materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kUnion, "Union", {}, {left.node, right.node}, false});
    detail::Producer<T> out{node, [l = left.build, r = right.build](detail::Planner& planner) {
                              auto lo = l(planner);
                              auto ro = r(planner);
                              return std::unique_ptr<detail::BatchOperator<T>>(
                                  new detail::UnionOperator<T>(std::move(lo), std::move(ro)));
                            }};
    detail::Routing routing;
    routing.fallible = routing_.fallible || other.routing_.fallible;
    routing.handler = routing_.handler ? routing_.handler : other.routing_.handler;
    routing.handledBySink = routing_.handledBySink || other.routing_.handledBySink;
    return Stream<T>(session_, std::move(out), detail::Pipe<T>{}, std::move(routing));
  }

  // CDC compaction: within each batch keep only the newest record per key (greatest version;
  // the later record on a tie).
  template <class K, class V>
    requires KeyFunction<K, T> && VersionFunction<V, T>
  Stream<T> latestByKey(K key, V version) const {
    auto input = materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kLatestByKey, "LatestByKey", {}, {input.node}, false});
    detail::Producer<T> out{
        node, [in = input.build, key = std::move(key), version = std::move(version)](
                  detail::Planner& planner) {
          return std::unique_ptr<detail::BatchOperator<T>>(
              new detail::LatestByKeyOperator<T, K, V>(in(planner), key, version));
        }};
    return Stream<T>(session_, std::move(out), detail::Pipe<T>{}, routing_);
  }

  // Declares the event time of the records and how late they may arrive: after each batch the
  // watermark becomes max(event time seen) - delay (never lower than before), and the next batch
  // runs with it. Stateful operators downstream use it to finalise windows, evict state and drop
  // records that arrive too late. With several, the query's watermark is their minimum.
  template <class F>
    requires EventTimeFunction<F, T>
  Stream<T> withWatermark(F eventTime, std::chrono::milliseconds delay) const {
    if (delay.count() < 0) throw ConfigurationError("withWatermark: the delay must not be negative");
    auto input = materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kWatermark, "EventTimeWatermark delay=" + std::to_string(delay.count()) + " ms",
        {}, {input.node}, false});
    detail::Producer<T> out{node, [in = input.build, f = std::move(eventTime), d = delay.count()](detail::Planner& planner) {
                              auto i = in(planner);
                              size_t index = planner.watermarkDelaysMs.size();
                              planner.watermarkDelaysMs.push_back(d);
                              return std::unique_ptr<detail::BatchOperator<T>>(
                                  new detail::WatermarkOperator<T, F>(std::move(i), f, index));
                            }};
    return Stream<T>(session_, std::move(out), detail::Pipe<T>{}, routing_);
  }

  // Groups the records by key for a stateful aggregation (Spark's groupByKey). State for a key
  // lives with the source partition its records arrive on.
  template <class K>
    requires StateKeyFunction<K, T>
  KeyedStream<T, K, detail::NoWindow> groupByKey(K key) const {
    return KeyedStream<T, K, detail::NoWindow>(session_, materialize(), routing_, std::move(key), {}, "");
  }

  // Reads this stream as the changelog of a table (table.h): per key(record) the row of the
  // newest version(record); row(record) gives the row, or std::nullopt for a delete (also
  // row(record, const Row* previous), to complete the row from the key's previous one).
  template <class K, class Ver, class R>
    requires StateKeyFunction<K, T> && VersionFunction<Ver, T>
  auto asTable(K key, Ver version, R row) const;

  // Keeps the first record of each key, across batches; the keys are kept forever (Spark's
  // dropDuplicates without an event-time column).
  template <class K>
    requires StateKeyFunction<K, T>
  Stream<T> dropDuplicates(K key) const {
    return dedup(std::move(key), detail::NoWindow{}, "Deduplicate");
  }

  // Keeps the first record of each key among those within the watermark: a key is remembered
  // until the watermark reaches its first record's event time + the watermark's delay; records
  // older than the watermark are late and dropped (Spark's dropDuplicatesWithinWatermark). Needs
  // withWatermark() upstream.
  template <class K, class F>
    requires StateKeyFunction<K, T> && EventTimeFunction<F, T>
  Stream<T> dropDuplicatesWithinWatermark(K key, F eventTime) const {
    return dedup(std::move(key), std::move(eventTime), "DeduplicateWithinWatermark");
  }

  // Joins every record with the rows of `table` whose key equals its own: `combine(record,
  // &row)` for each match, and for a left outer join `combine(record, nullptr)` when there is
  // none. No state: the table is indexed once (a snapshot) or every batch (perBatch).
  template <class R, class LK, class RK, class F>
    requires KeyFunction<LK, T> && KeyFunction<RK, R> && std::invocable<const F&, const T&, const R*>
  auto joinStatic(StaticTable<R> table, LK leftKey, RK rightKey, F combine, JoinType type = JoinType::kInner) const {
    using Out = std::decay_t<std::invoke_result_t<const F&, const T&, const R*>>;
    auto input = materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kStateful,
        std::string("BroadcastHashJoin [") + toString(type) + ", static table" +
            (table.reloads() ? " loaded per batch" : " snapshot") + "]",
        {}, {input.node}, false});
    detail::Producer<Out> out{node, [in = input.build, table, leftKey, rightKey, combine, type](detail::Planner& planner) {
                                return std::unique_ptr<detail::BatchOperator<Out>>(
                                    new detail::StaticJoinOperator<T, R, LK, RK, F>(in(planner), table, leftKey, rightKey,
                                                                                    combine, type));
                              }};
    return Stream<Out>(session_, std::move(out), detail::Pipe<Out>{}, routing_);
  }

  // Joins this stream with another on equal keys (symmetric hash join; see join.h): `combine(left,
  // &right)` per match; for a left outer join `combine(left, nullptr)` once the watermark shows a
  // left row can no longer match. `range` bounds right.time - left.time and lets the watermark
  // evict state; a left outer join needs one, and withWatermark() upstream. Output mode: append.
  // With the query's exchange both streams are regrouped by key through it (join.h), and the
  // query can scale out.
  template <class R, class Q, class LK, class RK, class F, class TR = NoTimeRange>
    requires StateKeyFunction<LK, T> && StateKeyFunction<RK, R> && std::invocable<const F&, const T&, const R*> &&
             std::same_as<std::decay_t<std::invoke_result_t<const LK&, const T&>>,
                          std::decay_t<std::invoke_result_t<const RK&, const R&>>>
  auto join(const Stream<R, Q>& right, LK leftKey, RK rightKey, F combine, JoinType type = JoinType::kInner,
            TR range = {}) const {
    static_assert(Checkpointable<T> && Checkpointable<R>,
                  "stream-stream join: both sides' rows are kept in state, so both row types need a StateCodec");
    constexpr bool kTimed = !std::is_same_v<TR, NoTimeRange>;
    if (type == JoinType::kLeftOuter && !kTimed) {
      throw ConfigurationError("a left outer stream-stream join needs a time range (timeRange(...)) and a watermark: "
                               "without them a left row could still match at any time and would never be emitted");
    }
    if constexpr (kTimed) {
      if (range.lower > range.upper) throw ConfigurationError("join time range: lower bound above upper bound");
    }
    using Out = std::decay_t<std::invoke_result_t<const F&, const T&, const R*>>;
    auto lin = materialize();
    auto rin = right.materialize();
    std::string label = std::string("StreamingSymmetricHashJoin [") + toString(type);
    if constexpr (kTimed) {
      label += ", right.time - left.time in [" + std::to_string(range.lower.count()) + ", " +
               std::to_string(range.upper.count()) + "] ms";
    } else {
      label += ", no time bound: state is kept forever";
    }
    label += "; through the query's exchange by key when it has one, else one partition]";
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kStateful, std::move(label), {}, {lin.node, rin.node}, false});
    detail::Producer<Out> out{
        node, [l = lin.build, r = rin.build, leftKey, rightKey, combine, type, range](detail::Planner& planner) {
          if (planner.outputMode != OutputMode::kAppend) {
            throw ConfigurationError("stream-stream joins support only the append output mode");
          }
          if (!planner.exchange) {
            auto lo = l(planner);
            auto ro = r(planner);
            if (type == JoinType::kLeftOuter && planner.watermarkDelaysMs.empty()) {
              throw ConfigurationError("a left outer stream-stream join needs withWatermark(...) upstream");
            }
            auto op = std::make_unique<detail::StreamJoinOperator<T, R, LK, RK, F, TR>>(
                std::move(lo), std::move(ro), leftKey, rightKey, combine, type, range);
            planner.stateful.push_back(op.get());
            return std::unique_ptr<detail::BatchOperator<Out>>(op.release());
          }
          // Through the exchange (exchanged_join_operators.h): both sides by join key into one log.
          auto channel = planner.exchangeChannel("join");
          auto readBack = channel->source();
          size_t index = planner.sourceIndex(readBack);
          // Each side's watermark delay (the largest, if it has several watermarks upstream).
          auto delayOf = [&](size_t from) -> std::optional<int64_t> {
            const auto& d = planner.watermarkDelaysMs;
            if (from == d.size()) return std::nullopt;
            return *std::max_element(d.begin() + static_cast<std::ptrdiff_t>(from), d.end());
          };
          detail::ExchangedJoinClockOptions clock;
          size_t before = planner.watermarkDelaysMs.size();
          auto lo = l(planner);
          clock.leftDelayMs = delayOf(before);
          before = planner.watermarkDelaysMs.size();
          auto ro = r(planner);
          clock.rightDelayMs = delayOf(before);
          if (type == JoinType::kLeftOuter && !clock.leftDelayMs && !clock.rightDelayMs) {
            throw ConfigurationError("a left outer stream-stream join needs withWatermark(...) upstream");
          }
          if (!lo->trackOrigins() || !ro->trackOrigins()) {
            throw ConfigurationError(
                "a stream-stream join through an exchange tells a row sent again from a new one by the source offset "
                "it was made from: both sides must be made by stateless steps (parse, map, filter, flatMap, union, "
                "withWatermark) from sources whose records carry offsets, not by an aggregation or latestByKey");
          }
          using Send = detail::StreamJoinExchangeOperator<T, R, LK, RK, TR>;
          auto op = std::make_unique<detail::PartitionedStreamJoinOperator<T, R, LK, RK, F, TR>>(
              std::make_unique<Send>(std::move(lo), std::move(ro), leftKey, rightKey, range, channel,
                                     std::make_unique<detail::ScanOperator<LogRecord>>(readBack, index)),
              leftKey, rightKey, combine, type, range, clock);
          planner.stateful.push_back(op.get());
          return std::unique_ptr<detail::BatchOperator<Out>>(op.release());
        }};
    detail::Routing routing;
    routing.fallible = routing_.fallible || right.routing_.fallible;
    routing.handler = routing_.handler ? routing_.handler : right.routing_.handler;
    routing.handledBySink = routing_.handledBySink || right.routing_.handledBySink;
    return Stream<Out>(session_, std::move(out), detail::Pipe<Out>{}, std::move(routing));
  }

  DataStreamWriter<T> writeStream() const {
    return DataStreamWriter<T>(session_, materialize(), routing_);
  }

  // Shorthand for writeStream().foreachBatch(fn).
  template <class F>
    requires BatchFunction<F, T>
  DataStreamWriter<T> foreachBatch(F fn) const {
    return writeStream().foreachBatch(std::move(fn));
  }

  // The plan up to here.
  std::string explain() const { return detail::explainPlan(*materialize().node); }

 private:
  // A stateful step after this stream: `build(input operator, planner)` makes its operator.
  template <class U, class Build>
  Stream<U> statefulStep(std::string label, Build build) const {
    auto input = materialize();
    auto node = std::make_shared<detail::LogicalNode>(
        detail::LogicalNode{detail::LogicalNode::Kind::kStateful, std::move(label), {}, {input.node}, false});
    detail::Producer<U> out{node, [in = input.build, build = std::move(build)](detail::Planner& planner) {
                              return build(in(planner), planner);
                            }};
    return Stream<U>(session_, std::move(out), detail::Pipe<U>{}, routing_);
  }

  template <class K, class F>
  Stream<T> dedup(K key, F eventTime, const char* name) const {
    auto input = materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kStateful, std::string(name) + " [state: key -> " +
            (std::is_same_v<F, detail::NoWindow> ? "seen" : "expiry") + ", by source partition]",
        {}, {input.node}, false});
    detail::Producer<T> out{
        node, [in = input.build, key = std::move(key), f = std::move(eventTime), name](detail::Planner& planner) {
          auto i = in(planner);
          if (planner.outputMode == OutputMode::kComplete) {
            throw ConfigurationError(std::string(name) + " does not support the complete output mode (there is no "
                                     "aggregation to complete); use append or update");
          }
          int64_t expireAfter = 0;
          if constexpr (!std::is_same_v<F, detail::NoWindow>) {
            if (planner.watermarkDelaysMs.empty()) {
              throw ConfigurationError("dropDuplicatesWithinWatermark needs withWatermark(...) upstream: the "
                                       "watermark decides when a key is forgotten");
            }
            expireAfter = *std::max_element(planner.watermarkDelaysMs.begin(), planner.watermarkDelaysMs.end());
          }
          auto op = std::make_unique<detail::DedupOperator<T, K, F>>(std::move(i), key, f, expireAfter);
          planner.stateful.push_back(op.get());
          return std::unique_ptr<detail::BatchOperator<T>>(op.release());
        }};
    return Stream<T>(session_, std::move(out), detail::Pipe<T>{}, routing_);
  }

  template <class U, class Op>
  auto next(Op op, bool fallible) const {
    auto pipe = pipe_.append(std::move(op));
    detail::Routing routing = routing_;
    routing.fallible = routing.fallible || fallible;
    return Stream<U, decltype(pipe)>(session_, input_, std::move(pipe), std::move(routing));
  }

  detail::Producer<T> materialize() const {
    if constexpr (P::kIdentity) {
      return input_;
    } else {
      auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
          detail::LogicalNode::Kind::kFused, "", P::names(), {input_.node}, P::kFallible});
      return detail::Producer<T>{node, [in = input_.build, pipe = pipe_](detail::Planner& planner) {
                                   return std::unique_ptr<detail::BatchOperator<T>>(
                                       new detail::FusedOperator<T, P>(in(planner), pipe));
                                 }};
    }
  }

  std::shared_ptr<detail::SessionState> session_;
  detail::Producer<In> input_;
  P pipe_;
  detail::Routing routing_;
};

// Configures and starts a query (Spark's DataStreamWriter).
template <class T>
class DataStreamWriter {
 public:
  DataStreamWriter(std::shared_ptr<detail::SessionState> session, detail::Producer<T> input,
                   detail::Routing routing)
      : session_(std::move(session)), input_(std::move(input)), routing_(std::move(routing)) {}

  DataStreamWriter& queryName(std::string name) {
    options_.name = std::move(name);
    return *this;
  }
  DataStreamWriter& trigger(Trigger trigger) {
    options_.trigger = trigger;
    return *this;
  }
  DataStreamWriter& checkpoint(std::shared_ptr<CheckpointStore> store) {
    options_.checkpoint = std::move(store);
    return *this;
  }
  // Read and process the next batch while the sink writes the current one (QueryOptions).
  // What a stateful query writes each batch: append (default), update or complete.
  DataStreamWriter& outputMode(OutputMode mode) {
    options_.outputMode = mode;
    return *this;
  }
  // Late records become dead letters too (see QueryOptions::lateRecordsToDeadLetters).
  DataStreamWriter& lateRecordsToDeadLetters(bool on = true) {
    options_.lateRecordsToDeadLetters = on;
    return *this;
  }
  // Operators keep their working state in `backend` instead of memory (StateOptions::backend).
  DataStreamWriter& stateBackend(std::shared_ptr<StateBackend> backend) {
    options_.state.backend = std::move(backend);
    return *this;
  }
  // Table aggregations, table joins and stream-stream joins regroup their rows through
  // `exchange` (QueryOptions::exchange).
  DataStreamWriter& exchange(std::shared_ptr<Exchange> exchange) {
    options_.exchange = std::move(exchange);
    return *this;
  }
  DataStreamWriter& overlapBatches(bool on) {
    options_.overlapBatches = on;
    return *this;
  }
  // The first `batches` batches of a run are smaller (see QueryOptions::rampUpBatches).
  DataStreamWriter& rampUpBatches(int batches) {
    options_.rampUpBatches = batches;
    return *this;
  }
  // A directory checkpoint at `dir` (Spark's checkpointLocation).
  DataStreamWriter& checkpointLocation(const std::filesystem::path& dir) {
    options_.checkpoint = directoryCheckpoint(dir);
    return *this;
  }
  // Sets a QueryOptions field by key; unknown keys and bad values throw ConfigurationError.
  DataStreamWriter& option(const std::string& key, const std::string& value) {
    options_.set(key, value);
    return *this;
  }
  DataStreamWriter& options(const QueryOptions& options) {
    auto store = options_.checkpoint;
    options_ = options;
    if (!options_.checkpoint) options_.checkpoint = store;
    return *this;
  }
  DataStreamWriter& addListener(std::shared_ptr<QueryListener> listener) {
    options_.listeners.push_back(std::move(listener));
    return *this;
  }

  template <class F>
    requires BatchFunction<F, T>
  DataStreamWriter& foreachBatch(F fn) {
    sink_ = std::make_shared<ForeachBatchSink<T, F>>(std::move(fn));
    return *this;
  }
  DataStreamWriter& sink(std::shared_ptr<Sink<T>> sink) {
    sink_ = std::move(sink);
    return *this;
  }

  // The logical and physical plan of the query this writer would start.
  std::string explain() const { return detail::explainPlan(*sinkNode()); }

  // Validates the plan and the checkpoint, then starts the driver thread.
  StreamingQuery start() {
    auto execution = build();
    execution->start();
    return StreamingQuery(std::move(execution));
  }

  // Validates and builds the query without starting a thread (benchmarks and tests drive it with
  // runBatch()).
  std::shared_ptr<detail::MicroBatchExecution> build() {
    if (!sink_) throw ConfigurationError("writeStream: no sink; call foreachBatch(...) or sink(...)");
    if (options_.lateRecordsToDeadLetters && !routing_.handler && !routing_.handledBySink) {
      throw ConfigurationError("query '" + options_.name +
                               "': late records go to the dead letters (lateRecords=deadLetter), which are not routed; "
                               "call deadLetters(handler) or deadLettersHandledBySink() on the stream before writeStream()");
    }
    if (!routing_.routed()) {
      throw ConfigurationError(
          "query '" + options_.name +
          "': parse() errors are not routed; call deadLetters(handler) or "
          "deadLettersHandledBySink() on the stream before writeStream()");
    }
    detail::Planner planner;
    planner.outputMode = options_.outputMode;
    planner.queryName = options_.name;
    planner.exchange = options_.exchange;
    auto input = input_.build(planner);
    if (options_.outputMode == OutputMode::kComplete && !planner.hasAggregation) {
      throw ConfigurationError("query '" + options_.name +
                               "': the complete output mode needs an aggregation (groupByKey(...).agg(...)); "
                               "use append or update");
    }
    detail::PhysicalPlan plan;
    plan.root = std::make_unique<detail::SinkOperator<T>>(std::move(input), sink_, routing_.handler);
    plan.sources = planner.takeSources();
    plan.logical = sinkNode();
    for (auto* op : planner.stateful) op->routeLateRecords(options_.lateRecordsToDeadLetters);
    plan.stateful = std::move(planner.stateful);
    plan.watermarkDelaysMs = std::move(planner.watermarkDelaysMs);
    QueryOptions options = options_;
    if (!options.checkpoint) options.checkpoint = memoryCheckpoint();
    return std::make_shared<detail::MicroBatchExecution>(session_, std::move(plan), std::move(options));
  }

 private:
  detail::LogicalNodePtr sinkNode() const {
    std::string label = "WriteToStream " + (sink_ ? sink_->description() : std::string("<no sink>"));
    if (!options_.name.empty()) label += ", query=" + options_.name;
    label += ", trigger=" + options_.trigger.toString();
    label += std::string(", outputMode=") + toString(options_.outputMode);
    if (options_.exchange) label += ", exchange=" + options_.exchange->description();
    if (routing_.handler) label += ", deadLetters=handler";
    if (routing_.handledBySink) label += ", deadLetters=sink";
    return std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kSink, std::move(label), {}, {input_.node}, false});
  }

  std::shared_ptr<detail::SessionState> session_;
  detail::Producer<T> input_;
  detail::Routing routing_;
  QueryOptions options_;
  std::shared_ptr<Sink<T>> sink_;
};

}  // namespace dataflow

#include "dataflow/keyed_stream.h"
#include "dataflow/table.h"
