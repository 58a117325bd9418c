// Stateful and event-time operators: watermark tracking, keyed (and windowed) aggregation and
// deduplication. Each is a batch boundary; inside a batch every source partition's state is
// updated by one task, in parallel with the other partitions, in a typed loop (no virtual call per
// record). The engine drives their state through StatefulOperator (stateful.h).
#pragma once

#include <oneapi/tbb/parallel_for.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "dataflow/aggregates.h"
#include "dataflow/batch.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/stateful.h"
#include "dataflow/state.h"
#include "dataflow/window.h"

namespace dataflow::detail {

// Passes its input through and records the event times it saw in ctx.eventTime[index]; the
// engine derives the next batch's watermark from them. Scaled out, it also tells each
// partition's clock the newest event time read from that partition.
template <class T, class TimeFn>
class WatermarkOperator final : public BatchOperator<T> {
 public:
  WatermarkOperator(std::unique_ptr<BatchOperator<T>> input, TimeFn time, size_t index)
      : input_(std::move(input)), time_(std::move(time)), index_(index) {}

  bool trackOrigins() override { return input_->trackOrigins(); }  // rows pass through untouched

  void produce(ExecContext& ctx, Batch<T>& out) override {
    input_->produce(ctx, out);
    auto& parts = out.partitions();
    std::vector<EventTimeStats> local(parts.size());
    tbb::parallel_for(size_t{0}, parts.size(), [&](size_t p) {
      EventTimeStats s;
      for (const T& row : parts[p].rows) s.add(toEventTimeMs(std::invoke(time_, row)));
      local[p] = s;
    });
    for (size_t p = 0; p < parts.size(); ++p) {
      ctx.eventTime[index_].merge(local[p]);
      if (ctx.partitionWatermarks && local[p].count > 0) ctx.partitionWatermarks->observe(index_, parts[p].id, local[p].max);
    }
  }

 private:
  std::unique_ptr<BatchOperator<T>> input_;
  TimeFn time_;
  size_t index_;
};

// What every keyed stateful operator does for the engine: restore, encode changes, report. Derived
// operators keep their keys in `state_` and rebuild their eviction index in rebuildIndex().
template <class K, class V>
class KeyedStatefulOperator : public StatefulOperator {
 public:
  void clearState() override { state_.clear(); }
  void restoreFile(const PartitionId& p, const StateFileReader& file) override { state_.get(p).state.apply(file); }
  void finishRestore() final {
    for (auto& [id, slot] : state_.all()) {
      slot->state.restored();
      rebuildIndex(*slot);
    }
  }
  void useStateBackend(std::shared_ptr<StateBackend> backend, const std::string& scope, size_t cacheKeys) override {
    state_.useBackend(std::move(backend), scope, id(), cacheKeys);
  }
  bool runsAhead() const override { return true; }  // keyed by input and watermark only
  void dropPartition(const PartitionId& p) override { state_.drop(p); }
  void collectChanges(int64_t version, StateChanges& out) override { state_.collect(id(), version, out, progress_); }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    state_.fillTotals(p);
    return p;
  }

 protected:
  using State = PartitionedState<K, V>;
  using Slot = typename State::Slot;

  // After a restore: rebuilds what the operator derives from a partition's whole state (its
  // eviction index), reading it with forEachStored().
  virtual void rebuildIndex(Slot& /*slot*/) {}

