// Tables: a changelog (a Debezium topic, say) read as the table it describes, not as a stream of
// new facts. Spark appends every change event as a row, so sum(amount) GROUP BY customer over an
// orders changelog counts each update again and never forgets a delete; here, as in Kafka
// Streams' KTable and Flink's retract streams, a table keeps the current row per key and its
// aggregations retract what an updated or deleted row had contributed.
//
//   auto orders = session.readStream(source).parse(orderChange)
//       .asTable(&OrderChange::id, &OrderChange::lsn,
//                [](const OrderChange& c) { return c.deleted ? std::nullopt : std::optional(c.row); });
//   auto perCustomer = orders.groupBy(&Order::customerId)
//       .agg(dataflow::count(), dataflow::sum(&Order::cents), dataflow::max(&Order::cents));
//   perCustomer.toChangelog()   // Stream<TableChange<int64_t, std::tuple<int64_t, int64_t, int64_t>>>
//       .writeStream().foreachBatch(upsertOrDelete).start();
//
// Each batch, a table emits one TableChange per key whose value the batch changed, with the value
// before the batch (from state: Debezium sends no before image for updates with REPLICA IDENTITY
// DEFAULT, and only the key for deletes) and after it. An event whose version (e.g. the LSN) is
// not newer than the key's is ignored, so replays and out-of-order duplicates change nothing. A
// row function of two arguments, row(event, const Row* previous), also gets the key's current row
// (nullptr if none): columns an event did not carry (PostgreSQL's unchanged TOASTed values) are
// taken from it.
//
// count, sum and avg retract by subtraction (exact for integers); min and max keep each group's
// values with their multiplicities, so they stay exact when the extreme row changes or goes. A
// group whose last row leaves is deleted (after = nullopt).
//
// Partitioning: asTable keeps its state by source partition (a key's changes arrive on one
// partition, as Debezium keys by primary key). groupBy regroups rows across partitions. Without an
// exchange its state is one partition kept by one process, and the query does not run scaled
// out. With one (writeStream().exchange(...), exchange.h) the table sends each change event to
// the exchange partition of its group, as Kafka Streams' repartition topics do; there a table of
// the rows by version (so that a record sent twice is applied once) feeds the aggregation, whose
// state then lives per exchange partition: the groups are shared by the query's instances. The
// regrouped rows of a batch are aggregated by the next batch. A join through an exchange sends
// both tables by the key they meet on into one log, and keeps its state per exchange partition
// (table_join_operators.h). A table regrouped so must come from asTable with an integral version
// (the LSN).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "dataflow/aggregates.h"
#include "dataflow/detail/table_join_operators.h"
#include "dataflow/detail/table_operators.h"
#include "dataflow/join.h"
#include "dataflow/stream.h"

namespace dataflow {

template <class K, class V, class GroupFn>
class GroupedTable;

// A table of rows V by key K, as a stream of its changes.
template <class K, class V>
class Table {
 public:
  explicit Table(Stream<TableChange<K, V>> changes) : changes_(std::move(changes)) {}
  // `events`: the same table as the change event of each record, which an exchange needs.
  Table(Stream<TableChange<K, V>> changes, detail::Producer<detail::TableEvent<K, V>> events)
      : changes_(std::move(changes)), events_(std::move(events)) {}

  // The table's changes, one per key the batch changed: upserts (after set) and deletes (after
  // empty), with the previous value in `before`.
  Stream<TableChange<K, V>> toChangelog() const { return changes_; }

  // Regroups the rows by `group(row)` for an aggregation.
  template <class G>
    requires StateKeyFunction<G, V>
  GroupedTable<K, V, G> groupBy(G group) const {
    return GroupedTable<K, V, G>(changes_, events_, std::move(group));
  }

