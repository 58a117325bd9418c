// When a query runs its next batch. Mirrors Spark's Trigger: the default (as soon as the previous
// batch ends), ProcessingTime(interval), AvailableNow (drain what exists now, in rate-limited
// batches, then stop) and Once (one batch of everything available, then stop).
#pragma once

#include <chrono>
#include <string>

namespace dataflow {

class Trigger {
 public:
  enum class Kind { kProcessingTime, kAvailableNow, kOnce };

  // Next batch as soon as the previous one ends (ProcessingTime(0)).
  static Trigger defaultTrigger() { return Trigger(Kind::kProcessingTime, {}); }
  // A batch every `interval`; a batch that overruns is followed immediately by the next.
  static Trigger processingTime(std::chrono::milliseconds interval) {
    return Trigger(Kind::kProcessingTime, interval);
  }
  static Trigger availableNow() { return Trigger(Kind::kAvailableNow, {}); }
  static Trigger once() { return Trigger(Kind::kOnce, {}); }

  Kind kind() const { return kind_; }
  std::chrono::milliseconds interval() const { return interval_; }
  std::string toString() const;

 private:
  Trigger(Kind kind, std::chrono::milliseconds interval) : kind_(kind), interval_(interval) {}
  Kind kind_;
  std::chrono::milliseconds interval_;
};

}  // namespace dataflow
