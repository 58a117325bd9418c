// libFuzzer target for the Debezium change-event parser: any bytes must give a row or a
// ParseError, never a crash, a leak or a sanitizer report. Seeds: tests/data/debezium.
#include <dataflow/debezium/change_event.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

namespace dbz = dataflow::debezium;

struct Row {
  int64_t id = 0;
  std::optional<int32_t> small;
  std::optional<bool> flag;
  std::optional<double> ratio;
  std::optional<std::string> text;
  std::optional<dbz::Decimal> amount, scaled;
  std::optional<dbz::Timestamp> ts, tsMs;
  std::optional<dbz::Date> day;
};

const auto kMapping = dbz::TableMapping<Row>()
                          .key("id", &Row::id)
                          .column("small", &Row::small)
                          .column("flag", &Row::flag)
                          .column("ratio", &Row::ratio)
                          .column("email", &Row::text)
                          .column("amount", &Row::amount)
                          .column("price", &Row::scaled, {.decimalScale = 2})
                          .column("ts", &Row::ts)
                          .column("ts_ms", &Row::tsMs, {.integerTimestamp = dbz::IntegerTimestamp::kMillis})
                          .column("day", &Row::day);

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  auto event = kMapping.decode(input);
  if (event.ok()) {
    const auto& e = event.value();
    if (e.row.ts) (void)e.row.ts->toString();
    if (e.row.day) (void)e.row.day->toString();
  } else {
    (void)event.error().kind.size();
  }
  return 0;
}