  // Foreign-key join: each row with the row of `right` whose key is foreignKey(row), as
  // combine(row, &rightRow), or for a left join combine(row, nullptr) when there is none. The
  // result, keyed by this table's key, changes when either side does. With an exchange both
  // tables go through one log by the right key (table_join_operators.h), and each change carries
  // its own version (TableChange::version): a sink keeps, per key, the change of the greatest
  // version, replacing a row of an equal one.
  template <class RK, class R, class FkFn, class F>
    requires std::invocable<const FkFn&, const V&> &&
             std::same_as<std::decay_t<std::invoke_result_t<const FkFn&, const V&>>, RK> &&
             std::invocable<const F&, const V&, const R*>
  auto join(const Table<RK, R>& right, FkFn foreignKey, F combine, JoinType type = JoinType::kInner) const {
    using Out = std::decay_t<std::invoke_result_t<const F&, const V&, const R*>>;
    static_assert(Checkpointable<V> && Checkpointable<R>, "a table join keeps both tables' rows in state: both need a StateCodec");
    using Op = detail::TableJoinOperator<K, V, RK, R, FkFn, F>;
    using ExchangedOp = detail::PartitionedTableJoinOperator<K, V, RK, R, FkFn, F>;
    using Send = detail::TableJoinExchangeOperator<K, V, RK, R, FkFn>;
    auto lin = changes_.materialize();
    auto rin = right.changes_.materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kStateful,
        std::string("TableJoin [") + toString(type) +
            ", foreign key; state: both tables' rows; through the query's exchange by foreign key when it has one, "
            "else one partition]",
        {}, {lin.node, rin.node}, false});
    detail::Producer<TableChange<K, Out>> out{
        node, [l = lin.build, r = rin.build, le = events_, re = right.events_, foreignKey, combine, type](detail::Planner& planner) {
          if (planner.outputMode == OutputMode::kComplete) {
            throw ConfigurationError("a table join emits its changes: use the append or update output mode, not complete");
          }
          std::unique_ptr<detail::BatchOperator<TableChange<K, Out>>> result;
          if (!planner.exchange) {
            auto lo = l(planner);
            auto ro = r(planner);
            auto op = std::make_unique<Op>(std::move(lo), std::move(ro), foreignKey, combine, type);
            planner.stateful.push_back(op.get());
            result = std::move(op);
          } else {
            if (!le || !re) {
              throw ConfigurationError("a table join through an exchange needs both tables read with asTable(key, "
                                       "version, row) whose version is an integer (the LSN); one of them is derived "
                                       "from another");
            }
            auto channel = planner.exchangeChannel("join");
            auto readBack = channel->source();
            size_t index = planner.sourceIndex(readBack);
            auto lo = le->build(planner);
            auto ro = re->build(planner);
            auto op = std::make_unique<ExchangedOp>(
                std::make_unique<Send>(std::move(lo), std::move(ro), foreignKey, channel,
                                       std::make_unique<detail::ScanOperator<LogRecord>>(readBack, index)),
                foreignKey, combine, type);
            planner.stateful.push_back(op.get());
            result = std::move(op);
          }
          return result;
        }};
    detail::Routing routing;
    routing.fallible = changes_.routing_.fallible || right.changes_.routing_.fallible;
    routing.handler = changes_.routing_.handler ? changes_.routing_.handler : right.changes_.routing_.handler;
    routing.handledBySink = changes_.routing_.handledBySink || right.changes_.routing_.handledBySink;
    return Table<K, Out>(Stream<TableChange<K, Out>>(changes_.session_, std::move(out), detail::Pipe<TableChange<K, Out>>{},
                                                     std::move(routing)));
  }

  std::string explain() const { return changes_.explain(); }

 private:
  template <class K2, class V2>
  friend class Table;
  Stream<TableChange<K, V>> changes_;
  std::optional<detail::Producer<detail::TableEvent<K, V>>> events_;  // tables from asTable with an integral version
};

// A table regrouped by a new key; its aggregations give a table of groups.
template <class K, class V, class GroupFn>
class GroupedTable {
  using Group = std::decay_t<std::invoke_result_t<const GroupFn&, const V&>>;

 public:
  GroupedTable(Stream<TableChange<K, V>> changes, std::optional<detail::Producer<detail::TableEvent<K, V>>> events,
               GroupFn group)
      : changes_(std::move(changes)), events_(std::move(events)), group_(std::move(group)) {}

  // Several aggregates in one pass; the value is the tuple of their results (one aggregate: its
  // result alone). min and max are kept exact under retraction (see the top of this file).
  template <class... As>
    requires(sizeof...(As) > 0)
  auto agg(As... aggregates) const {
    if constexpr (sizeof...(As) == 1) {
      return aggregateWith(agg::ForTable<As...>::make(std::move(aggregates)...));
    } else {
      return aggregateWith(agg::ForTable<agg::Multi<As...>>::make(agg::Multi<As...>{std::tuple<As...>{std::move(aggregates)...}}));
    }
  }
  auto count() const { return agg(dataflow::count()); }
  template <class F>
  auto sum(F fn) const { return agg(dataflow::sum(std::move(fn))); }
  template <class F>
  auto avg(F fn) const { return agg(dataflow::avg(std::move(fn))); }
  template <class F>
  auto min(F fn) const { return agg(dataflow::min(std::move(fn))); }
  template <class F>
  auto max(F fn) const { return agg(dataflow::max(std::move(fn))); }

