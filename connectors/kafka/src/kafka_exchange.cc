// KafkaExchange: internal topics made with the admin API, written by one idempotent producer per
// exchange, read back by KafkaSource.
#include "dataflow/kafka/kafka_exchange.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <thread>

#include "dataflow/kafka/kafka_source.h"
#include "rdkafka_util.h"

namespace dataflow::kafka {
namespace {

bool legalTopicName(const std::string& name) {
  return !name.empty() && name.size() <= 249 && name != "." && name != ".." &&
         std::all_of(name.begin(), name.end(), [](unsigned char c) {
           return std::isalnum(c) || c == '.' || c == '_' || c == '-';
         });
}

// Properties librdkafka knows for consumers only (a producer warns about each).
bool consumerOnly(const std::string& property) {
  static const char* const kNames[] = {"session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy",
                                       "max.poll.interval.ms", "group.instance.id", "group.protocol",
                                       "group.remote.assignor", "isolation.level", "check.crcs",
                                       "enable.partition.eof", "allow.auto.create.topics", "coordinator.query.interval.ms"};
  for (const char* name : kNames) {
    if (property == name) return true;
  }
  return property.starts_with("fetch.") || property.starts_with("queued.") || property.starts_with("auto.commit.");
}

struct AdminResultDeleter {
  void operator()(rd_kafka_event_t* e) const { rd_kafka_event_destroy(e); }
};

}  // namespace

struct KafkaExchange::Impl {
  KafkaExchangeOptions options;
  detail::Handle producer;  // also runs the admin and metadata requests
  std::mutex mu;
  std::map<std::string, std::shared_ptr<ExchangeChannel>> channels;
  std::atomic<int> failures{0};
  std::mutex errorMu;
  std::string firstError;

  static void onDelivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    if (!m->err) return;
    auto* self = static_cast<Impl*>(opaque);
    if (self->failures++ == 0) {
      std::lock_guard lock(self->errorMu);
      self->firstError = rd_kafka_err2str(m->err);
    }
  }

  int timeoutMs() const { return 10000; }

  // The producer, made with the first channel: a query that regroups nothing costs nothing.
  void connect() {
    std::map<std::string, std::string> props = {{"enable.idempotence", "true"}, {"acks", "all"}, {"linger.ms", "5"}};
    for (const auto& [k, v] : options.kafka) {
      if (!consumerOnly(k)) props[k] = v;  // the job's settings serve its consumers too
    }
    props["bootstrap.servers"] = options.bootstrapServers;
    producer = detail::createHandle(RD_KAFKA_PRODUCER, props, [this](rd_kafka_conf_t* conf) {
      rd_kafka_conf_set_dr_msg_cb(conf, &Impl::onDelivery);
      rd_kafka_conf_set_opaque(conf, this);
    });
  }

  // The topic's partitions, or 0 when it does not exist.
  int32_t partitionsOf(const std::string& topic) {
    const rd_kafka_metadata_t* md = nullptr;
    auto err = detail::untilAnsweredOrRefused(producer.get(), timeoutMs(), [&](int ms) {
      return rd_kafka_metadata(producer.get(), 1, nullptr, &md, ms);
    });
    detail::check(err, "metadata request", producer.get());
    int32_t n = 0;
    for (int t = 0; t < md->topic_cnt; ++t) {
      if (topic == md->topics[t].topic && md->topics[t].err == RD_KAFKA_RESP_ERR_NO_ERROR) n = md->topics[t].partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    return n;
  }

  void createTopic(const std::string& topic, int32_t partitions) {
    char err[512];
    rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic.c_str(), partitions, options.replicationFactor, err, sizeof err);
    if (!nt) throw ConfigurationError("Kafka exchange: cannot describe topic " + topic + ": " + err);
    // What the query has not committed yet must not expire with the broker's default retention.
    rd_kafka_NewTopic_set_config(nt, "retention.ms", "-1");
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "delete");
    rd_kafka_queue_t* queue = rd_kafka_queue_new(producer.get());
    rd_kafka_CreateTopics(producer.get(), &nt, 1, nullptr, queue);
    std::unique_ptr<rd_kafka_event_t, AdminResultDeleter> event(rd_kafka_queue_poll(queue, timeoutMs() * 3));
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(queue);
    if (!event) throw ConnectorError("Kafka exchange: creating topic " + topic + " timed out", true);
    if (rd_kafka_event_error(event.get())) {
      detail::check(rd_kafka_event_error(event.get()), "creating topic " + topic, producer.get());
    }
    const rd_kafka_CreateTopics_result_t* result = rd_kafka_event_CreateTopics_result(event.get());
    size_t n = 0;
    const rd_kafka_topic_result_t** topics = rd_kafka_CreateTopics_result_topics(result, &n);
    for (size_t i = 0; i < n; ++i) {
      auto e = rd_kafka_topic_result_error(topics[i]);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) continue;
      const char* why = rd_kafka_topic_result_error_string(topics[i]);
      throw ConnectorError("Kafka exchange: cannot create topic " + topic + ": " + (why ? why : rd_kafka_err2str(e)),
                           detail::isRetriable(e));
    }
    spdlog::info("Kafka exchange: created topic {} with {} partitions", topic, partitions);
  }
};

