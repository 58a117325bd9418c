// transformWithState: user sessions closed by inactivity. Per user, a ValueState counts clicks and
// a ListState keeps the pages; an event-time timer one minute after the newest click closes the
// session and emits it. Copy this to write your own stateful logic.
#include <dataflow/dataflow.h>

#include <iostream>

using namespace std::chrono_literals;

struct Click {
  std::string user;
  std::string page;
  int64_t atMs;  // event time
};

template <>
struct dataflow::StateCodec<Click> {  // Click is kept in state (ListState<Click> would need it)
  static void encode(const Click& c, std::string& out) {
    StateCodec<std::string>::encode(c.user, out);
    StateCodec<std::string>::encode(c.page, out);
    StateCodec<int64_t>::encode(c.atMs, out);
  }
  static Click decode(std::string_view& in) {
    Click c;
    c.user = StateCodec<std::string>::decode(in);
    c.page = StateCodec<std::string>::decode(in);
    c.atMs = StateCodec<int64_t>::decode(in);
    return c;
  }
};

struct UserSessions {
  using Output = std::string;  // one line per closed session
  dataflow::ValueState<int64_t> clicks;
  dataflow::ListState<std::string> pages;
  dataflow::ValueState<int64_t> timer;
  dataflow::ProcessorHandle<std::string>* handle = nullptr;

  void init(dataflow::ProcessorHandle<std::string>& h) {
    handle = &h;
    clicks = h.valueState<int64_t>("clicks");
    pages = h.listState<std::string>("pages", {.ttl = 24h});  // a day at most, whatever happens
    timer = h.valueState<int64_t>("timer");
  }

  void handleInputRows(const std::string&, std::span<const Click> rows, dataflow::TimerValues,
                       dataflow::Collector<Output>&) {
    clicks.update(clicks.getOrDefault(0) + static_cast<int64_t>(rows.size()));
    int64_t newest = 0;
    for (const Click& c : rows) {
      pages.append(c.page);
      newest = std::max(newest, c.atMs);
    }
    if (auto old = timer.get()) handle->deleteTimer(*old);  // the session goes on: move its end
    timer.update(newest + 60'000);
    handle->registerTimer(newest + 60'000);
  }

  void handleExpiredTimer(const std::string& user, dataflow::ExpiredTimer t, dataflow::TimerValues,
                          dataflow::Collector<Output>& out) {
    std::string line = user + ": " + std::to_string(clicks.getOrDefault(0)) + " clicks until " +
                       std::to_string(t.expiryMs / 1000) + " s:";
    for (const auto& p : pages.get()) line += " " + p;
    out.emit(line);
    clicks.clear();
    pages.clear();
    timer.clear();
  }
};

int main() {
  dataflow::Session session;
  auto clicks = std::make_shared<dataflow::MemoryStream<Click>>("clicks");
  clicks->addData({{"ana", "/", 0}, {"bo", "/docs", 10'000}, {"ana", "/pricing", 30'000},
                   {"bo", "/docs/state", 50'000}, {"cy", "/", 200'000}});
  std::vector<std::string> sessions;
  auto query = session.readStream(clicks)
      .withWatermark(&Click::atMs, 5s)
      .groupByKey(&Click::user)
      .transformWithState([] { return UserSessions{}; }, dataflow::TimeMode::kEventTime)
      .writeStream()
      .outputMode(dataflow::OutputMode::kAppend)
      .trigger(dataflow::Trigger::availableNow())
      .foreachBatch([&](const dataflow::Batch<std::string>& batch, const dataflow::BatchInfo&) {
        for (const auto& line : batch.rows()) {
          std::cout << line << "\n";
          sessions.push_back(line);
        }
      })
      .start();
  query.awaitTermination();
  // The watermark reaches 195 s: ana's (ends 90 s) and bo's (110 s) sessions are closed; cy's is open.
  return sessions.size() == 2 ? 0 : 1;
}
