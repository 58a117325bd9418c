// KeyedStream: a stream grouped by key (Stream::groupByKey), optionally by event-time window too,
// on which stateful aggregations run. Each aggregation returns a Stream of KeyValue rows, which
// the writer's output mode turns into what the sink receives each batch:
//
//   auto perMinute = orders
//       .withWatermark(&Order::placedAtMs, std::chrono::seconds(30))
//       .groupByKey(&Order::customerId)
//       .window(dataflow::tumbling(std::chrono::minutes(1)), &Order::placedAtMs)
//       .agg(dataflow::count(), dataflow::sum(&Order::cents));
//   // Stream<KeyValue<Windowed<int64_t>, std::tuple<int64_t, int64_t>>>
//   perMinute.writeStream().outputMode(dataflow::OutputMode::kAppend).foreachBatch(...).start();
//
// Output modes (checked at start(), as Spark checks them):
//   append    windowed aggregations with a watermark: each window once, when the watermark passes
//             its end; refused for an aggregation without windows or without a watermark
//   update    the groups the batch changed; with windows and a watermark, state of windows the
//             watermark passed is dropped
//   complete  every group, every batch; state is never dropped
#pragma once

#include <string>
#include <utility>

#include "dataflow/aggregates.h"
#include "dataflow/detail/transform_with_state_operator.h"
#include "dataflow/stateful_processor.h"
#include "dataflow/stream.h"
#include "dataflow/window.h"

namespace dataflow {

template <class T, class KeyFn, class Windowing>
class KeyedStream {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  static constexpr bool kWindowed = !std::is_same_v<Windowing, detail::NoWindow>;
  static constexpr bool kSession = detail::kIsSessionWindows<Windowing>;

 public:
  KeyedStream(std::shared_ptr<detail::SessionState> session, detail::Producer<T> input, detail::Routing routing,
              KeyFn key, Windowing windowing, std::string windowLabel)
      : session_(std::move(session)), input_(std::move(input)), routing_(std::move(routing)),
        key_(std::move(key)), windowing_(std::move(windowing)), windowLabel_(std::move(windowLabel)) {}

  // Also groups by the event-time windows of `spec` each record falls in (its event time given by
  // `eventTime`); the rows' keys become Windowed<Key>.
  template <class F>
    requires EventTimeFunction<F, T>
  KeyedStream<T, KeyFn, detail::EventWindows<F>> window(WindowSpec spec, F eventTime) const
    requires(!kWindowed)
  {
    std::string label = spec.toString();
    return KeyedStream<T, KeyFn, detail::EventWindows<F>>(session_, input_, routing_, key_,
                                                          detail::EventWindows<F>{spec, std::move(eventTime)},
                                                          std::move(label));
  }

  // Groups by session windows instead (see SessionSpec): sessions of a key merge when a record
  // bridges them, so the aggregates must be mergeable (all built-in ones are; aggregate() takes a
  // merge function as its fourth argument).
  template <class F>
    requires EventTimeFunction<F, T>
  KeyedStream<T, KeyFn, detail::SessionWindows<F>> window(SessionSpec spec, F eventTime) const
    requires(!kWindowed)
  {
    std::string label = spec.toString();
    return KeyedStream<T, KeyFn, detail::SessionWindows<F>>(session_, input_, routing_, key_,
                                                            detail::SessionWindows<F>{spec, std::move(eventTime)},
                                                            std::move(label));
  }

  // Several aggregates in one pass over the records; the value is the tuple of their results (a
  // single aggregate gives its result alone).
  template <class... As>
    requires(sizeof...(As) > 0 && (AggregateFunction<As, T> && ...))
  auto agg(As... aggregates) const {
    if constexpr (sizeof...(As) == 1) {
      return aggregateWith((aggregates, ...), std::string((As::kName, ...)));
    } else {
      agg::Multi<As...> multi{std::tuple<As...>{std::move(aggregates)...}};
      std::string names = multi.names();
      return aggregateWith(std::move(multi), names);
    }
  }
  auto count() const { return agg(dataflow::count()); }
  template <class F>
  auto sum(F fn) const { return agg(dataflow::sum(std::move(fn))); }
  template <class F>
  auto min(F fn) const { return agg(dataflow::min(std::move(fn))); }
  template <class F>
  auto max(F fn) const { return agg(dataflow::max(std::move(fn))); }
  template <class F>
  auto avg(F fn) const { return agg(dataflow::avg(std::move(fn))); }
  // A user-defined accumulator (see dataflow::aggregate).
  template <class Init, class Add>
  auto aggregate(Init init, Add add) const { return agg(dataflow::aggregate(std::move(init), std::move(add))); }
  template <class Init, class Add, class Finish>
  auto aggregate(Init init, Add add, Finish finish) const {
    return agg(dataflow::aggregate(std::move(init), std::move(add), std::move(finish)));
  }

