// User-defined stateful processing (KeyedStream::transformWithState), modelled on Spark 4's
// transformWithState: a processor class keeps typed state per grouping key (ValueState,
// ListState, MapState, each with an optional time to live) and timers in processing or event
// time, and emits any rows it likes. State and timers are checkpointed with the query like every
// other operator's state: a batch's changes become visible with its commit, and a replayed batch
// sees the state, timers and times it first saw (timers fire exactly once per committed batch).
//
//   struct SessionCounter {
//     using Output = std::pair<std::string, int64_t>;           // what it emits
//     dataflow::ValueState<int64_t> count;
//     dataflow::ProcessorHandle<std::string>* handle = nullptr;
//     void init(dataflow::ProcessorHandle<std::string>& h) {    // once per state partition
//       handle = &h;
//       count = h.valueState<int64_t>("count", {.ttl = std::chrono::hours(1)});
//     }
//     void handleInputRows(const std::string& user, std::span<const Click> clicks,
//                          dataflow::TimerValues t, dataflow::Collector<Output>& out) {
//       count.update(count.getOrDefault(0) + static_cast<int64_t>(clicks.size()));
//       handle->registerTimer(t.watermarkMs + 60'000);           // event time: a minute of quiet
//     }
//     void handleExpiredTimer(const std::string& user, dataflow::ExpiredTimer,
//                             dataflow::TimerValues, dataflow::Collector<Output>& out) {
//       out.emit({user, count.getOrDefault(0)});
//       count.clear();
//     }
//   };
//   clicks.withWatermark(&Click::ts, 10s).groupByKey(&Click::user)
//         .transformWithState([] { return SessionCounter{}; }, dataflow::TimeMode::kEventTime);
//
// One processor instance exists per state partition (source partition), created by the factory
// and initialised once; its handlers run for one key at a time, and the state handles it holds
// act on that key. handleInputRows is called once per key per batch with the key's rows of the
// batch, in arrival order; handleExpiredTimer (optional) once per timer that expired: processing
// time timers when the batch's timestamp reaches them, event time timers when the watermark does.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dataflow/error.h"
#include "dataflow/window.h"

namespace dataflow {

enum class TimeMode {
  kNone,            // no timers
  kProcessingTime,  // timers in the batches' timestamps (wall clock at planning, logged)
  kEventTime,       // timers in event time: they fire as the watermark passes them
};

// A state variable's time to live, in processing time: an entry not updated for `ttl` is gone.
struct TTLConfig {
  std::chrono::milliseconds ttl{0};  // 0: never expires
};

// The times a handler runs at.
struct TimerValues {
  int64_t processingTimeMs = 0;        // the batch's timestamp (the same when it is replayed)
  int64_t watermarkMs = kNoWatermark;  // the batch's watermark
};

struct ExpiredTimer {
  int64_t expiryMs = 0;
};

// Where a handler's output rows go.
template <class Out>
class Collector {
 public:
  explicit Collector(std::vector<Out>* rows) : rows_(rows) {}
  void emit(Out row) { rows_->push_back(std::move(row)); }

 private:
  std::vector<Out>* rows_;
};

namespace detail {
// What the state handles call; implemented per key type by the operator's variables, acting on
// the key whose handler is running.
template <class T>
struct ValueVarApi {
  virtual ~ValueVarApi() = default;
  virtual const T* find() = 0;
  virtual void update(T value) = 0;
  virtual void clear() = 0;
};
template <class T>
struct ListVarApi {
  virtual ~ListVarApi() = default;
  virtual const std::vector<T>* find() = 0;
  virtual std::vector<T>& modify() = 0;  // creates an empty list
  virtual void clear() = 0;
};
template <class K, class V>
struct MapVarApi {
  virtual ~MapVarApi() = default;
  virtual const std::vector<std::pair<K, V>>* find() = 0;
  virtual std::vector<std::pair<K, V>>& modify() = 0;
  virtual void clear() = 0;
};
[[noreturn]] inline void unboundState() {
  throw ConfigurationError("a state handle was used before init() assigned it from the ProcessorHandle");
}
}  // namespace detail

// One value per key.
template <class T>
class ValueState {
 public:
  ValueState() = default;
  explicit ValueState(detail::ValueVarApi<T>* var) : var_(var) {}
  bool exists() const { return api()->find() != nullptr; }
  std::optional<T> get() const {
    const T* v = api()->find();
    return v ? std::optional<T>(*v) : std::nullopt;
  }
  T getOrDefault(T fallback) const {
    const T* v = api()->find();
    return v ? *v : std::move(fallback);
  }
  void update(T value) { api()->update(std::move(value)); }
  void clear() { api()->clear(); }

