// Joins: a stream with a static table (Stream::joinStatic), and two streams with each other
// (Stream::join), inner or left outer.
//
// Stream-static: each record of the stream meets the table's rows of its key; the table is a
// snapshot given once, or loaded again for every batch (a dimension table that changes slowly).
//
// Stream-stream: rows of both sides are kept in state until no future row of the other side can
// match them. Without a time bound that is forever (inner joins only, as in Spark). With one,
//   right.time - left.time in [lower, upper]
// and a watermark upstream, a left row is dropped once the watermark passes left.time + upper
// (and a right row once it passes right.time - lower): records older than the watermark are
// late and dropped, so nothing newer can match them. A left outer join emits a left row without
// any match (the combine function gets a null right side) at that moment, once. Output mode:
// append, as Spark's.
//
// In one process the join's state is one partition. With an exchange (writeStream().exchange,
// exchange.h) both streams go through one log by join key and each exchange partition keeps the
// state of its keys, with its own event-time clock: the query can then run scaled out
// (detail/exchanged_join_operators.h).
//
//   auto enriched = orders.join(payments, &Order::id, &Payment::orderId,
//       [](const Order& o, const Payment* p) { return Paid{o.id, p ? p->amount : 0}; },
//       dataflow::JoinType::kLeftOuter,
//       dataflow::timeRange(&Order::ts, &Payment::ts, 0s, std::chrono::minutes(10)));
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <vector>

namespace dataflow {

enum class JoinType { kInner, kLeftOuter };
inline const char* toString(JoinType t) { return t == JoinType::kInner ? "inner" : "leftOuter"; }

// The time condition of a stream-stream join: right time - left time within [lower, upper].
template <class LT, class RT>
struct TimeRange {
  LT leftTime;
  RT rightTime;
  std::chrono::milliseconds lower;
  std::chrono::milliseconds upper;
};
template <class LT, class RT>
TimeRange<LT, RT> timeRange(LT leftTime, RT rightTime, std::chrono::milliseconds lower, std::chrono::milliseconds upper) {
  return {std::move(leftTime), std::move(rightTime), lower, upper};
}
// No time condition (inner joins only: state is kept forever).
struct NoTimeRange {};

// The table side of a stream-static join.
template <class R>
class StaticTable {
 public:
  // A table that does not change while the query runs.
  static StaticTable snapshot(std::vector<R> rows) {
    StaticTable t;
    t.rows_ = std::make_shared<const std::vector<R>>(std::move(rows));
    return t;
  }
  // A table loaded again at the start of every batch (on the driver, before the batch's records
  // are joined); a loader that throws a retriable ConnectorError makes the batch retry.
  static StaticTable perBatch(std::function<std::vector<R>()> loader) {
    StaticTable t;
    t.loader_ = std::move(loader);
    return t;
  }
  bool reloads() const { return static_cast<bool>(loader_); }
  std::shared_ptr<const std::vector<R>> rows() const {
    if (loader_) return std::make_shared<const std::vector<R>>(loader_());
    return rows_;
  }

 private:
  std::shared_ptr<const std::vector<R>> rows_;
  std::function<std::vector<R>()> loader_;
};

}  // namespace dataflow
