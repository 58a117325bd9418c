// The runtime of transformWithState: per state partition a processor instance, its typed state
// variables and its timers, all kept in PartitionState maps and written to one delta per
// partition per batch (every key prefixed by the variable's index; timers under 0xFF).
#pragma once

#include <absl/container/btree_map.h>
#include <absl/container/flat_hash_map.h>
#include <oneapi/tbb/parallel_for.h>

#include <algorithm>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dataflow/batch.h"
#include "dataflow/detail/operators.h"
#include "dataflow/detail/stateful.h"
#include "dataflow/stateful_processor.h"

namespace dataflow::detail {

constexpr char kTimerPrefix = static_cast<char>(0xFF);

// One state variable of one partition, untyped for the runtime.
template <class K>
class TwsVar {
 public:
  virtual ~TwsVar() = default;
  virtual size_t writeDelta(StateFileWriter& w, std::string_view prefix) = 0;
  virtual void applyPut(std::string_view key, std::string_view value) = 0;
  virtual void applyRemove(std::string_view key) = 0;
  virtual void rebuildIndex() = 0;
  // Drops the entries whose time to live ended at or before `nowMs`.
  virtual void expire(int64_t nowMs) = 0;
  virtual int64_t size() const = 0;
  virtual int64_t memoryBytes() const = 0;
  virtual int64_t removedCount() const = 0;
};

// Per partition: the current key and times, shared by the variables and the timer functions.
template <class K>
class TwsRuntime {
 public:
  TwsRuntime(TimeMode mode) : mode_(mode) {}

  const K& key() const {
    if (!key_) throw ConfigurationError("transformWithState: state or timers used outside a handler");
    return *key_;
  }
  void setKey(const K* key) { key_ = key; }
  int64_t now() const { return nowMs_; }
  void setTimes(int64_t now, int64_t watermark) {
    nowMs_ = now;
    watermarkMs_ = watermark;
  }
  TimeMode mode() const { return mode_; }

  // Variables, in registration order; the name list of the first partition is the reference.
  template <class Var>
  Var* addVar(const std::string& name, std::unique_ptr<Var> var) {
    if (std::find(names_.begin(), names_.end(), name) != names_.end()) {
      throw ConfigurationError("transformWithState: state variable '" + name + "' is registered twice");
    }
    if (vars_.size() >= 200) throw ConfigurationError("transformWithState: at most 200 state variables");
    names_.push_back(name);
    Var* raw = var.get();
    vars_.push_back(std::move(var));
    return raw;
  }
  std::vector<std::unique_ptr<TwsVar<K>>>& vars() { return vars_; }
  const std::vector<std::string>& names() const { return names_; }

  // Timers: key -> its expiry times, and an index by time for firing.
  void registerTimer(int64_t t) {
    if (mode_ == TimeMode::kNone) throw ConfigurationError("transformWithState: timers need TimeMode kProcessingTime or kEventTime");
    bool created = false;
    auto& times = timers_.upsert(key(), [] { return std::vector<int64_t>{}; }, created);
    if (std::find(times.begin(), times.end(), t) != times.end()) return;
    times.insert(std::upper_bound(times.begin(), times.end(), t), t);
    byTime_[t].push_back(key());
  }
  void deleteTimer(int64_t t) { removeTimer(key(), t); }
  std::vector<int64_t> listTimers() const {
    auto it = timers_.map().find(key());
    return it == timers_.map().end() ? std::vector<int64_t>{} : it->second.value;
  }
  // The timers due at `threshold` (expiry <= threshold), taken out of state, oldest first.
  std::vector<std::pair<int64_t, K>> takeDueTimers(int64_t threshold) {
    std::vector<std::pair<int64_t, K>> due;
    while (!byTime_.empty() && byTime_.begin()->first <= threshold) {
      auto& [t, keys] = *byTime_.begin();
      for (const K& k : keys) {
        if (removeTimer(k, t)) due.emplace_back(t, k);
      }
      byTime_.erase(byTime_.begin());
    }
    return due;
  }
  std::optional<int64_t> nextTimer() const {
    if (byTime_.empty()) return std::nullopt;
    return byTime_.begin()->first;
  }
  PartitionState<K, std::vector<int64_t>>& timers() { return timers_; }
  void rebuildTimerIndex() {
    byTime_.clear();
    for (const auto& [k, slot] : timers_.map()) {
      for (int64_t t : slot.value) byTime_[t].push_back(k);
    }
  }