  // The slots of the batch's input partitions (created here, on the driver thread, before the
  // parallel section), with every partition's late-record counter reset.
  template <class Row>
  std::vector<Slot*> slotsFor(const Batch<Row>& in) {
    for (auto& [id, slot] : state_.all()) {
      slot->droppedLate = 0;
      slot->late.clear();
    }
    std::vector<Slot*> slots(in.partitions().size());
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = &state_.get(in.partitions()[i].id);
    return slots;
  }
  // The shape of a keyed aggregation's batch: the input batch (its dead letters passed on), then
  // update(slot, rows, watermark) for each input partition, then emit(slot, outRows, watermark)
  // for every partition with state (output partitions in partition order), partitions in
  // parallel in both phases. update gets the watermark records are late by, emit the one windows
  // close by (ExecContext::watermarkFor, closingWatermarkFor).
  template <class In, class Row, class Update, class Emit>
  void updateThenEmit(BatchOperator<In>& input, ExecContext& ctx, Batch<Row>& out, Update&& update, Emit&& emit) {
    Batch<In> in;
    input.produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto slots = slotsFor(in);
    auto& inParts = in.partitions();
    tbb::parallel_for(size_t{0}, inParts.size(),
                      [&](size_t i) { update(*slots[i], inParts[i].rows, ctx.watermarkFor(slots[i]->id)); });
    takeLate(out);
    auto all = allSlots();
    auto& outParts = out.partitions();
    outParts.resize(all.size());
    tbb::parallel_for(size_t{0}, all.size(), [&](size_t i) {
      outParts[i].id = all[i]->id;
      emit(*all[i], outParts[i].rows, ctx.closingWatermarkFor(all[i]->id));
    });
  }
  // Moves the batch's late records (when routed to dead letters) into the output batch.
  template <class Row>
  void takeLate(Batch<Row>& out) {
    for (auto& [id, slot] : state_.all()) {
      for (auto& d : slot->late) out.deadLetters().push_back(std::move(d));
      slot->late.clear();
    }
  }
  std::vector<Slot*> allSlots() {
    std::vector<Slot*> all;
    for (auto& [id, slot] : state_.all()) all.push_back(slot.get());
    return all;
  }
  // Removes the keys whose eviction time is at or before `watermark`, calling fn(key, value)
  // for each before it goes.
  template <class F>
  static void evictUpTo(Slot& slot, int64_t watermark, F&& fn) {
    auto& index = slot.byDeadline;
    loadDue(slot, watermark);
    while (!index.empty() && index.begin()->first <= watermark) {
      for (const K& k : index.begin()->second) {
        auto it = slot.state.map().find(k);
        if (it == slot.state.map().end()) continue;
        fn(it->first, it->second.value);
        slot.state.erase(it);
      }
      index.erase(index.begin());
    }
  }

  // With a state backend: caches the keys whose eviction time is at or before `watermark`.
  static void loadDue(Slot& slot, int64_t watermark) {
    if (!slot.state.spills()) return;
    slot.state.load([&](auto&& need) {
      for (auto it = slot.byDeadline.begin(); it != slot.byDeadline.end() && it->first <= watermark; ++it) {
        for (const K& k : it->second) need(k);
      }
    });
  }

  State state_;
  StateOperatorProgress progress_;
};

// No windows: records are grouped by key alone.
struct NoWindow {};

// Windows of `spec` over the event time given by `time`.
template <class TimeFn>
struct EventWindows {
  WindowSpec spec;
  TimeFn time;
};

