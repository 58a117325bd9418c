// A stream-stream join that scales out: both streams sent through one exchange log by the join
// key (exchange.h), so that each exchange partition holds every row of its keys from both sides
// and the process that owns the partition joins them, with the partition's state.
//
// Three things differ from the one-process join (join_operators.h):
// - Replays. The log is not transactional with the checkpoint: a replayed batch, or a process
//   fenced after a rebalance, sends rows again. Each row therefore carries its origin (the source
//   partition and offset of the record it was made from, and its place among that record's
//   rows), and a partition skips a row whose origin its state already holds. A row is kept in
//   state until its event time is behind the partition's watermark too, so a copy arriving after
//   it left the state is late, and dropped as late rows are.
// - Event time. Rows of one exchange partition come from every source partition, read by
//   processes that may run at different speeds, so the partition's clock follows each source
//   partition: after its rows, every batch tells every exchange partition how far each source
//   partition it read has come (a marker: its newest event time). The exchange partition's
//   watermark is, per side, the lowest newest event time over the source partitions it has heard
//   of, minus the side's delay, and the lowest of the sides. A row is thus late only when it is
//   behind its own source partition's watermark, as with every scaled-out stateful operator, and
//   a process that runs ahead does not make another's rows late (Flink takes the minimum over
//   input channels likewise). The clock is part of the partition's state, so replaying the
//   partition's log decides lateness and eviction alike. A source partition that stops receiving
//   records holds the clock back (as it keeps its windows open elsewhere); one an exchange
//   partition has not heard of yet (before the query's first batch that reads it) does not.
// - Versions. The state of an exchange partition changes only in batches that read it, and is
//   versioned by its offset: the query may run scaled out.
#pragma once

#include <absl/container/btree_map.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_invoke.h>

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "dataflow/detail/join_operators.h"
#include "dataflow/detail/table_operators.h"
#include "dataflow/exchange.h"

namespace dataflow::detail {

// Where a row of a joined stream came from: what tells a row sent again from a new one.
struct RowOrigin {
  uint64_t partition = 0;  // stableHash of the source partition's id
  int64_t offset = 0;      // the offset of the record the row was made from
  int64_t sub = 0;         // the row's place among the rows made from that record
  bool operator==(const RowOrigin&) const = default;
};

// How far a source partition of one side has come: its newest event time so far.
struct JoinClockMarker {
  bool left = true;
};

// A row of either stream as the join's exchange gives it back (index 0 of `row` the left stream,
// 1 the right one), or a clock marker (index 2; `origin.partition` names the source partition and
// `timeMs` is its newest event time).
template <class L, class R>
struct ExchangedJoinRow {
  std::variant<L, R, JoinClockMarker> row;
  RowOrigin origin;
  int64_t timeMs = 0;  // the join's event time of the row (0 without a time range)
};

// Sends both streams of a join through one exchange log, each row to the partition of its join
// key, and reads back what earlier batches sent. One log keeps both sides of a key in one order
// per partition, and the process that owns a partition owns both sides of it.
//
// Record layout: key = StateCodec(join key); value = side ('J' left, 'j' right), hash of the
// query's id (a query started on a new checkpoint skips what an earlier one left), origin, event
// time, StateCodec(row). A clock marker: no key; value = 'M' (left) or 'm' (right), the query's
// hash, the source partition's hash and its newest event time.
template <class L, class R, class LK, class RK, class TR>
class StreamJoinExchangeOperator final : public BatchOperator<ExchangedJoinRow<L, R>> {
  using Key = std::decay_t<std::invoke_result_t<const LK&, const L&>>;
  static constexpr bool kTimed = !std::is_same_v<TR, NoTimeRange>;
  static constexpr char kLeft = 'J', kRight = 'j', kLeftMarker = 'M', kRightMarker = 'm';