  // Arbitrary stateful processing (Spark 4's transformWithState): `factory()` makes one processor
  // per state partition (see stateful_processor.h). Rows are the processor's Output type. Output
  // modes append and update; event-time timers need withWatermark() upstream.
  template <class Factory>
    requires(!kWindowed && detail::StatefulProcessorFor<std::invoke_result_t<Factory&>, Key, T>)
  auto transformWithState(Factory factory, TimeMode mode = TimeMode::kNone) const {
    using Op = detail::TransformWithStateOperator<T, KeyFn, Factory>;
    using Out = typename std::invoke_result_t<Factory&>::Output;
    static const char* kModes[] = {"none", "processingTime", "eventTime"};
    std::string label = std::string("TransformWithState [timeMode=") + kModes[static_cast<int>(mode)] +
                        ", state by source partition]";
    auto node = std::make_shared<detail::LogicalNode>(
        detail::LogicalNode{detail::LogicalNode::Kind::kStateful, std::move(label), {}, {input_.node}, false});
    detail::Producer<Out> out{
        node, [in = input_.build, key = key_, f = std::move(factory), mode](detail::Planner& planner) {
          auto input = in(planner);
          if (planner.outputMode == OutputMode::kComplete) {
            throw ConfigurationError("transformWithState does not support the complete output mode; use append or update");
          }
          if (mode == TimeMode::kEventTime && planner.watermarkDelaysMs.empty()) {
            throw ConfigurationError("transformWithState with TimeMode::kEventTime needs withWatermark(...) upstream");
          }
          auto op = std::make_unique<Op>(std::move(input), key, f, mode);
          planner.stateful.push_back(op.get());
          return std::unique_ptr<detail::BatchOperator<Out>>(op.release());
        }};
    return Stream<Out>(session_, std::move(out), detail::Pipe<Out>{}, routing_);
  }

 private:
  template <class A>
  auto aggregateWith(A aggregate, const std::string& names) const {
    if constexpr (kSession) {
      static_assert(MergeableAggregate<A, T>,
                    "session windows merge sessions: every aggregate needs merge(acc, other) (pass one to aggregate())");
    }
    using Op = std::conditional_t<kSession, detail::SessionAggregateOperator<T, KeyFn, A, SessionTimeFn<Windowing>>,
                                  detail::AggregateOperator<T, KeyFn, A, Windowing>>;
    using GroupKey = std::conditional_t<kWindowed, Windowed<Key>, Key>;
    using Row = KeyValue<GroupKey, agg::OutOf<A, T>>;
    std::string label = "StateStoreSave [aggregates=" + names +
                        (kWindowed ? ", window=" + windowLabel_ : std::string()) + ", state by source partition]";
    auto node = std::make_shared<detail::LogicalNode>(
        detail::LogicalNode{detail::LogicalNode::Kind::kStateful, std::move(label), {}, {input_.node}, false});
    detail::Producer<Row> out{
        node, [in = input_.build, key = key_, a = std::move(aggregate), w = windowing_](detail::Planner& planner) {
          auto input = in(planner);
          if (planner.outputMode == OutputMode::kAppend) {
            if (!kWindowed) {
              throw ConfigurationError(
                  "the append output mode is not supported for an aggregation without event-time windows (a group "
                  "is never final); use outputMode(update) or outputMode(complete), or group by window(...) with "
                  "withWatermark(...)");
            }
            if (planner.watermarkDelaysMs.empty()) {
              throw ConfigurationError(
                  "the append output mode needs withWatermark(...) upstream of a windowed aggregation: without a "
                  "watermark no window is ever final; add withWatermark or use update or complete");
            }
          }
          auto op = std::make_unique<Op>(std::move(input), key, a, w, planner.outputMode);
          planner.stateful.push_back(op.get());
          planner.hasAggregation = true;
          return std::unique_ptr<detail::BatchOperator<Row>>(op.release());
        }};
    return Stream<Row>(session_, std::move(out), detail::Pipe<Row>{}, routing_);
  }

  template <class W>
  using SessionTimeFn = typename detail::SessionTimeOf<W>::type;

  std::shared_ptr<detail::SessionState> session_;
  detail::Producer<T> input_;
  detail::Routing routing_;
  KeyFn key_;
  Windowing windowing_;
  std::string windowLabel_;
};

}  // namespace dataflow