// Groups records by key (and window) and folds each group's records into an accumulator kept in
// state. Emits KeyValue<group key, result> rows by output mode:
//   update:   the groups changed by the batch; windows the watermark passed are then evicted
//   complete: every group, each batch; nothing is evicted
//   append:   (windowed only) a window once the watermark reaches its end, then it is evicted
// With windows, a record whose windows have all ended at or before the batch's watermark is late:
// dropped and counted (numRowsDroppedByWatermark); a record is added to each of its windows that
// is still open.
template <class T, class KeyFn, class A, class Windowing>
class AggregateOperator final
    : public BatchOperator<KeyValue<
          std::conditional_t<std::is_same_v<Windowing, NoWindow>,
                             std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
                             Windowed<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>>>,
          agg::OutOf<A, T>>>,
      public KeyedStatefulOperator<
          std::conditional_t<std::is_same_v<Windowing, NoWindow>,
                             std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
                             Windowed<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>>>,
          agg::AccOf<A, T>> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  static constexpr bool kWindowed = !std::is_same_v<Windowing, NoWindow>;
  using GroupKey = std::conditional_t<kWindowed, Windowed<Key>, Key>;
  using Acc = agg::AccOf<A, T>;
  using Out = agg::OutOf<A, T>;
  using Row = KeyValue<GroupKey, Out>;
  using Base = KeyedStatefulOperator<GroupKey, Acc>;
  using typename Base::Slot;
  using Base::state_;

 public:
  AggregateOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, A aggregate, Windowing windowing,
                    OutputMode mode)
      : input_(std::move(input)), key_(std::move(key)), agg_(std::move(aggregate)),
        windowing_(std::move(windowing)), mode_(mode) {}

  std::string operatorName() const override { return "stateStoreSave"; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<Row>& out) override {
    this->updateThenEmit(
        *input_, ctx, out, [this](Slot& s, const std::vector<T>& rows, int64_t wm) { update(s, rows, wm); },
        [this](Slot& s, std::vector<Row>& rows, int64_t wm) { emit(s, rows, wm); });
  }

  void rebuildIndex(Slot& slot) override {
    if constexpr (kWindowed) {
      slot.byDeadline.clear();
      slot.state.forEachStored([&](const GroupKey& k, const Acc&) { slot.byDeadline[k.window.endMs].push_back(k); });
    }
  }

 private:
  Acc init() const { return agg_.template init<T>(); }

  void update(Slot& slot, const std::vector<T>& rows, int64_t watermark) {
    auto& st = slot.state;
    bool created = false;
    const bool ahead = st.large();
    const size_t n = rows.size(), d = PartitionState<GroupKey, Acc>::kLookahead;
    if (st.spills()) {
      st.load([&](auto&& need) {
        for (const T& row : rows) {
          if constexpr (!kWindowed) {
            need(std::invoke(key_, row));
          } else {
            windowing_.spec.forEachWindow(toEventTimeMs(std::invoke(windowing_.time, row)), [&](Window w) {
              if (w.endMs > watermark) need(GroupKey{w, std::invoke(key_, row)});
            });
          }
        }
      });
    }
    if constexpr (!kWindowed) {
      for (size_t i = 0; i < n; ++i) {
        if (ahead && i + d < n) st.prefetch(std::invoke(key_, rows[i + d]));
        const T& row = rows[i];
        Acc& acc = st.upsert(std::invoke(key_, row), [this] { return init(); }, created);
        agg_.template add<T>(acc, row);
      }
    } else {
      for (size_t i = 0; i < n; ++i) {
        if (ahead && i + d < n) {
          const T& next = rows[i + d];
          windowing_.spec.forEachWindow(toEventTimeMs(std::invoke(windowing_.time, next)), [&](Window w) {
            st.prefetch(GroupKey{w, std::invoke(key_, next)});
          });
        }
        const T& row = rows[i];
        int64_t t = toEventTimeMs(std::invoke(windowing_.time, row));
        bool open = false;
        windowing_.spec.forEachWindow(t, [&](Window w) {
          if (w.endMs <= watermark) return;  // that window is final: the record is late for it
          open = true;
          GroupKey gk{w, std::invoke(key_, row)};
          Acc& acc = st.upsert(gk, [this] { return init(); }, created);
          if (created) slot.byDeadline[w.endMs].push_back(gk);
          agg_.template add<T>(acc, row);
        });
        if (!open) {
          ++slot.droppedLate;
          if (this->lateToDeadLetters()) slot.late.push_back(lateDeadLetter(row, t, watermark, operatorName()));
        }
      }
    }
  }

  void emit(Slot& slot, std::vector<Row>& rows, int64_t watermark) {
    auto& st = slot.state;
    switch (mode_) {
      case OutputMode::kUpdate:
        rows.reserve(st.changedCount());
        st.forEachChanged([&](const GroupKey& k, const Acc& acc) { rows.push_back(Row{k, agg_.result(acc)}); });
        if constexpr (kWindowed) Base::evictUpTo(slot, watermark, [](const GroupKey&, const Acc&) {});
        break;
      case OutputMode::kComplete:
        st.loadAll();
        rows.reserve(st.map().size());
        for (const auto& [k, s] : st.map()) rows.push_back(Row{k, agg_.result(s.value)});
        break;
      case OutputMode::kAppend:
        if constexpr (kWindowed) {
          Base::evictUpTo(slot, watermark, [&](const GroupKey& k, const Acc& acc) { rows.push_back(Row{k, agg_.result(acc)}); });
        }
        break;
    }
  }

  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  A agg_;
  Windowing windowing_;
  OutputMode mode_;
};

// Session windows over the event time given by `time`.
template <class TimeFn>
struct SessionWindows {
  SessionSpec spec;
  TimeFn time;
};

template <class W>
inline constexpr bool kIsSessionWindows = false;
template <class F>
inline constexpr bool kIsSessionWindows<SessionWindows<F>> = true;
template <class W>
struct SessionTimeOf {
  using type = void;
};
template <class F>
struct SessionTimeOf<SessionWindows<F>> {
  using type = F;
};