 public:
  StreamJoinExchangeOperator(std::unique_ptr<BatchOperator<L>> left, std::unique_ptr<BatchOperator<R>> right,
                             LK leftKey, RK rightKey, TR range, std::shared_ptr<ExchangeChannel> channel,
                             std::unique_ptr<BatchOperator<LogRecord>> readBack)
      : left_(std::move(left)), right_(std::move(right)), leftKey_(std::move(leftKey)),
        rightKey_(std::move(rightKey)), range_(std::move(range)), channel_(std::move(channel)),
        readBack_(std::move(readBack)) {}

  void produce(ExecContext& ctx, Batch<ExchangedJoinRow<L, R>>& out) override {
    Batch<L> lin;
    Batch<R> rin;
    Batch<LogRecord> received;
    tbb::parallel_invoke([&] { left_->produce(ctx, lin); }, [&] { right_->produce(ctx, rin); },
                         [&] { readBack_->produce(ctx, received); });
    out.deadLetters() = std::move(lin.deadLetters());
    for (auto& d : rin.deadLetters()) out.deadLetters().push_back(std::move(d));
    const uint64_t query = stableHash(ctx.info.queryId);
    send(lin, kLeft, kLeftMarker, query, leftKey_, [&](const L& l) { return leftTime(l); });
    send(rin, kRight, kRightMarker, query, rightKey_, [&](const R& r) { return rightTime(r); });
    channel_->flush();

    auto& in = received.partitions();
    auto& parts = out.partitions();
    parts.resize(in.size());
    tbb::parallel_for(size_t{0}, in.size(), [&](size_t i) {
      parts[i].id = in[i].id;
      parts[i].rows.reserve(in[i].rows.size());
      for (const LogRecord& r : in[i].rows) {
        if (auto row = decode(r, query)) parts[i].rows.push_back(std::move(*row));
      }
    });
  }

 private:
  // Sends a side's rows, each to its key's partition, then (with a time range) a marker per
  // source partition read to every partition: after the rows, so it never runs ahead of them.
  template <class T, class KeyFn, class TimeFn>
  void send(const Batch<T>& batch, char side, char marker, uint64_t query, const KeyFn& keyFn, const TimeFn& timeFn) {
    const auto partitions = static_cast<uint64_t>(channel_->partitions());
    for (const auto& part : batch.partitions()) {
      const uint64_t from = stableHash(part.id.toString());
      int64_t previous = -1, sub = 0, newest = kNoWatermark;
      for (size_t i = 0; i < part.rows.size(); ++i) {
        const T& row = part.rows[i];
        const int64_t origin = originOf<T>(part, i);
        if (origin < 0) {
          throw InternalError("stream-stream join through an exchange: a row of " + part.id.toString() +
                              " has no source offset");
        }
        sub = i > 0 && origin == previous ? sub + 1 : 0;
        previous = origin;
        key_.clear();
        StateCodec<Key>::encode(std::invoke(keyFn, row), key_);
        value_.clear();
        value_.push_back(side);
        StateCodec<uint64_t>::encode(query, value_);
        StateCodec<RowOrigin>::encode(RowOrigin{from, origin, sub}, value_);
        const int64_t t = timeFn(row);
        newest = std::max(newest, t);
        StateCodec<int64_t>::encode(t, value_);
        StateCodec<T>::encode(row, value_);
        channel_->send(static_cast<int32_t>(stableHash(key_) % partitions), key_, value_);
      }
      if (!kTimed || newest == kNoWatermark) continue;
      value_.clear();
      value_.push_back(marker);
      StateCodec<uint64_t>::encode(query, value_);
      StateCodec<uint64_t>::encode(from, value_);
      StateCodec<int64_t>::encode(newest, value_);
      for (uint64_t p = 0; p < partitions; ++p) channel_->send(static_cast<int32_t>(p), {}, value_);
    }
  }

