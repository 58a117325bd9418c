// Debezium change events parsed and mapped to a typed row: a ~0.6 KB event without schema (the
// pipeline's setting) and a ~3.8 KB event with the embedded schema (the JsonConverter default),
// both real captures (tests/data/debezium), at 1 and 2 threads.
//
//   build/release/bench/parser_bench
#include <benchmark/benchmark.h>
#include <dataflow/debezium/change_event.h>

#include <boost/json.hpp>
#include <fstream>
#include <thread>

namespace {

namespace dbz = dataflow::debezium;

struct Order {
  int64_t id = 0;
  int64_t customerId = 0;
  dbz::Decimal amount;
  std::string status;
  std::optional<dbz::Timestamp> createdAt, updatedAt;
};

const auto kOrders = dbz::TableMapping<Order>()
                         .key("id", &Order::id)
                         .column("customer_id", &Order::customerId)
                         .column("amount", &Order::amount, {.decimalScale = 2})
                         .column("status", &Order::status)
                         .column("created_at", &Order::createdAt)
                         .column("updated_at", &Order::updatedAt);

std::string insertEvent(const std::string& mode) {
  std::ifstream in(std::string(DATAFLOW_TEST_DATA) + "/debezium/" + mode + "-orders.jsonl");
  std::string line;
  std::getline(in, line);  // snapshot read
  std::getline(in, line);  // insert
  return std::string(boost::json::parse(line).as_object()["payload"].as_string());
}

void run(benchmark::State& state, const std::string& event) {
  int64_t ok = 0;
  for (auto _ : state) {
    auto e = kOrders.decode(event);
    ok += e.ok();
    benchmark::DoNotOptimize(e);
  }
  if (ok != state.iterations()) state.SkipWithError("decode failed");
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(event.size()));
}

void BM_DecodeWithoutSchema(benchmark::State& state) {
  static const std::string event = insertEvent("plain");
  run(state, event);
}
void BM_DecodeWithSchema(benchmark::State& state) {
  static const std::string event = insertEvent("schema");
  run(state, event);
}
BENCHMARK(BM_DecodeWithoutSchema)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_DecodeWithSchema)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
