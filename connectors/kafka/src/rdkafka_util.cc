#include "rdkafka_util.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string_view>
#include <unordered_map>

namespace dataflow::kafka::detail {

bool isRetriable(rd_kafka_resp_err_t err) {
  switch (err) {
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:  // the request waited for a connection that did not come
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_FETCH_SESSION_ID_NOT_FOUND:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
      return true;
    default:
      return false;
  }
}

namespace {

// Refusals per live handle, written by librdkafka's threads (log callback), read by the caller's.
struct Refusals {
  std::mutex mu;
  std::unordered_map<const rd_kafka_t*, std::string> byHandle;
};
Refusals& refusals() {
  static Refusals r;
  return r;
}

// A log line that says the broker refused us for good: librdkafka's wording for a failed SASL
// login and for a broker certificate our CA does not vouch for. (Other handshake failures, a broker
// going away mid-handshake say, are transient and stay retriable.)
bool isRefusal(std::string_view message) {
  return message.find("SASL authentication error") != std::string_view::npos ||
         message.find("certificate verify failed") != std::string_view::npos;
}

}  // namespace

void HandleDeleter::operator()(rd_kafka_t* rk) const {
  rd_kafka_destroy(rk);
  std::lock_guard lock(refusals().mu);
  refusals().byHandle.erase(rk);
}

std::optional<std::string> refusal(const rd_kafka_t* rk) {
  if (!rk) return std::nullopt;
  std::lock_guard lock(refusals().mu);
  auto it = refusals().byHandle.find(rk);
  if (it == refusals().byHandle.end()) return std::nullopt;
  return it->second;
}

void check(rd_kafka_resp_err_t err, const std::string& what, const rd_kafka_t* rk) {
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return;
  if (auto reason = refusal(rk)) {
    throw ConnectorError("Kafka: " + what + ": the broker refused the connection: " + *reason +
                             " (check the security.protocol, sasl.* and ssl.* options)",
                         false);
  }
  throw ConnectorError("Kafka: " + what + ": " + rd_kafka_err2str(err), isRetriable(err));
}

rd_kafka_resp_err_t untilAnsweredOrRefused(const rd_kafka_t* rk, int timeoutMs,
                                           const std::function<rd_kafka_resp_err_t(int sliceMs)>& request,
                                           const std::atomic<bool>* interrupted) {
  constexpr int kSliceMs = 1000;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
  while (true) {
    if (interrupted && interrupted->load(std::memory_order_relaxed)) return RD_KAFKA_RESP_ERR__INTR;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    const rd_kafka_resp_err_t err = request(static_cast<int>(std::clamp<int64_t>(left.count(), 1, kSliceMs)));
    if (err != RD_KAFKA_RESP_ERR__TIMED_OUT && err != RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE &&
        err != RD_KAFKA_RESP_ERR__TRANSPORT) {
      return err;
    }
    if (refusal(rk) || std::chrono::steady_clock::now() >= deadline) return err;
  }
}

namespace {

void logCallback(const rd_kafka_t* rk, int level, const char* facility, const char* message) {
  if (level <= 4 && isRefusal(message)) {
    // "sasl_ssl://host:port/bootstrap: SASL authentication error: ..." -> from the reason on.
    std::string_view m(message);
    auto at = m.find("SASL authentication error");
    if (at == std::string_view::npos) at = m.find("SSL handshake failed");
    if (at == std::string_view::npos) at = 0;
    std::lock_guard lock(refusals().mu);
    refusals().byHandle[rk] = std::string(m.substr(at));
  }
  if (level <= 3) {
    spdlog::error("librdkafka {}: {}", facility, message);
  } else if (level <= 4) {
    spdlog::warn("librdkafka {}: {}", facility, message);
  } else {
    spdlog::debug("librdkafka {}: {}", facility, message);
  }
}

}  // namespace

Handle createHandle(rd_kafka_type_t type, const std::map<std::string, std::string>& properties,
                    const std::function<void(rd_kafka_conf_t*)>& configure) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  for (const auto& [key, value] : properties) {
    if (rd_kafka_conf_set(conf, key.c_str(), value.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      // The message names the property; the value may be a secret and is not repeated.
      throw ConfigurationError("Kafka property '" + key + "': " + err);
    }
  }
  rd_kafka_conf_set_log_cb(conf, logCallback);
  if (configure) configure(conf);
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof err);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    throw ConfigurationError(std::string("Kafka: cannot create a client: ") + err);
  }
  return Handle(rk);
}

}  // namespace dataflow::kafka::detail