  static std::optional<ExchangedJoinRow<L, R>> decode(const LogRecord& r, uint64_t query) {
    try {
      std::string_view value = r.value;
      if (value.empty() || std::string_view("JjMm").find(value[0]) == std::string_view::npos) {
        throw std::out_of_range("kind");
      }
      const char side = value[0];
      value.remove_prefix(1);
      if (StateCodec<uint64_t>::decode(value) != query) return std::nullopt;
      if (side == kLeftMarker || side == kRightMarker) {
        uint64_t from = StateCodec<uint64_t>::decode(value);
        int64_t newest = StateCodec<int64_t>::decode(value);
        return ExchangedJoinRow<L, R>{JoinClockMarker{side == kLeftMarker}, RowOrigin{from, 0, 0}, newest};
      }
      RowOrigin origin = StateCodec<RowOrigin>::decode(value);
      int64_t time = StateCodec<int64_t>::decode(value);
      if (side == kLeft) {
        return ExchangedJoinRow<L, R>{
            std::variant<L, R, JoinClockMarker>(std::in_place_index<0>, StateCodec<L>::decode(value)), origin, time};
      }
      return ExchangedJoinRow<L, R>{
          std::variant<L, R, JoinClockMarker>(std::in_place_index<1>, StateCodec<R>::decode(value)), origin, time};
    } catch (const std::exception& e) {
      throw InternalError("exchange " + std::string(r.topic) + " partition " + std::to_string(r.partition) +
                          " offset " + std::to_string(r.offset) + ": not a joined stream's row (" + e.what() +
                          "); the log is shared with something else, or was written by another version of the query");
    }
  }

  int64_t leftTime(const L& l) const {
    if constexpr (kTimed) return toEventTimeMs(std::invoke(range_.leftTime, l)); else return 0;
  }
  int64_t rightTime(const R& r) const {
    if constexpr (kTimed) return toEventTimeMs(std::invoke(range_.rightTime, r)); else return 0;
  }