// Aggregation in session windows. State per key: its open sessions, sorted by start, each with
// its accumulator; a record's own window [t, t + gap) merges every session it overlaps (their
// accumulators merged) into one. A session is final once the watermark reaches its end: emitted
// then in append mode (and evicted in both modes); update mode emits every open session of a key
// the batch touched. A record whose own window ends at or before the watermark is late.
template <class T, class KeyFn, class A, class TimeFn>
class SessionAggregateOperator final
    : public BatchOperator<KeyValue<Windowed<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>>, agg::OutOf<A, T>>>,
      public KeyedStatefulOperator<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>,
                                   std::vector<std::tuple<int64_t, int64_t, agg::AccOf<A, T>>>> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using Acc = agg::AccOf<A, T>;
  using SessionEntry = std::tuple<int64_t, int64_t, Acc>;  // start, end, accumulator
  using Row = KeyValue<Windowed<Key>, agg::OutOf<A, T>>;
  using Base = KeyedStatefulOperator<Key, std::vector<SessionEntry>>;
  using typename Base::Slot;
  using Base::state_;

 public:
  SessionAggregateOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, A aggregate, SessionWindows<TimeFn> windows,
                           OutputMode mode)
      : input_(std::move(input)), key_(std::move(key)), agg_(std::move(aggregate)), windows_(std::move(windows)),
        mode_(mode) {}

  std::string operatorName() const override { return "sessionWindowStateStoreSave"; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<Row>& out) override {
    this->updateThenEmit(
        *input_, ctx, out, [this](Slot& s, const std::vector<T>& rows, int64_t wm) { update(s, rows, wm); },
        [this](Slot& s, std::vector<Row>& rows, int64_t wm) { emit(s, rows, wm); });
  }

  void rebuildIndex(Slot& slot) override {
    slot.byDeadline.clear();
    slot.state.forEachStored([&](const Key& k, const std::vector<SessionEntry>& sessions) {
      for (const auto& e : sessions) slot.byDeadline[std::get<1>(e)].push_back(k);
    });
  }

 private:
  void update(Slot& slot, const std::vector<T>& rows, int64_t watermark) {
    const int64_t gap = windows_.spec.gapMs;
    slot.state.load([&](auto&& need) {
      for (const T& row : rows) {
        if (toEventTimeMs(std::invoke(windows_.time, row)) + gap > watermark) need(std::invoke(key_, row));
      }
    });
    for (const T& row : rows) {
      int64_t t = toEventTimeMs(std::invoke(windows_.time, row));
      if (t + gap <= watermark) {
        ++slot.droppedLate;
        if (this->lateToDeadLetters()) slot.late.push_back(lateDeadLetter(row, t, watermark, operatorName()));
        continue;
      }
      Key k = std::invoke(key_, row);
      bool created = false;
      auto& sessions = slot.state.upsert(k, [] { return std::vector<SessionEntry>{}; }, created);
      SessionEntry merged{t, t + gap, agg_.template init<T>()};
      agg_.template add<T>(std::get<2>(merged), row);
      // Fold in every session that overlaps [t, t + gap); the rest stay as they are.
      std::vector<SessionEntry> kept;
      kept.reserve(sessions.size() + 1);
      for (auto& s : sessions) {
        if (std::get<0>(s) < std::get<1>(merged) && std::get<0>(merged) < std::get<1>(s)) {
          std::get<0>(merged) = std::min(std::get<0>(merged), std::get<0>(s));
          std::get<1>(merged) = std::max(std::get<1>(merged), std::get<1>(s));
          agg_.merge(std::get<2>(merged), std::get<2>(s));
        } else {
          kept.push_back(std::move(s));
        }
      }
      slot.byDeadline[std::get<1>(merged)].push_back(k);
      auto pos = std::lower_bound(kept.begin(), kept.end(), merged,
                                  [](const SessionEntry& a, const SessionEntry& b) { return std::get<0>(a) < std::get<0>(b); });
      kept.insert(pos, std::move(merged));
      sessions = std::move(kept);
    }
  }

  void emit(Slot& slot, std::vector<Row>& rows, int64_t watermark) {
    auto row = [&](const Key& k, const SessionEntry& s) {
      return Row{Windowed<Key>{Window{std::get<0>(s), std::get<1>(s)}, k}, agg_.result(std::get<2>(s))};
    };
    if (mode_ == OutputMode::kUpdate) {
      slot.state.forEachChanged([&](const Key& k, const std::vector<SessionEntry>& sessions) {
        for (const auto& s : sessions) rows.push_back(row(k, s));
      });
    }
    // Sessions the watermark closed: emitted in append mode, dropped in both.
    Base::loadDue(slot, watermark);
    auto& index = slot.byDeadline;
    while (!index.empty() && index.begin()->first <= watermark) {
      for (const Key& k : index.begin()->second) {
        auto it = slot.state.map().find(k);
        if (it == slot.state.map().end()) continue;
        auto& sessions = it->second.value;
        size_t before = sessions.size();
        std::erase_if(sessions, [&](const SessionEntry& s) {
          if (std::get<1>(s) > watermark) return false;
          if (mode_ == OutputMode::kAppend) rows.push_back(row(k, s));
          return true;
        });
        if (sessions.empty()) {
          slot.state.erase(it);
        } else if (sessions.size() != before) {
          slot.state.touch(it);
        }
      }
      index.erase(index.begin());
    }
  }

  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  A agg_;
  SessionWindows<TimeFn> windows_;
  OutputMode mode_;
};

