// Event time, watermarks and windows.
//
// Event time is the time a record carries (when the order was placed), as opposed to when it is
// processed. A record's event time is given by a function of the record returning milliseconds
// since the epoch (an integer) or a std::chrono::time_point. The watermark is the engine's bound on
// how late records may arrive: after batch N it is max(event time seen up to N) - delay, it never
// goes back, and batch N + 1 runs with it (Spark's rule; the value is kept in the checkpoint's
// offsets and commit logs, so a replayed batch runs with the watermark it first ran with).
// Scaled out (sources assigned by a consumer group), each source partition has a watermark of
// its own instead, kept with its state (detail/partition_watermarks.h).
//
// Windows group records by event time: tumbling (fixed, non-overlapping), sliding (fixed size,
// every `slide`; a record belongs to size/slide windows). A window is [start, end) in
// milliseconds; windows are aligned to the epoch, as Spark's are.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>

#include "dataflow/error.h"
#include "dataflow/state.h"

namespace dataflow {

// The watermark before any event was seen: nothing is late.
inline constexpr int64_t kNoWatermark = std::numeric_limits<int64_t>::min();

namespace detail {
template <class T>
inline constexpr bool kIsTimePoint = false;
template <class C, class D>
inline constexpr bool kIsTimePoint<std::chrono::time_point<C, D>> = true;
}  // namespace detail

// Milliseconds since the epoch from an integer (taken as milliseconds) or a time_point.
template <class V>
int64_t toEventTimeMs(const V& v) {
  if constexpr (detail::kIsTimePoint<V>) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(v.time_since_epoch()).count();
  } else {
    static_assert(std::is_integral_v<V>, "an event time is integer milliseconds since the epoch or a std::chrono::time_point");
    return static_cast<int64_t>(v);
  }
}

// T -> its event time (integer milliseconds since the epoch, or a std::chrono::time_point).
template <class F, class T>
concept EventTimeFunction =
    std::invocable<const F&, const T&> &&
    (std::is_integral_v<std::decay_t<std::invoke_result_t<const F&, const T&>>> ||
     detail::kIsTimePoint<std::decay_t<std::invoke_result_t<const F&, const T&>>>);

// A window of event time, [startMs, endMs).
struct Window {
  int64_t startMs = 0;
  int64_t endMs = 0;
  auto operator<=>(const Window&) const = default;
  bool operator==(const Window&) const = default;
  template <class H>
  friend H AbslHashValue(H h, const Window& w) {
    return H::combine(std::move(h), w.startMs, w.endMs);
  }
};

// A grouping key within a window: what a windowed aggregation groups by.
template <class K>
struct Windowed {
  Window window;
  K key;
  auto operator<=>(const Windowed&) const = default;
  bool operator==(const Windowed&) const = default;
  template <class H>
  friend H AbslHashValue(H h, const Windowed& w) {
    return H::combine(std::move(h), w.window, w.key);
  }
};

template <class K>
struct StateCodec<Windowed<K>, std::enable_if_t<!kBytewiseState<Windowed<K>>>> {
  static void encode(const Windowed<K>& v, std::string& out) {
    StateCodec<Window>::encode(v.window, out);
    StateCodec<K>::encode(v.key, out);
  }
  static Windowed<K> decode(std::string_view& in) {
    Window w = StateCodec<Window>::decode(in);
    return Windowed<K>{w, StateCodec<K>::decode(in)};
  }
};

// How records are assigned to windows.
class WindowSpec {
 public:
  enum class Kind { kTumbling, kSliding };

  Kind kind() const { return kind_; }
  int64_t sizeMs() const { return sizeMs_; }
  int64_t slideMs() const { return slideMs_; }
  // How many windows a record belongs to.
  int64_t windowsPerRecord() const { return sizeMs_ / slideMs_ + (sizeMs_ % slideMs_ ? 1 : 0); }

  // Calls fn(Window) for every window containing `eventMs`, oldest first.
  template <class F>
  void forEachWindow(int64_t eventMs, F&& fn) const {
    // The newest window start at or before the event (floor division, also for negative times).
    int64_t rem = eventMs % slideMs_;
    if (rem < 0) rem += slideMs_;
    int64_t last = eventMs - rem;
    int64_t first = last - (windowsPerRecord() - 1) * slideMs_;
    for (int64_t start = first; start <= last; start += slideMs_) {
      if (eventMs < start + sizeMs_) fn(Window{start, start + sizeMs_});
    }
  }
  std::string toString() const;

 private:
  friend WindowSpec tumbling(std::chrono::milliseconds size);
  friend WindowSpec sliding(std::chrono::milliseconds size, std::chrono::milliseconds slide);
  WindowSpec(Kind kind, int64_t size, int64_t slide) : kind_(kind), sizeMs_(size), slideMs_(slide) {}
  Kind kind_;
  int64_t sizeMs_;
  int64_t slideMs_;
};

// Session windows: a key's records closer than `gap` to each other form one window, from the first
// record's time to the last one's + gap. A record that bridges two sessions merges them.
struct SessionSpec {
  int64_t gapMs = 0;
  std::string toString() const { return "session(gap " + std::to_string(gapMs) + " ms)"; }
};
// Throws ConfigurationError for a gap <= 0.
SessionSpec session(std::chrono::milliseconds gap);

// Fixed windows of `size` that do not overlap. Throws ConfigurationError for a size <= 0.
WindowSpec tumbling(std::chrono::milliseconds size);
// Windows of `size` starting every `slide`. Throws ConfigurationError unless 0 < slide <= size.
WindowSpec sliding(std::chrono::milliseconds size, std::chrono::milliseconds slide);

}  // namespace dataflow