  std::unique_ptr<BatchOperator<L>> left_;
  std::unique_ptr<BatchOperator<R>> right_;
  LK leftKey_;
  RK rightKey_;
  TR range_;
  std::shared_ptr<ExchangeChannel> channel_;
  std::unique_ptr<BatchOperator<LogRecord>> readBack_;
  std::string key_, value_;
};

// Options of the join behind the exchange: the watermark delay of each side (nullopt: the side
// has no watermark upstream and does not hold the clock back).
struct ExchangedJoinClockOptions {
  std::optional<int64_t> leftDelayMs;
  std::optional<int64_t> rightDelayMs;
};

// The symmetric hash join behind a StreamJoinExchangeOperator: per exchange partition, both
// sides' rows by key with their origins, and the partition's clock. Partitions run in parallel.
template <class L, class R, class LK, class RK, class F, class TR>
class PartitionedStreamJoinOperator final
    : public BatchOperator<std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>>,
      public StatefulOperator {
  using Out = std::decay_t<std::invoke_result_t<const F&, const L&, const R*>>;
  using Key = std::decay_t<std::invoke_result_t<const LK&, const L&>>;
  static constexpr bool kTimed = !std::is_same_v<TR, NoTimeRange>;
  using LeftEntry = std::tuple<L, int64_t, bool, RowOrigin>;  // row, event time, matched, origin
  using RightEntry = std::tuple<R, int64_t, RowOrigin>;
  using Routed = ExchangedJoinRow<L, R>;
  // The partition's clock: per side, the newest event time of each source partition heard of (by
  // the hash of its id), and the watermark.
  using Newest = std::vector<std::pair<uint64_t, int64_t>>;
  struct Clock {
    Newest newestLeft;
    Newest newestRight;
    int64_t watermarkMs = kNoWatermark;
  };
  template <class E>
  struct Side {
    PartitionState<Key, std::vector<E>> state;
    absl::btree_map<int64_t, std::vector<Key>> byDeadline;  // eviction time -> keys (derived)
  };
  struct Slot {
    Side<LeftEntry> left;
    Side<RightEntry> right;
    Clock clock;
    bool clockChanged = false;
    int64_t droppedLate = 0;  // in the last batch
  };

 public:
  PartitionedStreamJoinOperator(std::unique_ptr<BatchOperator<Routed>> input, LK leftKey, RK rightKey, F combine,
                                JoinType type, TR range, ExchangedJoinClockOptions clock)
      : input_(std::move(input)), leftKey_(std::move(leftKey)), rightKey_(std::move(rightKey)),
        combine_(std::move(combine)), type_(type), range_(std::move(range)), clockOptions_(clock) {}

  std::string operatorName() const override { return "symmetricHashJoin"; }
  bool runsAhead() const override { return true; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<Out>& out) override {
    Batch<Routed> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto& inParts = in.partitions();
    std::vector<Slot*> slots(inParts.size());
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = &slot(inParts[i].id);  // on the driver thread
    auto& outParts = out.partitions();
    outParts.resize(inParts.size());
    std::vector<std::vector<DeadLetter>> late(inParts.size());
    tbb::parallel_for(size_t{0}, inParts.size(), [&](size_t i) {
      outParts[i].id = inParts[i].id;
      apply(*slots[i], inParts[i].rows, outParts[i].rows, late[i]);
    });
    for (auto& letters : late) {
      for (auto& d : letters) out.deadLetters().push_back(std::move(d));
    }
  }

  void clearState() override { slots_.clear(); }
  void dropPartition(const PartitionId& p) override { slots_.erase(p); }
  void restoreFile(const PartitionId& p, const StateFileReader& file) override {
    Slot& s = slot(p);
    file.forEach(
        [&](std::string_view key, std::string_view value) {
          switch (key.at(0)) {
            case 'L': s.left.state.applyPut(key.substr(1), value); break;
            case 'R': s.right.state.applyPut(key.substr(1), value); break;
            default: s.clock = decodeClock(value);
          }
        },
        [&](std::string_view key) {
          if (key.at(0) == 'L') s.left.state.applyRemove(key.substr(1));
          else if (key.at(0) == 'R') s.right.state.applyRemove(key.substr(1));
        });
  }
  void finishRestore() override {
    if constexpr (kTimed) {
      for (auto& [id, s] : slots_) {
        s->left.byDeadline.clear();
        s->right.byDeadline.clear();
        for (const auto& [k, slot] : s->left.state.map()) {
          for (const auto& e : slot.value) s->left.byDeadline[leftDeadline(std::get<1>(e))].push_back(k);
        }
        for (const auto& [k, slot] : s->right.state.map()) {
          for (const auto& e : slot.value) s->right.byDeadline[rightDeadline(std::get<1>(e))].push_back(k);
        }
      }
    }
  }
  void collectChanges(int64_t version, StateChanges& out) override {
    progress_.numRowsUpdated = progress_.numRowsRemoved = progress_.numDeltaBytes = 0;
    progress_.numRowsDroppedByWatermark = 0;
    for (auto& [id, s] : slots_) {
      progress_.numRowsRemoved += s->left.state.removedCount() + s->right.state.removedCount();
      progress_.numRowsDroppedByWatermark += std::exchange(s->droppedLate, 0);
      StateFileWriter w(StateFileWriter::Kind::kDelta);
      progress_.numRowsUpdated +=
          static_cast<int64_t>(s->left.state.writeDelta(w, "L") + s->right.state.writeDelta(w, "R"));
      if (std::exchange(s->clockChanged, false)) w.put("C", encodeClock(s->clock));
      if (w.count() == 0) continue;
      std::string bytes = w.finish();
      progress_.numDeltaBytes += static_cast<int64_t>(bytes.size());
      out.files.push_back({StateFileId{this->id(), id, version, false}, std::move(bytes)});
    }
  }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    p.numRowsTotal = p.memoryUsedBytes = 0;
    for (const auto& [id, s] : slots_) {
      int64_t rows = 0;
      for (const auto& [k, e] : s->left.state.map()) rows += static_cast<int64_t>(e.value.size());
      for (const auto& [k, e] : s->right.state.map()) rows += static_cast<int64_t>(e.value.size());
      p.numRowsTotal += rows;
      p.memoryUsedBytes += s->left.state.memoryBytes() + s->right.state.memoryBytes() +
                           rows * static_cast<int64_t>(std::max(sizeof(LeftEntry), sizeof(RightEntry)));
    }
    p.numStatePartitions = static_cast<int64_t>(slots_.size());
    return p;
  }