namespace {

class KafkaChannel final : public ExchangeChannel {
 public:
  KafkaChannel(std::shared_ptr<KafkaExchange::Impl> exchange, std::string topic, int32_t partitions)
      : exchange_(std::move(exchange)), topic_(std::move(topic)), partitions_(partitions) {
    const auto& o = exchange_->options;
    KafkaSourceOptions source;
    source.bootstrapServers = o.bootstrapServers;
    source.subscribe = {topic_};
    source.startingOffsets = "earliest";
    source.maxOffsetsPerTrigger = o.maxOffsetsPerTrigger;
    if (!o.consumerGroup.empty()) source.consumerGroup = o.consumerGroup + "." + topic_;
    source.kafka = o.kafka;
    source.fedByQuery = true;
    source.deleteCommittedRecords = true;  // nothing before a committed offset is read again
    source_ = std::make_shared<KafkaSource>(std::move(source));
    rkt_ = rd_kafka_topic_new(exchange_->producer.get(), topic_.c_str(), nullptr);
    if (!rkt_) throw ConnectorError("Kafka exchange: cannot open topic " + topic_, false);
  }
  ~KafkaChannel() override { rd_kafka_topic_destroy(rkt_); }

  int32_t partitions() const override { return partitions_; }

  void send(int32_t partition, std::string_view key, std::string_view value) override {
    rd_kafka_t* rk = exchange_->producer.get();
    while (rd_kafka_produce(rkt_, partition, RD_KAFKA_MSG_F_COPY, const_cast<char*>(value.data()), value.size(),
                            key.data(), key.size(), nullptr) != 0) {
      auto err = rd_kafka_last_error();
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) detail::check(err, "producing to " + topic_, rk);
      rd_kafka_poll(rk, 10);
    }
  }

  void flush() override {
    rd_kafka_t* rk = exchange_->producer.get();
    auto err = rd_kafka_flush(rk, static_cast<int>(exchange_->options.flushTimeout.count()));
    if (err) detail::check(err, "flushing to " + topic_, rk);
    if (int failed = exchange_->failures.exchange(0); failed > 0) {
      std::lock_guard lock(exchange_->errorMu);
      // The records of this attempt may be partly in the topic: the batch is prepared again and
      // sends them again, which the reader's versions (tables) and origins (stream joins) make harmless.
      throw ConnectorError("Kafka exchange: " + std::to_string(failed) + " records to " + topic_ +
                               " were not delivered: " + exchange_->firstError, true);
    }
  }

  std::shared_ptr<TypedSource<LogRecord>> source() override { return source_; }

 private:
  std::shared_ptr<KafkaExchange::Impl> exchange_;
  std::string topic_;
  int32_t partitions_;
  rd_kafka_topic_t* rkt_ = nullptr;
  std::shared_ptr<KafkaSource> source_;
};

}  // namespace

KafkaExchange::KafkaExchange(KafkaExchangeOptions options) : impl_(std::make_shared<Impl>()) {
  if (options.bootstrapServers.empty()) throw ConfigurationError("Kafka exchange: bootstrapServers is required");
  if (options.partitions < 0) throw ConfigurationError("Kafka exchange: partitions must be >= 0");
  for (const char* ours : {"group.id", "enable.auto.commit", "auto.offset.reset", "transactional.id"}) {
    if (options.kafka.contains(ours)) {
      throw ConfigurationError(std::string("Kafka exchange: property '") + ours + "' is set by the exchange itself");
    }
  }
  impl_->options = std::move(options);
}

KafkaExchange::~KafkaExchange() = default;

std::string KafkaExchange::description() const { return "KafkaExchange[" + impl_->options.bootstrapServers + "]"; }

std::shared_ptr<ExchangeChannel> KafkaExchange::channel(const std::string& name) {
  if (!legalTopicName(name)) {
    throw ConfigurationError("Kafka exchange: '" + name + "' is not a legal topic name (letters, digits, '.', '_', '-'; " +
                             "it is made of the query name): rename the query");
  }
  std::lock_guard lock(impl_->mu);
  if (auto it = impl_->channels.find(name); it != impl_->channels.end()) return it->second;
  if (!impl_->producer) impl_->connect();
  int32_t partitions = impl_->partitionsOf(name);
  if (partitions == 0) {
    int32_t wanted = impl_->options.partitions;
    if (wanted == 0 && !impl_->options.partitionsLike.empty()) {
      wanted = impl_->partitionsOf(impl_->options.partitionsLike);
      if (wanted == 0) {
        throw ConnectorError("Kafka exchange: topic " + impl_->options.partitionsLike +
                                 " (partitionsLike) does not exist yet, so the exchange cannot be sized after it", true);
      }
    }
    impl_->createTopic(name, std::max(wanted, 1));
    // Another instance may have created it first, with its own count: the broker's is the one.
    for (int attempt = 0; attempt < 50 && (partitions = impl_->partitionsOf(name)) == 0; ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (partitions == 0) throw ConnectorError("Kafka exchange: topic " + name + " was created but is not visible", true);
  }
  auto channel = std::make_shared<KafkaChannel>(impl_, name, partitions);
  impl_->channels[name] = channel;
  return channel;
}

}  // namespace dataflow::kafka