 private:
  bool removeTimer(const K& k, int64_t t) {
    auto it = timers_.map().find(k);
    if (it == timers_.map().end()) return false;
    auto& times = it->second.value;
    auto pos = std::find(times.begin(), times.end(), t);
    if (pos == times.end()) return false;  // deleted earlier: the index entry was stale
    if (times.size() == 1) {
      timers_.erase(it);
    } else {
      times.erase(pos);
      timers_.touch(it);
    }
    return true;
  }

  TimeMode mode_;
  const K* key_ = nullptr;
  int64_t nowMs_ = 0;
  int64_t watermarkMs_ = kNoWatermark;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<TwsVar<K>>> vars_;
  PartitionState<K, std::vector<int64_t>> timers_;
  absl::btree_map<int64_t, std::vector<K>> byTime_;
};

// A variable's entries: key -> {value, expiry (0: none)}, with an index by expiry for TTL.
template <class K, class V>
class TwsVarBase : public TwsVar<K> {
 public:
  using Entry = std::pair<V, int64_t>;
  TwsVarBase(TwsRuntime<K>* rt, int64_t ttlMs) : rt_(rt), ttlMs_(ttlMs) {}

  size_t writeDelta(StateFileWriter& w, std::string_view prefix) override { return state_.writeDelta(w, prefix); }
  void applyPut(std::string_view key, std::string_view value) override { state_.applyPut(key, value); }
  void applyRemove(std::string_view key) override { state_.applyRemove(key); }
  void rebuildIndex() override {
    byExpiry_.clear();
    for (const auto& [k, slot] : state_.map()) {
      if (slot.value.second) byExpiry_[slot.value.second].push_back(k);
    }
  }
  void expire(int64_t nowMs) override {
    while (!byExpiry_.empty() && byExpiry_.begin()->first <= nowMs) {
      int64_t t = byExpiry_.begin()->first;
      for (const K& k : byExpiry_.begin()->second) {
        auto it = state_.map().find(k);
        if (it != state_.map().end() && it->second.value.second == t) state_.erase(it);  // else updated since
      }
      byExpiry_.erase(byExpiry_.begin());
    }
  }
  int64_t size() const override { return static_cast<int64_t>(state_.map().size()); }
  int64_t memoryBytes() const override { return state_.memoryBytes(); }
  int64_t removedCount() const override { return state_.removedCount(); }

 protected:
  // The current key's live value, or null (absent, or its time to live ended).
  V* current() {
    auto it = state_.map().find(rt_->key());
    if (it == state_.map().end()) return nullptr;
    int64_t expiry = it->second.value.second;
    if (expiry && expiry <= rt_->now()) return nullptr;
    return &it->second.value.first;
  }
  // The current key's value for writing (created empty when absent), marked changed, with its
  // time to live restarted.
  V& write() {
    bool created = false;
    const K& k = rt_->key();
    Entry& e = state_.upsert(k, [] { return Entry{V{}, 0}; }, created);
    if (!created && e.second && e.second <= rt_->now()) e.first = V{};  // expired: start afresh
    if (ttlMs_ > 0) {
      e.second = rt_->now() + ttlMs_;
      byExpiry_[e.second].push_back(k);
    }
    return e.first;
  }
  void remove() { state_.erase(rt_->key()); }

