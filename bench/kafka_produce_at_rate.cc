// Produces "key<TAB>value" lines to a topic at a fixed rate, so that a live job's latency can be
// measured at rates the source database, Debezium and the simulator cannot reach on this machine
// (bench/e2e/run.sh: Kafka append -> warehouse at 10 000 events/s). Records are sent in steps of
// 1 ms worth of the rate, each step at its due time; prints the rate reached.
//   kafka_produce_at_rate BOOTSTRAP TOPIC RATE FILE
// Or creates TOPIC (one partition) stamping each record with the broker's append time, so that a
// latency measured from the records' timestamps starts when a record is in Kafka, whatever delays
// the producer on a busy machine:
//   kafka_produce_at_rate BOOTSTRAP TOPIC --create-log-append-time
#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {
int failed = 0;
void onDelivery(rd_kafka_t*, const rd_kafka_message_t* m, void*) {
  if (m->err && failed++ == 0) std::fprintf(stderr, "kafka_produce_at_rate: %s\n", rd_kafka_err2str(m->err));
}
}  // namespace

// Creates `topic` with message.timestamp.type=LogAppendTime; returns the process exit code.
int createLogAppendTimeTopic(const char* bootstrap, const char* topic) {
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof err) != RD_KAFKA_CONF_OK) {
    std::fprintf(stderr, "kafka_produce_at_rate: %s\n", err);
    return 2;
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    std::fprintf(stderr, "kafka_produce_at_rate: %s\n", err);
    return 1;
  }
  rd_kafka_NewTopic_t* nt = rd_kafka_NewTopic_new(topic, 1, -1, err, sizeof err);
  rd_kafka_NewTopic_set_config(nt, "message.timestamp.type", "LogAppendTime");
  rd_kafka_queue_t* queue = rd_kafka_queue_new(rk);
  rd_kafka_CreateTopics(rk, &nt, 1, nullptr, queue);
  rd_kafka_event_t* event = rd_kafka_queue_poll(queue, 30000);
  int code = 0;
  if (!event) {
    std::fprintf(stderr, "kafka_produce_at_rate: creating %s timed out\n", topic);
    code = 1;
  } else {
    size_t n = 0;
    const rd_kafka_topic_result_t** results =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(event), &n);
    for (size_t i = 0; i < n; ++i) {
      if (rd_kafka_topic_result_error(results[i])) {
        std::fprintf(stderr, "kafka_produce_at_rate: creating %s: %s\n", topic, rd_kafka_topic_result_error_string(results[i]));
        code = 1;
      }
    }
    rd_kafka_event_destroy(event);
  }
  rd_kafka_queue_destroy(queue);
  rd_kafka_NewTopic_destroy(nt);
  rd_kafka_destroy(rk);
  return code;
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[3]) == "--create-log-append-time") return createLogAppendTimeTopic(argv[1], argv[2]);
  if (argc != 5) {
    std::fprintf(stderr, "usage: kafka_produce_at_rate BOOTSTRAP TOPIC RATE FILE | BOOTSTRAP TOPIC --create-log-append-time\n");
    return 2;
  }
  const double rate = std::atof(argv[3]);
  if (rate <= 0) {
    std::fprintf(stderr, "kafka_produce_at_rate: RATE must be a positive number of records per second, not '%s'\n", argv[3]);
    return 2;
  }
  std::ifstream in(argv[4]);
  if (!in) {
    std::fprintf(stderr, "kafka_produce_at_rate: cannot read %s\n", argv[4]);
    return 2;
  }
  std::vector<std::pair<std::string, std::string>> records;
  for (std::string line; std::getline(in, line);) {
    auto tab = line.find('\t');
    if (tab == std::string::npos) continue;
    records.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }

  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  auto set = [&](const char* k, const char* v) {
    if (rd_kafka_conf_set(conf, k, v, err, sizeof err) != RD_KAFKA_CONF_OK) {
      std::fprintf(stderr, "kafka_produce_at_rate: %s\n", err);
      std::exit(2);
    }
  };
  set("bootstrap.servers", argv[1]);
  set("linger.ms", "0");  // each step goes out at once: the records' timestamps are their send times
  rd_kafka_conf_set_dr_msg_cb(conf, onDelivery);
  rd_kafka_t* producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!producer) {
    std::fprintf(stderr, "kafka_produce_at_rate: %s\n", err);
    return 1;
  }
  // Connected, with the topic's leader known, before the clock starts: a record's timestamp is
  // taken when it is handed to the producer, so a record queued behind the connection would seem
  // late in the warehouse.
  rd_kafka_topic_t* topic = rd_kafka_topic_new(producer, argv[2], nullptr);
  const rd_kafka_metadata_t* metadata = nullptr;
  if (rd_kafka_resp_err_t e = rd_kafka_metadata(producer, 0, topic, &metadata, 10000)) {
    std::fprintf(stderr, "kafka_produce_at_rate: metadata of %s: %s\n", argv[2], rd_kafka_err2str(e));
    return 1;
  }
  rd_kafka_metadata_destroy(metadata);
  rd_kafka_topic_destroy(topic);
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  size_t sent = 0;
  for (int64_t step = 1; sent < records.size(); ++step) {
    const auto due = start + std::chrono::microseconds(step * 1000);
    std::this_thread::sleep_until(due);
    const auto target = static_cast<size_t>(rate * static_cast<double>(step) / 1000.0);
    for (; sent < records.size() && sent < target; ++sent) {
      auto& [key, value] = records[sent];
      rd_kafka_resp_err_t e;
      while ((e = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(argv[2]), RD_KAFKA_V_KEY(key.data(), key.size()),
                                    RD_KAFKA_V_VALUE(value.data(), value.size()), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                    RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(producer, 10);
      }
      if (e) {
        std::fprintf(stderr, "kafka_produce_at_rate: %s\n", rd_kafka_err2str(e));
        return 1;
      }
    }
    rd_kafka_poll(producer, 0);
  }
  if (rd_kafka_flush(producer, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR || failed > 0) {
    std::fprintf(stderr, "kafka_produce_at_rate: %d records not delivered\n", failed + rd_kafka_outq_len(producer));
    return 1;
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("{\"records\": %zu, \"seconds\": %.3f, \"records_per_second\": %.0f}\n", sent, seconds,
              static_cast<double>(sent) / seconds);
  rd_kafka_destroy(producer);
  return 0;
}
