// librdkafka handles owned by unique_ptr, and the one place where its error codes become
// exceptions (internal to connectors/kafka).
#pragma once

#include <librdkafka/rdkafka.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "dataflow/error.h"

namespace dataflow::kafka::detail {

// Forgets the handle's refusal (see refusal()) and destroys it.
struct HandleDeleter {
  void operator()(rd_kafka_t* rk) const;
};
using Handle = std::unique_ptr<rd_kafka_t, HandleDeleter>;

struct MessageDeleter {
  void operator()(rd_kafka_message_t* m) const { rd_kafka_message_destroy(m); }
};
using Message = std::unique_ptr<rd_kafka_message_t, MessageDeleter>;

struct PartitionListDeleter {
  void operator()(rd_kafka_topic_partition_list_t* l) const { rd_kafka_topic_partition_list_destroy(l); }
};
using PartitionList = std::unique_ptr<rd_kafka_topic_partition_list_t, PartitionListDeleter>;

// Transient errors: a broker may come back, a leader may be elected, a request may time out.
bool isRetriable(rd_kafka_resp_err_t err);

// Throws ConnectorError (retriable per isRetriable) unless err is NO_ERROR. With the handle `rk`,
// an error behind which the broker refused the client (see refusal()) is thrown as not retriable,
// with the broker's reason: retrying with the same credentials or certificates cannot succeed.
void check(rd_kafka_resp_err_t err, const std::string& what, const rd_kafka_t* rk = nullptr);

// Why the broker refused handle `rk` lately, if it did: a failed SASL login ("SASL authentication
// error: ... invalid credentials") or TLS handshake ("certificate verify failed"). librdkafka only
// logs these and reports "all brokers down" or a timeout to the caller; handles created by
// createHandle record them from their log callback.
std::optional<std::string> refusal(const rd_kafka_t* rk);

// Runs a blocking request, given as request(timeoutMs), in slices of at most a second until it
// answers, `timeoutMs` has passed, or the broker refused handle `rk`: a refused login is known
// within a connection attempt (well under a second), while the request itself would wait out its
// whole timeout before check() could say why. Also stops, answering RD_KAFKA_RESP_ERR__INTR,
// once `interrupted` (if given) is set: the query is stopping.
rd_kafka_resp_err_t untilAnsweredOrRefused(const rd_kafka_t* rk, int timeoutMs,
                                           const std::function<rd_kafka_resp_err_t(int sliceMs)>& request,
                                           const std::atomic<bool>* interrupted = nullptr);

// Creates a handle from properties; throws ConfigurationError naming a rejected property. Logs go
// to spdlog; secrets never appear (librdkafka does not log them, and we never log properties).
// `configure`, if given, may set callbacks on the configuration before the handle is created.
Handle createHandle(rd_kafka_type_t type, const std::map<std::string, std::string>& properties,
                    const std::function<void(rd_kafka_conf_t*)>& configure = {});

}  // namespace dataflow::kafka::detail