  TwsRuntime<K>* rt_;
  int64_t ttlMs_;
  PartitionState<K, Entry> state_;
  absl::btree_map<int64_t, std::vector<K>> byExpiry_;
};

template <class K, class T>
class TwsValueVar final : public TwsVarBase<K, T>, public ValueVarApi<T> {
 public:
  using TwsVarBase<K, T>::TwsVarBase;
  const T* find() override { return this->current(); }
  void update(T value) override { this->write() = std::move(value); }
  void clear() override { this->remove(); }
};

template <class K, class T>
class TwsListVar final : public TwsVarBase<K, std::vector<T>>, public ListVarApi<T> {
 public:
  using TwsVarBase<K, std::vector<T>>::TwsVarBase;
  const std::vector<T>* find() override { return this->current(); }
  std::vector<T>& modify() override { return this->write(); }
  void clear() override { this->remove(); }
};

template <class K, class UK, class UV>
class TwsMapVar final : public TwsVarBase<K, std::vector<std::pair<UK, UV>>>, public MapVarApi<UK, UV> {
 public:
  using TwsVarBase<K, std::vector<std::pair<UK, UV>>>::TwsVarBase;
  const std::vector<std::pair<UK, UV>>* find() override { return this->current(); }
  std::vector<std::pair<UK, UV>>& modify() override { return this->write(); }
  void clear() override { this->remove(); }
};

// A processor P for transformWithState over records T grouped by K.
template <class P, class K, class T>
concept StatefulProcessorFor = requires(P p, ProcessorHandle<K>& h, const K& key, std::span<const T> rows,
                                         TimerValues t, Collector<typename P::Output>& out) {
  typename P::Output;
  p.init(h);
  p.handleInputRows(key, rows, t, out);
};

template <class T, class KeyFn, class Factory>
class TransformWithStateOperator final
    : public BatchOperator<typename std::invoke_result_t<Factory&>::Output>,
      public StatefulOperator {
  using K = std::decay_t<std::invoke_result_t<const KeyFn&, const T&>>;
  using P = std::invoke_result_t<Factory&>;
  using Out = typename P::Output;
  static constexpr bool kHasTimerHandler =
      requires(P p, const K& k, ExpiredTimer e, TimerValues t, Collector<Out>& out) { p.handleExpiredTimer(k, e, t, out); };

  struct Partition {
    PartitionId id;
    std::unique_ptr<TwsRuntime<K>> runtime;
    std::unique_ptr<ProcessorHandle<K>> handle;
    std::optional<P> processor;
    int64_t droppedLate = 0;
  };

 public:
  TransformWithStateOperator(std::unique_ptr<BatchOperator<T>> input, KeyFn key, Factory factory, TimeMode mode)
      : input_(std::move(input)), key_(std::move(key)), factory_(std::move(factory)), mode_(mode) {}

  std::string operatorName() const override { return "transformWithStateExec"; }

  // Scaled out, a partition's processor runs only in the batches that read the partition, on the
  // partition's own event-time clock: its event-time timers fire once its own records move its
  // watermark past them (as windows close, ExecContext::closingWatermarkFor), and expired TTL
  // entries, already invisible to reads, are dropped when the partition next runs. Processing-time
  // timers would fire in batches without data: refused scaled out.
  bool stateFollowsPartitions() const override { return mode_ != TimeMode::kProcessingTime; }
  void dropPartition(const PartitionId& partition) override { parts_.erase(partition); }

  void produce(ExecContext& ctx, Batch<Out>& out) override {
    Batch<T> in;
    input_->produce(ctx, in);
    out.deadLetters() = std::move(in.deadLetters());
    for (auto& p : in.partitions()) partition(p.id);  // processors are created on this thread
    std::vector<Partition*> all;
    for (auto& [id, p] : parts_) {
      if (!ctx.scaledOut || ctx.readsPartition(id)) all.push_back(p.get());
    }
    std::vector<std::vector<T>*> inputs(all.size(), nullptr);
    for (auto& p : in.partitions()) {
      auto pos = std::find_if(all.begin(), all.end(), [&](Partition* x) { return x->id == p.id; });
      if (pos != all.end()) inputs[static_cast<size_t>(pos - all.begin())] = &p.rows;
    }
    auto& outParts = out.partitions();
    outParts.resize(all.size());
    tbb::parallel_for(size_t{0}, all.size(), [&](size_t i) {
      outParts[i].id = all[i]->id;
      // One instance: the batch's watermark for both. Scaled out: the partition's watermark for
      // its records, and its next one (its records of this batch included) for its timers.
      const TimerValues times{ctx.info.batchTimestampMs, ctx.watermarkFor(all[i]->id)};
      run(*all[i], inputs[i], times, ctx.closingWatermarkFor(all[i]->id), outParts[i].rows);
    });
  }

  // Whether a batch without data would fire a timer now.
  bool wantsBatch(int64_t nowMs, int64_t watermarkMs) const override {
    if (mode_ == TimeMode::kNone) return false;
    int64_t threshold = mode_ == TimeMode::kEventTime ? watermarkMs : nowMs;
    for (const auto& [id, p] : parts_) {
      auto next = p->runtime->nextTimer();
      if (next && *next <= threshold) return true;
    }
    return false;
  }

  void clearState() override { parts_.clear(); }
  void restoreFile(const PartitionId& id, const StateFileReader& file) override {
    Partition& p = partition(id);
    auto& vars = p.runtime->vars();
    auto var = [&](std::string_view key) -> TwsVar<K>* {
      auto index = static_cast<unsigned char>(key.at(0));
      if (index >= vars.size()) {
        throw CheckpointError("transformWithState state names variable " + std::to_string(index) +
                              ", but the processor registers " + std::to_string(vars.size()));
      }
      return vars[index].get();
    };
    file.forEach(
        [&](std::string_view key, std::string_view value) {
          if (key.at(0) == kTimerPrefix) return p.runtime->timers().applyPut(key.substr(1), value);
          var(key)->applyPut(key.substr(1), value);
        },
        [&](std::string_view key) {
          if (key.at(0) == kTimerPrefix) return p.runtime->timers().applyRemove(key.substr(1));
          var(key)->applyRemove(key.substr(1));
        });
  }
  void finishRestore() override {
    for (auto& [id, p] : parts_) {
      for (auto& v : p->runtime->vars()) v->rebuildIndex();
      p->runtime->rebuildTimerIndex();
    }
  }
  void collectChanges(int64_t version, StateChanges& out) override {
    progress_.numRowsUpdated = progress_.numRowsRemoved = progress_.numDeltaBytes = 0;
    for (auto& [partitionId, p] : parts_) {
      StateFileWriter w(StateFileWriter::Kind::kDelta);
      auto& vars = p->runtime->vars();
      for (size_t i = 0; i < vars.size(); ++i) {
        progress_.numRowsRemoved += vars[i]->removedCount();
        progress_.numRowsUpdated += static_cast<int64_t>(vars[i]->writeDelta(w, std::string(1, static_cast<char>(i))));
      }
      p->runtime->timers().writeDelta(w, std::string(1, kTimerPrefix));
      if (w.count() == 0) continue;
      std::string bytes = w.finish();
      progress_.numDeltaBytes += static_cast<int64_t>(bytes.size());
      out.files.push_back({StateFileId{id(), p->id, version, false}, std::move(bytes)});
    }
  }
  StateOperatorProgress progress() const override {
    StateOperatorProgress p = progress_;
    p.operatorName = operatorName();
    p.numRowsTotal = p.memoryUsedBytes = p.numRowsDroppedByWatermark = 0;
    for (const auto& [id, part] : parts_) {
      for (const auto& v : part->runtime->vars()) {
        p.numRowsTotal += v->size();
        p.memoryUsedBytes += v->memoryBytes();
      }
      p.numRowsTotal += static_cast<int64_t>(part->runtime->timers().map().size());
      p.memoryUsedBytes += part->runtime->timers().memoryBytes();
    }
    p.numStatePartitions = static_cast<int64_t>(parts_.size());
    return p;
  }

 private:
  Partition& partition(const PartitionId& id) {
    auto& p = parts_[id];
    if (!p) {
      p = std::make_unique<Partition>();
      p->id = id;
      p->runtime = std::make_unique<TwsRuntime<K>>(mode_);
      p->handle = std::make_unique<ProcessorHandle<K>>(p->runtime.get());
      p->processor.emplace(factory_());
      p->processor->init(*p->handle);
      if (!names_) {
        names_ = p->runtime->names();
      } else if (*names_ != p->runtime->names()) {
        throw ConfigurationError("transformWithState: processor instances registered different state variables");
      }
    }
    return *p;
  }

  void run(Partition& p, std::vector<T>* rows, const TimerValues& times, int64_t timerWatermarkMs, std::vector<Out>& out) {
    TwsRuntime<K>& rt = *p.runtime;
    rt.setTimes(times.processingTimeMs, times.watermarkMs);
    for (auto& v : rt.vars()) v->expire(times.processingTimeMs);
    Collector<Out> collector(&out);
    if (rows && !rows->empty()) {
      // The batch's rows grouped by key, keys in order of first arrival, rows in arrival order.
      absl::flat_hash_map<K, size_t> group;
      std::vector<K> keys;
      std::vector<size_t> groupOf(rows->size());
      for (size_t i = 0; i < rows->size(); ++i) {
        auto [it, inserted] = group.try_emplace(std::invoke(key_, (*rows)[i]), keys.size());
        if (inserted) keys.push_back(it->first);
        groupOf[i] = it->second;
      }
      std::vector<size_t> start(keys.size() + 1, 0);
      for (size_t g : groupOf) ++start[g + 1];
      for (size_t g = 0; g < keys.size(); ++g) start[g + 1] += start[g];
      std::vector<size_t> order(rows->size());
      std::vector<size_t> fill(start.begin(), start.end() - 1);
      for (size_t i = 0; i < rows->size(); ++i) order[fill[groupOf[i]]++] = i;
      std::vector<T> grouped;
      grouped.reserve(rows->size());
      for (size_t i : order) grouped.push_back(std::move((*rows)[i]));
      for (size_t g = 0; g < keys.size(); ++g) {
        rt.setKey(&keys[g]);
        p.processor->handleInputRows(keys[g], std::span<const T>(grouped.data() + start[g], start[g + 1] - start[g]),
                                     times, collector);
      }
    }
    if (mode_ != TimeMode::kNone) {
      // Timers due now, as they stood before firing: a timer a handler registers at or before
      // the current time fires in the next batch.
      int64_t threshold = mode_ == TimeMode::kEventTime ? timerWatermarkMs : times.processingTimeMs;
      const TimerValues timerTimes{times.processingTimeMs, timerWatermarkMs};
      for (auto& [t, k] : rt.takeDueTimers(threshold)) {
        rt.setKey(&k);
        if constexpr (kHasTimerHandler) p.processor->handleExpiredTimer(k, ExpiredTimer{t}, timerTimes, collector);
      }
    }
    rt.setKey(nullptr);
  }

  std::unique_ptr<BatchOperator<T>> input_;
  KeyFn key_;
  Factory factory_;
  TimeMode mode_;
  std::map<PartitionId, std::unique_ptr<Partition>> parts_;
  std::optional<std::vector<std::string>> names_;
  StateOperatorProgress progress_;
};

}  // namespace dataflow::detail