 private:
  template <class A>
  auto aggregateWith(A aggregate) const {
    static_assert(RetractableAggregate<A, V>,
                  "a table aggregation retracts rows: use count, sum, avg, min and max (a user-defined aggregate "
                  "would need retract(acc, row))");
    using Out = agg::OutOf<A, V>;
    using Op = detail::TableAggregateOperator<K, V, GroupFn, A>;
    using Routed = detail::RoutedRow<K, V>;
    using Regrouped = detail::AsTableOperator<Routed, K Routed::*, int64_t Routed::*, detail::RoutedRowValue<K, V>>;
    auto input = changes_.materialize();
    auto node = std::make_shared<detail::LogicalNode>(detail::LogicalNode{
        detail::LogicalNode::Kind::kStateful,
        "TableAggregate [retracting; state: group -> rows, accumulator; through the query's exchange by group "
        "when it has one, else one partition]",
        {}, {input.node}, false});
    detail::Producer<TableChange<Group, Out>> out{
        node, [changes = input.build, events = events_, group = group_, a = std::move(aggregate)](detail::Planner& planner) {
          if (planner.outputMode == OutputMode::kComplete) {
            throw ConfigurationError("a table aggregation emits its changes: use the append or update output mode, not complete");
          }
          std::unique_ptr<Op> op;
          if (!planner.exchange) {
            op = std::make_unique<Op>(changes(planner), group, a);
          } else {
            if (!events) {
              throw ConfigurationError("groupBy through an exchange needs a table read with asTable(key, version, row) "
                                       "whose version is an integer (the LSN); this table is derived from another");
            }
            auto channel = planner.exchangeChannel("groupBy");
            auto readBack = channel->source();
            size_t index = planner.sourceIndex(readBack);
            auto regrouped = std::make_unique<Regrouped>(
                std::make_unique<detail::TableExchangeOperator<K, V, GroupFn>>(
                    events->build(planner), group, channel, std::make_unique<detail::ScanOperator<LogRecord>>(readBack, index)),
                &Routed::key, &Routed::version, detail::RoutedRowValue<K, V>{});
            planner.stateful.push_back(regrouped.get());
            op = std::make_unique<Op>(std::move(regrouped), group, a, /*byPartition=*/true);
          }
          planner.stateful.push_back(op.get());
          return std::unique_ptr<detail::BatchOperator<TableChange<Group, Out>>>(op.release());
        }};
    return Table<Group, Out>(Stream<TableChange<Group, Out>>(changes_.session_, std::move(out),
                                                             detail::Pipe<TableChange<Group, Out>>{}, changes_.routing_));
  }

  Stream<TableChange<K, V>> changes_;
  std::optional<detail::Producer<detail::TableEvent<K, V>>> events_;
  GroupFn group_;
};

template <class T, class P>
template <class K, class Ver, class R>
  requires StateKeyFunction<K, T> && VersionFunction<Ver, T>
auto Stream<T, P>::asTable(K key, Ver version, R row) const {
  using Key = std::decay_t<std::invoke_result_t<const K&, const T&>>;
  using MaybeRow = typename detail::RowResult<R, T>::type;
  using Row = typename MaybeRow::value_type;
  static_assert(std::is_same_v<MaybeRow, std::optional<Row>>,
                "asTable(key, version, row): row(record) or row(record, const Row* previous) returns "
                "std::optional<Row> (nullopt for a delete)");
  static_assert(std::invocable<const R&, const T&> || std::invocable<const R&, const T&, const Row*>,
                "asTable(key, version, row): row takes the record, or the record and the key's previous row");
  static_assert(Checkpointable<Row> && Checkpointable<std::decay_t<std::invoke_result_t<const Ver&, const T&>>>,
                "asTable keeps the row and version of every key in state: both need a StateCodec");
  using Op = detail::AsTableOperator<T, K, Ver, R>;
  auto build = [key, version, row]<class Out, class O>(std::unique_ptr<detail::BatchOperator<T>> input, detail::Planner& planner) {
    if (planner.outputMode == OutputMode::kComplete) {
      throw ConfigurationError("a table emits its changes: use the append or update output mode, not complete");
    }
    auto op = std::make_unique<O>(std::move(input), key, version, row);
    planner.stateful.push_back(op.get());
    return std::unique_ptr<detail::BatchOperator<Out>>(op.release());
  };
  const char* label = "AsTable [state: key -> version, row; by source partition]";
  auto changes = statefulStep<TableChange<Key, Row>>(label, [build](std::unique_ptr<detail::BatchOperator<T>> input,
                                                                    detail::Planner& planner) {
    return build.template operator()<TableChange<Key, Row>, Op>(std::move(input), planner);
  });
  using VersionType = std::decay_t<std::invoke_result_t<const Ver&, const T&>>;
  if constexpr (std::is_integral_v<VersionType>) {
    using Event = detail::TableEvent<Key, Row>;
    using EventOp = detail::AsTableOperator<T, K, Ver, R, detail::TableEmit::kEveryEvent>;
    auto events = statefulStep<Event>(label, [build](std::unique_ptr<detail::BatchOperator<T>> input, detail::Planner& planner) {
      return build.template operator()<Event, EventOp>(std::move(input), planner);
    });
    return Table<Key, Row>(std::move(changes), events.materialize());
  } else {
    return Table<Key, Row>(std::move(changes));
  }
}

}  // namespace dataflow
