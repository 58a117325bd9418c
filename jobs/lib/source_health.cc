#include "source_health.h"

#include <httplib.h>
#include <spdlog/spdlog.h>

#include <boost/json.hpp>

namespace cdc {

SourceHealthWatcher::SourceHealthWatcher(SourceHealthOptions options, std::shared_ptr<dataflow::monitoring::QueryMetrics> metrics)
    : options_(std::move(options)), metrics_(std::move(metrics)) {
  thread_ = std::thread([this] { run(); });
}

SourceHealthWatcher::~SourceHealthWatcher() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void SourceHealthWatcher::run() {
  auto next = std::chrono::steady_clock::now();
  while (!stop_) {
    if (std::chrono::steady_clock::now() >= next) {
      check();
      next = std::chrono::steady_clock::now() + options_.interval;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

void SourceHealthWatcher::check() {
  dataflow::monitoring::QueryMetrics::SourceHealth h;
  h.slot = options_.slot;
  try {
    if (!conn_ || !conn_->isOpen()) {
      conn_ = std::make_unique<dataflow::postgres::Connection>(dataflow::postgres::Connection::open(options_.source));
    }
    auto r = conn_->execParams(
        "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
        "FROM pg_replication_slots WHERE slot_name = $1",
        {options_.slot});
    if (r.rows() == 1) {
      h.slotActive = r.value(0, 0) == "t";
      h.slotLagBytes = r.isNull(0, 1) ? 0 : r.int64(0, 1);
    } else if (lastLag_ != -1 || growing_ == 0) {
      spdlog::warn("source health: replication slot '{}' does not exist", options_.slot);
    }
  } catch (const std::exception& e) {
    conn_.reset();
    spdlog::warn("source health: cannot read replication slot '{}': {}", options_.slot, e.what());
  }
  if (h.slotLagBytes > options_.lagAlertBytes && h.slotLagBytes > lastLag_) {
    if (++growing_ >= 3) {
      spdlog::warn("source health: replication slot '{}' lags {} bytes and keeps growing (alert above {})", options_.slot,
                   h.slotLagBytes, options_.lagAlertBytes);
    }
  } else {
    growing_ = 0;
  }
  lastLag_ = h.slotLagBytes;

  if (!options_.connectUrl.empty()) {
    h.connector = options_.connector;
    httplib::Client client(options_.connectUrl);
    client.set_connection_timeout(2, 0);
    client.set_read_timeout(3, 0);
    auto res = client.Get(("/connectors/" + options_.connector + "/status").c_str());
    if (!res) {
      h.connectorState = "unreachable";
    } else if (res->status == 404) {
      h.connectorState = "MISSING";
    } else {
      boost::json::error_code ec;
      auto v = boost::json::parse(res->body, ec);
      if (!ec && v.is_object()) {
        const auto& o = v.as_object();
        if (auto c = o.if_contains("connector"); c && c->is_object()) {
          if (auto st = c->as_object().if_contains("state"); st && st->is_string()) h.connectorState = std::string(st->as_string());
        }
        if (auto tasks = o.if_contains("tasks"); tasks && tasks->is_array()) {
          for (const auto& t : tasks->as_array()) {
            if (auto st = t.as_object().if_contains("state"); st && st->is_string() && st->as_string() == "FAILED") ++h.failedTasks;
          }
        }
      } else {
        h.connectorState = "unreachable";
      }
    }
    std::string state = h.connectorState + (h.failedTasks ? "+failed tasks" : "");
    if (state != "RUNNING" && state != lastState_) {
      spdlog::warn("source health: connector '{}' is {} ({} failed tasks): changes are not being captured", options_.connector,
                   h.connectorState, h.failedTasks);
    } else if (state == "RUNNING" && !lastState_.empty() && lastState_ != "RUNNING") {
      spdlog::info("source health: connector '{}' is RUNNING again", options_.connector);
    }
    lastState_ = state;
  }
  metrics_->recordSourceHealth(h);
}

}  // namespace cdc