// Keeps the first record of each key. Without an event time the keys are kept forever (Spark's
// dropDuplicates without a watermark); with one (dropDuplicatesWithinWatermark) a key is
// remembered until the watermark reaches its first record's event time + `expireAfterMs` (keys
// are forgotten at the start of the batch whose watermark reaches that), and a record older than
// the watermark is late: dropped and counted.
template <class T, class KeyFn, class TimeFn>
class DedupOperator final
    : public BatchOperator<T>,
      public KeyedStatefulOperator<std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>, int64_t> {
  using Key = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  static constexpr bool kTimed = !std::is_same_v<TimeFn, NoWindow>;
  using Base = KeyedStatefulOperator<Key, int64_t>;  // key -> expiry (0 without event time)
  using typename Base::Slot;
  using Base::state_;

 public:
  DedupOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, TimeFn time, int64_t expireAfterMs)
      : input_(std::move(input)), key_(std::move(key)), time_(std::move(time)), expireAfterMs_(expireAfterMs) {}

  std::string operatorName() const override { return kTimed ? "dedupeWithinWatermark" : "dedupe"; }
  bool stateFollowsPartitions() const override { return true; }

  void produce(ExecContext& ctx, Batch<T>& out) override {
    Batch<T> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    auto slots = this->slotsFor(in);
    // Forget the keys whose time is up before looking at the batch's records: a key the
    // watermark has passed is not a duplicate any more. Scaled out, a partition's state changes
    // only in batches that read from it (its state version is its offset): only those forget.
    if constexpr (kTimed) {
      auto expiring = ctx.partitionWatermarks ? slots : this->allSlots();
      tbb::parallel_for(size_t{0}, expiring.size(), [&](size_t i) {
        Base::evictUpTo(*expiring[i], ctx.watermarkFor(expiring[i]->id), [](const Key&, int64_t) {});
      });
    }
    auto& inParts = in.partitions();
    auto& outParts = out.partitions();
    outParts.resize(inParts.size());
    tbb::parallel_for(size_t{0}, inParts.size(), [&](size_t i) {
      auto& slot = *slots[i];
      auto& rows = outParts[i].rows;
      outParts[i].id = inParts[i].id;
      const int64_t watermark = ctx.watermarkFor(slot.id);
      slot.state.load([&](auto&& need) {
        for (const T& row : inParts[i].rows) {
          if constexpr (kTimed) {
            if (toEventTimeMs(std::invoke(time_, row)) < watermark) continue;
          }
          need(std::invoke(key_, row));
        }
      });
      for (T& row : inParts[i].rows) {
        int64_t expiry = 0;
        if constexpr (kTimed) {
          int64_t t = toEventTimeMs(std::invoke(time_, row));
          if (t < watermark) {
            ++slot.droppedLate;
            if (this->lateToDeadLetters()) slot.late.push_back(lateDeadLetter(row, t, watermark, operatorName()));
            continue;
          }
          expiry = t + expireAfterMs_;
        }
        Key k = std::invoke(key_, row);
        if (!slot.state.insertNew(k, expiry)) continue;
        if constexpr (kTimed) slot.byDeadline[expiry].push_back(std::move(k));
        rows.push_back(std::move(row));
      }
    });
    this->takeLate(out);
  }

  void rebuildIndex(Slot& slot) override {
    if constexpr (kTimed) {
      slot.byDeadline.clear();
      slot.state.forEachStored([&](const Key& k, int64_t expiry) { slot.byDeadline[expiry].push_back(k); });
    }
  }

 private:
  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  TimeFn time_;
  int64_t expireAfterMs_;
};

}  // namespace dataflow::detail
