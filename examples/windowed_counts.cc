// The README's stateful example: orders per customer per minute, a tumbling event-time window
// with a watermark, emitted once per window (append mode), checkpointed in a directory, and run
// twice to show that the state survives a restart.
#include <dataflow/dataflow.h>

#include <filesystem>
#include <iostream>

using namespace std::chrono_literals;

struct Order {
  int64_t customer;
  int64_t cents;
  int64_t placedAtMs;  // event time
};

int main() {
  auto checkpoint = std::filesystem::temp_directory_path() / "dataflow-example-windowed-counts";
  std::filesystem::remove_all(checkpoint);
  auto orders = std::make_shared<dataflow::MemoryStream<Order>>("orders");
  int64_t windows = 0, totalCents = 0;

  auto run = [&] {
    dataflow::Session session({.workerThreads = 2});
    auto query = session.readStream(orders)
        .withWatermark(&Order::placedAtMs, 30s)              // orders may arrive 30 s late
        .groupByKey(&Order::customer)
        .window(dataflow::tumbling(1min), &Order::placedAtMs)
        .agg(dataflow::count(), dataflow::sum(&Order::cents))
        .writeStream()
        .queryName("orders-per-minute")
        .outputMode(dataflow::OutputMode::kAppend)            // each window once, when final
        .checkpointLocation(checkpoint)
        .trigger(dataflow::Trigger::availableNow())
        .foreachBatch([&](const auto& batch, const dataflow::BatchInfo& info) {
          for (const auto& [key, value] : batch.rows()) {
            auto [count, cents] = value;
            std::cout << "batch " << info.batchId << ": customer " << key.key << ", minute starting "
                      << key.window.startMs / 1000 << " s: " << count << " orders, " << cents << " cents\n";
            ++windows;
            totalCents += cents;
          }
        })
        .start();
    query.awaitTermination();
  };

  orders->addData({{1, 250, 1'000}, {2, 100, 5'000}, {1, 300, 59'000}, {1, 700, 61'000}});
  run();  // the watermark (61 s - 30 s) has not closed the first minute yet: nothing emitted
  // 20 s is still within the delay; 200 s moves the watermark to 170 s: minutes 0 and 1 are final.
  orders->addData({{2, 50, 20'000}, {1, 900, 125'000}, {3, 10, 200'000}});
  run();  // restarts from the checkpoint: the first run's counts are in the restored state
  std::filesystem::remove_all(checkpoint);
  std::cout << windows << " windows, " << totalCents << " cents\n";
  return windows == 3 && totalCents == 1400 ? 0 : 1;
}