 private:
  Slot& slot(const PartitionId& p) {
    auto& s = slots_[p];
    if (!s) s = std::make_unique<Slot>();
    return *s;
  }

  // One partition's rows in log order: late rows and copies skipped, the rest matched against
  // the other side and kept; then the partition's clock advances and evicts what can no longer
  // match (a left outer join's unmatched left rows are emitted then).
  void apply(Slot& s, std::vector<Routed>& rows, std::vector<Out>& out, std::vector<DeadLetter>& late) {
    const int64_t watermark = s.clock.watermarkMs;
    for (Routed& routed : rows) {
      const int64_t t = routed.timeMs;
      if (routed.row.index() == 2) {
        observe(s, std::get<2>(routed.row).left ? s.clock.newestLeft : s.clock.newestRight, routed.origin.partition, t);
        continue;
      }
      if constexpr (kTimed) {
        if (watermark != kNoWatermark && t < watermark) {
          ++s.droppedLate;
          if (lateToDeadLetters()) {
            late.push_back(routed.row.index() == 0 ? lateDeadLetter(std::get<0>(routed.row), t, watermark, operatorName())
                                                   : lateDeadLetter(std::get<1>(routed.row), t, watermark, operatorName()));
          }
          continue;
        }
      }
      if (routed.row.index() == 0) {
        L& l = std::get<0>(routed.row);
        Key k = std::invoke(leftKey_, std::as_const(l));
        if (holds(s.left.state, k, routed.origin, [](const LeftEntry& e) -> const RowOrigin& { return std::get<3>(e); })) continue;
        bool matched = false;
        if (auto it = s.right.state.map().find(k); it != s.right.state.map().end()) {
          for (const RightEntry& e : it->second.value) {
            if (!inRange(t, std::get<1>(e))) continue;
            out.push_back(std::invoke(combine_, std::as_const(l), &std::get<0>(e)));
            matched = true;
          }
        }
        bool created = false;
        s.left.state.upsert(k, [] { return std::vector<LeftEntry>{}; }, created).emplace_back(std::move(l), t, matched, routed.origin);
        if constexpr (kTimed) s.left.byDeadline[leftDeadline(t)].push_back(k);
        if constexpr (kTimed) observe(s, s.clock.newestLeft, routed.origin.partition, t);
      } else {
        R& r = std::get<1>(routed.row);
        Key k = std::invoke(rightKey_, std::as_const(r));
        if (holds(s.right.state, k, routed.origin, [](const RightEntry& e) -> const RowOrigin& { return std::get<2>(e); })) continue;
        if (auto it = s.left.state.map().find(k); it != s.left.state.map().end()) {
          bool marked = false;
          for (auto& [l, lt, matched, origin] : it->second.value) {
            if (!inRange(lt, t)) continue;
            out.push_back(std::invoke(combine_, std::as_const(l), &std::as_const(r)));
            if (!matched) matched = marked = true;
          }
          if (marked) s.left.state.touch(it);
        }
        bool created = false;
        s.right.state.upsert(k, [] { return std::vector<RightEntry>{}; }, created).emplace_back(std::move(r), t, routed.origin);
        if constexpr (kTimed) s.right.byDeadline[rightDeadline(t)].push_back(k);
        if constexpr (kTimed) observe(s, s.clock.newestRight, routed.origin.partition, t);
      }
    }
    if constexpr (kTimed) {
      const int64_t next = nextWatermark(s.clock);
      if (next > s.clock.watermarkMs) {
        s.clock.watermarkMs = next;
        s.clockChanged = true;
      }
      if (s.clock.watermarkMs == kNoWatermark) return;
      evictJoinRows(s.left, s.clock.watermarkMs, [&](LeftEntry& e) {
        if (type_ == JoinType::kLeftOuter && !std::get<2>(e)) {
          out.push_back(std::invoke(combine_, std::as_const(std::get<0>(e)), static_cast<const R*>(nullptr)));
        }
      }, [&](const LeftEntry& e) { return leftDeadline(std::get<1>(e)); });
      evictJoinRows(s.right, s.clock.watermarkMs, [](RightEntry&) {},
                                  [&](const RightEntry& e) { return rightDeadline(std::get<1>(e)); });
    }
  }

