// The README's example: an in-memory source, a fused chain, dead letters, and foreachBatch.
#include <dataflow/dataflow.h>

#include <iostream>

struct Order { int64_t id; int64_t cents; };

int main() {
  dataflow::Session session({.workerThreads = 2});
  auto input = std::make_shared<dataflow::MemoryStream<std::string>>("orders");
  input->addData({"1:250", "2:-5", "oops", "3:1200"});

  int64_t total = 0;
  auto query = session.readStream(input)
      .parse([](const std::string& line) -> dataflow::Result<Order> {
        auto colon = line.find(':');
        if (colon == std::string::npos) return dataflow::parseError("malformed", "no ':'");
        return Order{std::stoll(line.substr(0, colon)), std::stoll(line.substr(colon + 1))};
      })
      .filter([](const Order& o) { return o.cents > 0; })
      .map([](const Order& o) { return o.cents; })
      .deadLetters([](std::span<const dataflow::DeadLetter> bad, const dataflow::BatchInfo&) {
        for (const auto& d : bad) std::cout << "dead letter: " << d.payload << "\n";
      })
      .writeStream()
      .queryName("quickstart")
      .trigger(dataflow::Trigger::availableNow())
      .foreachBatch([&](const dataflow::Batch<int64_t>& batch, const dataflow::BatchInfo&) {
        for (int64_t cents : batch.rows()) total += cents;
      })
      .start();
  query.awaitTermination();
  std::cout << "total cents: " << total << "\n";
  return total == 1450 ? 0 : 1;
}