namespace dataflow {

template <class K>
template <class T>
ValueState<T> ProcessorHandle<K>::valueState(const std::string& name, TTLConfig ttl) {
  auto* var = runtime_->addVar(name, std::make_unique<detail::TwsValueVar<K, T>>(runtime_, ttl.ttl.count()));
  return ValueState<T>(var);
}
template <class K>
template <class T>
ListState<T> ProcessorHandle<K>::listState(const std::string& name, TTLConfig ttl) {
  auto* var = runtime_->addVar(name, std::make_unique<detail::TwsListVar<K, T>>(runtime_, ttl.ttl.count()));
  return ListState<T>(var);
}
template <class K>
template <class UK, class UV>
MapState<UK, UV> ProcessorHandle<K>::mapState(const std::string& name, TTLConfig ttl) {
  auto* var = runtime_->addVar(name, std::make_unique<detail::TwsMapVar<K, UK, UV>>(runtime_, ttl.ttl.count()));
  return MapState<UK, UV>(var);
}
template <class K>
void ProcessorHandle<K>::registerTimer(int64_t expiryMs) { runtime_->registerTimer(expiryMs); }
template <class K>
void ProcessorHandle<K>::deleteTimer(int64_t expiryMs) { runtime_->deleteTimer(expiryMs); }
template <class K>
std::vector<int64_t> ProcessorHandle<K>::listTimers() const { return runtime_->listTimers(); }
template <class K>
TimeMode ProcessorHandle<K>::timeMode() const { return runtime_->mode(); }

}  // namespace dataflow