 private:
  detail::ValueVarApi<T>* api() const {
    if (!var_) detail::unboundState();
    return var_;
  }
  detail::ValueVarApi<T>* var_ = nullptr;
};

// A list per key.
template <class T>
class ListState {
 public:
  ListState() = default;
  explicit ListState(detail::ListVarApi<T>* var) : var_(var) {}
  bool exists() const { return api()->find() != nullptr; }
  std::vector<T> get() const {
    const auto* v = api()->find();
    return v ? *v : std::vector<T>{};
  }
  void put(std::vector<T> values) {
    if (values.empty()) return clear();
    api()->modify() = std::move(values);
  }
  void append(T value) { api()->modify().push_back(std::move(value)); }
  void appendList(const std::vector<T>& values) {
    auto& list = api()->modify();
    list.insert(list.end(), values.begin(), values.end());
  }
  void clear() { api()->clear(); }

 private:
  detail::ListVarApi<T>* api() const {
    if (!var_) detail::unboundState();
    return var_;
  }
  detail::ListVarApi<T>* var_ = nullptr;
};

// A map per key (kept as a small vector of entries: lookups are linear in the key's entries).
template <class UK, class UV>
class MapState {
 public:
  MapState() = default;
  explicit MapState(detail::MapVarApi<UK, UV>* var) : var_(var) {}
  bool exists() const { return api()->find() != nullptr; }
  std::optional<UV> getValue(const UK& key) const {
    if (const auto* entries = api()->find()) {
      for (const auto& [k, v] : *entries) {
        if (k == key) return v;
      }
    }
    return std::nullopt;
  }
  bool containsKey(const UK& key) const { return getValue(key).has_value(); }
  void updateValue(UK key, UV value) {
    auto& entries = api()->modify();
    for (auto& [k, v] : entries) {
      if (k == key) {
        v = std::move(value);
        return;
      }
    }
    entries.emplace_back(std::move(key), std::move(value));
  }
  void removeKey(const UK& key) {
    const auto* current = api()->find();
    if (!current) return;
    auto& entries = api()->modify();
    std::erase_if(entries, [&](const auto& e) { return e.first == key; });
    if (entries.empty()) api()->clear();
  }
  std::vector<std::pair<UK, UV>> entries() const {
    const auto* e = api()->find();
    return e ? *e : std::vector<std::pair<UK, UV>>{};
  }
  void clear() { api()->clear(); }

 private:
  detail::MapVarApi<UK, UV>* api() const {
    if (!var_) detail::unboundState();
    return var_;
  }
  detail::MapVarApi<UK, UV>* var_ = nullptr;
};

namespace detail {
template <class K>
class TwsRuntime;  // transform_with_state_operator.h
}

// Given to a processor's init(): creates its state variables and manages the current key's
// timers. Valid for the processor's lifetime.
template <class K>
class ProcessorHandle {
 public:
  explicit ProcessorHandle(detail::TwsRuntime<K>* runtime) : runtime_(runtime) {}

  // Variables are told apart by name; every processor instance registers the same ones in the
  // same order.
  template <class T>
  ValueState<T> valueState(const std::string& name, TTLConfig ttl = {});
  template <class T>
  ListState<T> listState(const std::string& name, TTLConfig ttl = {});
  template <class UK, class UV>
  MapState<UK, UV> mapState(const std::string& name, TTLConfig ttl = {});

  // Timers of the current key, in the query's time mode (milliseconds since the epoch).
  void registerTimer(int64_t expiryMs);
  void deleteTimer(int64_t expiryMs);
  std::vector<int64_t> listTimers() const;
  TimeMode timeMode() const;

 private:
  detail::TwsRuntime<K>* runtime_;
};

}  // namespace dataflow