  // Whether the key's rows on one side hold a row of this origin: the row was sent again.
  template <class E, class OriginOf>
  static bool holds(const PartitionState<Key, std::vector<E>>& side, const Key& k, const RowOrigin& origin,
                    OriginOf&& originOf) {
    auto it = side.map().find(k);
    if (it == side.map().end()) return false;
    return std::any_of(it->second.value.begin(), it->second.value.end(),
                       [&](const E& e) { return originOf(e) == origin; });
  }

  // Source partition `from` of a side has come to event time `t`.
  static void observe(Slot& s, Newest& newest, uint64_t from, int64_t t) {
    auto it = std::find_if(newest.begin(), newest.end(), [&](const auto& e) { return e.first == from; });
    if (it == newest.end()) {
      newest.emplace_back(from, t);
    } else if (t > it->second) {
      it->second = t;
    } else {
      return;
    }
    s.clockChanged = true;
  }

  // The clock's next watermark: each side with a watermark upstream gives the lowest newest event
  // time of its source partitions minus its delay, the lowest side counts, and there is none
  // before every such side was heard of (Spark's rule for several watermarks).
  int64_t nextWatermark(const Clock& c) const {
    int64_t w = kNoWatermark;
    bool any = false;
    for (const auto& [newest, delay] : {std::pair{&c.newestLeft, clockOptions_.leftDelayMs},
                                        std::pair{&c.newestRight, clockOptions_.rightDelayMs}}) {
      if (!delay) continue;
      if (newest->empty()) return c.watermarkMs;
      int64_t lowest = std::min_element(newest->begin(), newest->end(), [](const auto& a, const auto& b) {
                         return a.second < b.second;
                       })->second;
      w = any ? std::min(w, lowest - *delay) : lowest - *delay;
      any = true;
    }
    return any ? std::max(w, c.watermarkMs) : c.watermarkMs;
  }

  // A row leaves the state once no later row of the other side can match it, and once it is
  // itself behind the watermark, so that a copy of it sent again is late.
  int64_t leftDeadline(int64_t t) const {
    if constexpr (kTimed) return std::max(t + range_.upper.count(), t); else return t;
  }
  int64_t rightDeadline(int64_t t) const {
    if constexpr (kTimed) return std::max(t - range_.lower.count(), t); else return t;
  }
  bool inRange(int64_t leftT, int64_t rightT) const {
    if constexpr (kTimed) {
      int64_t d = rightT - leftT;
      return d >= range_.lower.count() && d <= range_.upper.count();
    }
    return true;
  }

  using ClockCodec = StateCodec<std::tuple<Newest, Newest, int64_t>>;
  static std::string encodeClock(const Clock& c) {
    std::string out;
    ClockCodec::encode({c.newestLeft, c.newestRight, c.watermarkMs}, out);
    return out;
  }
  static Clock decodeClock(std::string_view in) {
    auto [l, r, w] = ClockCodec::decode(in);
    return Clock{std::move(l), std::move(r), w};
  }

  std::unique_ptr<BatchOperator<Routed>> input_;
  LK leftKey_;
  RK rightKey_;
  F combine_;
  JoinType type_;
  TR range_;
  ExchangedJoinClockOptions clockOptions_;
  std::map<PartitionId, std::unique_ptr<Slot>> slots_;
  StateOperatorProgress progress_;
};

}  // namespace dataflow::detail
