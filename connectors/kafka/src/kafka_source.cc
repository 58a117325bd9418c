// The Kafka source. Each partition is read by its own cached consumer handle, assigned (never
// subscribed) at the planned offset, the way Spark caches one consumer per partition: reads of
// different partitions run in parallel without sharing a handle, and a consecutive batch
// continues where the previous one stopped without a seek.
#include "dataflow/kafka/kafka_source.h"

#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>
#include <mutex>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include "rdkafka_util.h"

namespace dataflow::kafka {

using detail::Handle;
using detail::Message;
using detail::PartitionList;
using Clock = std::chrono::steady_clock;

namespace {

// How long a read waits for records that exist before it reads on a new connection (fetch
// restarts on the old one come first; a fetch backing off takes about a second).
constexpr auto kRenewReaderAfter = std::chrono::seconds(5);

std::vector<std::string> splitCommas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    std::string item = s.substr(start, end - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) out.push_back(item);
    start = end + 1;
  }
  return out;
}

int64_t parseInt(const std::string& key, const std::string& value, int64_t min) {
  int64_t out = 0;
  auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), out);
  if (ec != std::errc() || p != value.data() + value.size() || out < min) {
    throw ConfigurationError("Kafka source option '" + key + "': expected an integer >= " + std::to_string(min) +
                             ", got '" + value + "'");
  }
  return out;
}

bool parseBool(const std::string& key, const std::string& value) {
  if (value == "true") return true;
  if (value == "false") return false;
  throw ConfigurationError("Kafka source option '" + key + "': expected true or false, got '" + value + "'");
}

std::string randomSuffix() {
  std::random_device rd;
  return std::to_string(rd()) + std::to_string(rd());
}

}  // namespace

void KafkaSourceOptions::set(const std::string& key, const std::string& value) {
  if (key == "kafka.bootstrap.servers" || key == "bootstrapServers") {
    bootstrapServers = value;
  } else if (key == "subscribe") {
    subscribe = splitCommas(value);
  } else if (key == "subscribePattern") {
    subscribePattern = value;
  } else if (key == "assign") {
    boost::json::error_code ec;
    auto v = boost::json::parse(value, ec);
    if (ec || !v.is_object()) throw ConfigurationError("Kafka source option 'assign': expected {\"topic\":[0,1]}, got '" + value + "'");
    assign.clear();
    for (const auto& [topic, parts] : v.as_object()) {
      if (!parts.is_array()) throw ConfigurationError("Kafka source option 'assign': partitions of '" + std::string(topic) + "' are not a list");
      for (const auto& p : parts.as_array()) {
        if (!p.is_int64()) throw ConfigurationError("Kafka source option 'assign': bad partition in '" + std::string(topic) + "'");
        assign.push_back({std::string(topic), static_cast<int32_t>(p.as_int64())});
      }
    }
  } else if (key == "startingOffsets") {
    startingOffsets = value;
  } else if (key == "maxOffsetsPerTrigger") {
    maxOffsetsPerTrigger = parseInt(key, value, 1);
  } else if (key == "maxBytesPerTrigger") {
    maxBytesPerTrigger = parseInt(key, value, 1);
  } else if (key == "failOnDataLoss") {
    failOnDataLoss = parseBool(key, value);
  } else if (key == "includeHeaders") {
    includeHeaders = parseBool(key, value);
  } else if (key == "consumerGroup") {
    consumerGroup = value;
  } else if (key == "commitOffsetsToGroup") {
    commitOffsetsToGroup = value;
  } else if (key == "kafkaConsumer.pollTimeoutMs") {
    pollTimeout = std::chrono::milliseconds(parseInt(key, value, 1));
  } else if (key == "partitionDiscoveryIntervalMs") {
    partitionDiscoveryInterval = std::chrono::milliseconds(parseInt(key, value, 0));
  } else if (key.starts_with("kafka.")) {
    kafka[key.substr(6)] = value;
  } else {
    throw ConfigurationError("unknown Kafka source option '" + key + "'");
  }
}

void KafkaSourceOptions::validate() const {
  if (bootstrapServers.empty() && !kafka.contains("bootstrap.servers")) {
    throw ConfigurationError("Kafka source: kafka.bootstrap.servers is required");
  }
  int modes = !subscribe.empty() + !subscribePattern.empty() + !assign.empty();
  if (modes != 1) {
    throw ConfigurationError("Kafka source: set exactly one of subscribe, subscribePattern and assign (" +
                             std::to_string(modes) + " set)");
  }
  if (!subscribePattern.empty()) {
    try {
      std::regex re(subscribePattern);
    } catch (const std::regex_error& e) {
      throw ConfigurationError("Kafka source option 'subscribePattern': invalid regular expression '" +
                               subscribePattern + "': " + e.what());
    }
  }
  for (const char* forbidden : {"group.id", "enable.auto.commit", "auto.offset.reset", "enable.auto.offset.store"}) {
    if (kafka.contains(forbidden)) {
      throw ConfigurationError(std::string("Kafka source option 'kafka.") + forbidden +
                               "' is not supported: the source keeps offsets in the query's checkpoint "
                               "(use commitOffsetsToGroup to expose lag to a consumer group)");
    }
  }
  if (!consumerGroup.empty() && !assign.empty()) {
    throw ConfigurationError("Kafka source option 'consumerGroup' cannot be combined with 'assign': the group "
                             "assigns partitions (use subscribe or subscribePattern)");
  }
  if (!consumerGroup.empty() && !commitOffsetsToGroup.empty() && commitOffsetsToGroup != consumerGroup) {
    throw ConfigurationError("Kafka source option 'commitOffsetsToGroup' ('" + commitOffsetsToGroup +
                             "') differs from 'consumerGroup' ('" + consumerGroup +
                             "'): with a consumer group, processed offsets are committed to that group");
  }
  if (startingOffsets != "earliest" && startingOffsets != "latest") {
    try {
      Offsets::fromJson(startingOffsets);
    } catch (const Error& e) {
      throw ConfigurationError("Kafka source option 'startingOffsets': expected earliest, latest or "
                               "{\"topic\":{\"0\":23}}, got '" + startingOffsets + "'");
    }
  }
}

struct KafkaSource::Impl {
  struct Reader {
    std::mutex mu;
    Handle rk;
    int64_t next = -1;  // the offset the handle's fetch position stands at
    std::optional<KafkaRecord> lookahead;
  };

  // The handle for metadata, watermarks, latest offsets and DeleteRecords, with the queue where
  // DeleteRecords answers arrive. Shared: partition readers ask for watermarks on their threads
  // while the driver plans the next batch, and a handle replaced by renewMeta() lives on until
  // the last request on it has returned.
  struct MetaConnection {
    Handle rk;
    rd_kafka_queue_t* deletions = nullptr;
    explicit MetaConnection(Handle handle) : rk(std::move(handle)), deletions(rd_kafka_queue_new(rk.get())) {}
    ~MetaConnection() { rd_kafka_queue_destroy(deletions); }  // before the handle it belongs to
    MetaConnection(const MetaConnection&) = delete;
    MetaConnection& operator=(const MetaConnection&) = delete;
  };

  KafkaSourceOptions options;
  std::optional<std::regex> pattern;
  std::mutex metaMu;  // guards meta (the pointer; the connection itself is thread-safe)
  std::shared_ptr<MetaConnection> meta;
  Handle committer;
  Clock::time_point lastDeletion{};  // deleteCommittedRecords: when it last ran
  std::mutex mu;  // guards everything below
  std::map<PartitionId, std::unique_ptr<Reader>> readers;
  std::set<std::string, std::less<>> topicNames;  // interned: KafkaRecord::topic points here
  std::vector<PartitionId> partitions;
  Clock::time_point lastDiscovery{};
  RecordSizeEstimate recordSizes;  // of the records read, for maxBytesPerTrigger
  std::atomic<bool> interrupted{false};  // interrupt(): the query is stopping

  // Deletes the records before `end` (the committed offsets), asynchronously: a failure is only
  // logged (the next commit tries again), and the answer is collected by the next call.
  void deleteBefore(const Offsets& end) {
    auto conn = metaConnection();
    if (!conn || end.empty()) return;
    while (rd_kafka_event_t* answer = rd_kafka_queue_poll(conn->deletions, 0)) {
      if (rd_kafka_event_error(answer)) {
        spdlog::warn("Kafka: deleting committed records failed: {}", rd_kafka_event_error_string(answer));
      }
      rd_kafka_event_destroy(answer);
    }
    const auto now = Clock::now();
    if (now - lastDeletion < options.deleteInterval) return;
    PartitionList list(rd_kafka_topic_partition_list_new(static_cast<int>(end.partitions().size())));
    for (const auto& [p, offset] : end.partitions()) {
      if (offset > 0) rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition)->offset = offset;
    }
    if (list->cnt == 0) return;
    lastDeletion = now;
    rd_kafka_DeleteRecords_t* request = rd_kafka_DeleteRecords_new(list.get());
    rd_kafka_DeleteRecords(conn->rk.get(), &request, 1, nullptr, conn->deletions);
    rd_kafka_DeleteRecords_destroy(request);
  }

  std::shared_ptr<MetaConnection> newMetaConnection() const {
    return std::make_shared<MetaConnection>(
        detail::createHandle(RD_KAFKA_CONSUMER, consumerProperties("dataflow-meta-" + randomSuffix())));
  }

  void openMeta() {
    auto conn = newMetaConnection();
    std::lock_guard lock(metaMu);
    meta = std::move(conn);
  }

  std::shared_ptr<MetaConnection> metaConnection() {
    std::lock_guard lock(metaMu);
    return meta;
  }

  // Throws for a failed request on `conn`, first replacing the metadata connection when the
  // failure is the connection's: after a broker stall librdkafka can keep a connection whose
  // requests all fail (as a reader's can, see renew()), and the query's retries then failed for
  // minutes, until the process was restarted (tests/chaos, pause_kafka). Only the first of the
  // requests that failed on `conn` replaces it.
  void checkMeta(rd_kafka_resp_err_t err, const std::string& what, const std::shared_ptr<MetaConnection>& conn) {
    if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__TIMED_OUT ||
        err == RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
      if (!detail::refusal(conn->rk.get())) {  // a refused login stays refused on any connection
        bool replace;
        {
          std::lock_guard lock(metaMu);
          replace = meta == conn;
        }
        if (replace) {
          spdlog::warn("Kafka: {}: {}; the next attempt uses a new connection", what, rd_kafka_err2str(err));
          auto fresh = newMetaConnection();
          std::lock_guard lock(metaMu);
          if (meta == conn) meta = std::move(fresh);
        }
      }
    }
    detail::check(err, what, conn->rk.get());
  }

  void throwIfInterrupted(const std::string& what) const {
    if (interrupted.load(std::memory_order_relaxed)) {
      throw ReadInterrupted("Kafka: " + what + " interrupted: the query is stopping");
    }
  }

  // Scale-out: the consumer-group member and what the group assigned it. Touched by the driver
  // thread only (the rebalance callback runs inside its polls), under assignmentMu for metrics.
  Handle member;
  std::mutex assignmentMu;
  std::set<PartitionId> assigned;
  std::map<PartitionId, Clock::time_point> fenced;  // not reported until reassigned or expired
  std::vector<std::string> memberTopics;           // the member's current subscription

  static void onRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts, void* opaque) {
    static_cast<Impl*>(opaque)->rebalance(rk, err, parts);
  }

  void rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts) {
    bool cooperative = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    std::string names;
    for (int i = 0; i < parts->cnt; ++i) {
      names += (i ? ", " : "") + std::string(parts->elems[i].topic) + "-" + std::to_string(parts->elems[i].partition);
    }
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      // No exception may cross librdkafka's C frames: failures are logged, and the partitions
      // are then simply not reported as assigned.
      std::string failure;
      // A fixed position: the member does not look up the group's committed offsets (it never
      // fetches, and the query's offsets are in its checkpoint).
      for (int i = 0; i < parts->cnt; ++i) parts->elems[i].offset = RD_KAFKA_OFFSET_END;
      if (cooperative) {
        if (rd_kafka_error_t* error = rd_kafka_incremental_assign(rk, parts)) {
          failure = rd_kafka_error_string(error);
          rd_kafka_error_destroy(error);
        }
      } else if (rd_kafka_resp_err_t e = rd_kafka_assign(rk, parts)) {
        failure = rd_kafka_err2str(e);
      }
      if (!failure.empty()) {
        spdlog::error("Kafka: consumer group '{}': assigning {} failed: {}", options.consumerGroup, names, failure);
        return;
      }
      // The member never fetches: the per-partition readers read from the checkpoint's offsets.
      rd_kafka_pause_partitions(rk, parts);
      std::lock_guard lock(assignmentMu);
      for (int i = 0; i < parts->cnt; ++i) {
        PartitionId p{parts->elems[i].topic, parts->elems[i].partition};
        assigned.insert(p);
        fenced.erase(p);
      }
      if (parts->cnt > 0) spdlog::info("Kafka: consumer group '{}' assigned {}", options.consumerGroup, names);
    } else {
      // Revoked (a rebalance) or lost (this member was evicted, e.g. after a long pause). Either
      // way it happens inside latestOffsets(), between batches: no batch is in flight.
      bool lost = rd_kafka_assignment_lost(rk);
      {
        std::lock_guard lock(assignmentMu);
        for (int i = 0; i < parts->cnt; ++i) {
          PartitionId p{parts->elems[i].topic, parts->elems[i].partition};
          assigned.erase(p);
          fenced.erase(p);
        }
      }
      if (cooperative) {
        if (rd_kafka_error_t* error = rd_kafka_incremental_unassign(rk, parts)) {
          spdlog::warn("Kafka: consumer group '{}': unassigning failed: {}", options.consumerGroup, rd_kafka_error_string(error));
          rd_kafka_error_destroy(error);
        }
      } else {
        rd_kafka_assign(rk, nullptr);
      }
      spdlog::info("Kafka: consumer group '{}' {} {}", options.consumerGroup, lost ? "lost" : "revoked", names);
    }
  }

  std::chrono::milliseconds sessionTimeout() const {
    auto it = options.kafka.find("session.timeout.ms");
    int64_t ms = 45000;  // librdkafka's default
    if (it != options.kafka.end()) std::from_chars(it->second.data(), it->second.data() + it->second.size(), ms);
    return std::chrono::milliseconds(ms);
  }

  // Serves the member's rebalance callbacks and keeps its subscription equal to the topics the
  // source reads (a pattern's matches change as topics appear).
  void followGroup() {
    std::vector<std::string> topics;
    if (pattern) {
      std::set<std::string> matched;
      for (const auto& p : discover()) matched.insert(p.topic);
      topics.assign(matched.begin(), matched.end());
    } else {
      topics = options.subscribe;
      std::sort(topics.begin(), topics.end());
    }
    if (topics != memberTopics && !topics.empty()) {
      PartitionList list(rd_kafka_topic_partition_list_new(static_cast<int>(topics.size())));
      for (const auto& t : topics) rd_kafka_topic_partition_list_add(list.get(), t.c_str(), RD_KAFKA_PARTITION_UA);
      detail::check(rd_kafka_subscribe(member.get(), list.get()), "subscribing consumer group '" + options.consumerGroup + "'");
      memberTopics = topics;
    }
    for (int i = 0; i < 1000; ++i) {
      Message m(rd_kafka_consumer_poll(member.get(), 0));
      if (!m) break;
      if (m->err && m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        spdlog::warn("Kafka: consumer group '{}': {}", options.consumerGroup, rd_kafka_message_errstr(m.get()));
      }
    }
  }

  std::vector<PartitionId> assignedNow() {
    std::lock_guard lock(assignmentMu);
    auto now = Clock::now();
    std::vector<PartitionId> out;
    for (const auto& p : assigned) {
      auto f = fenced.find(p);
      if (f != fenced.end() && f->second > now) continue;
      out.push_back(p);
    }
    return out;
  }

  std::map<std::string, std::string> consumerProperties(const std::string& groupId) const {
    std::map<std::string, std::string> p = {
        {"queued.max.messages.kbytes", "8192"},  // prefetch per partition reader: bounded memory
        {"fetch.wait.max.ms", "100"},
        {"socket.nagle.disable", "true"},
    };
    for (const auto& [k, v] : options.kafka) p[k] = v;
    if (!options.bootstrapServers.empty()) p["bootstrap.servers"] = options.bootstrapServers;
    p["group.id"] = groupId;
    p["enable.auto.commit"] = "false";
    p["enable.auto.offset.store"] = "false";
    p["auto.offset.reset"] = "error";  // a position that no longer exists is reported, never skipped
    p["enable.partition.eof"] = "false";
    return p;
  }

  int timeoutMs() const { return static_cast<int>(options.requestTimeout.count()); }

  std::string_view intern(std::string_view topic) {
    auto it = topicNames.find(topic);
    if (it == topicNames.end()) it = topicNames.emplace(topic).first;
    return *it;
  }

  std::vector<PartitionId> discover() {
    std::lock_guard lock(mu);
    auto now = Clock::now();
    if (!partitions.empty() && now - lastDiscovery < options.partitionDiscoveryInterval) return partitions;
    std::vector<PartitionId> found;
    if (!options.assign.empty()) {
      found = options.assign;
    } else {
      const rd_kafka_metadata_t* md = nullptr;
      auto conn = metaConnection();
      rd_kafka_t* rk = conn->rk.get();
      auto err = detail::untilAnsweredOrRefused(
          rk, timeoutMs(), [&](int ms) { return rd_kafka_metadata(rk, 1, nullptr, &md, ms); }, &interrupted);
      throwIfInterrupted("metadata request");
      checkMeta(err, "metadata request", conn);
      for (int t = 0; t < md->topic_cnt; ++t) {
        const auto& topic = md->topics[t];
        if (topic.err != RD_KAFKA_RESP_ERR_NO_ERROR) continue;
        std::string name = topic.topic;
        bool wanted = pattern ? std::regex_match(name, *pattern)
                              : std::find(options.subscribe.begin(), options.subscribe.end(), name) != options.subscribe.end();
        if (!wanted) continue;
        for (int p = 0; p < topic.partition_cnt; ++p) found.push_back({name, topic.partitions[p].id});
      }
      rd_kafka_metadata_destroy(md);
    }
    std::sort(found.begin(), found.end());
    partitions = found;
    lastDiscovery = now;
    return partitions;
  }

  std::pair<int64_t, int64_t> watermarks(const PartitionId& p) {
    int64_t low = 0, high = 0;
    auto conn = metaConnection();
    rd_kafka_t* rk = conn->rk.get();
    auto err = detail::untilAnsweredOrRefused(
        rk, timeoutMs(),
        [&](int ms) { return rd_kafka_query_watermark_offsets(rk, p.topic.c_str(), p.partition, &low, &high, ms); },
        &interrupted);
    throwIfInterrupted("watermarks of " + p.toString());
    checkMeta(err, "watermarks of " + p.toString(), conn);
    return {low, high};
  }

  // The newest offset of each of `partitions` (the end a read stops at, as watermarks() gives
  // it) in one ListOffsets request per leader: planning a topic of 50 partitions took 50 round
  // trips to the broker, one after the other, every batch. A partition the lookup names an error
  // for is asked alone, so that its error is reported as watermarks() reports it.
  Offsets latestOf(const std::vector<PartitionId>& partitions) {
    Offsets out;
    if (partitions.empty()) return out;
    PartitionList list(rd_kafka_topic_partition_list_new(static_cast<int>(partitions.size())));
    for (const auto& p : partitions) rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition);
    auto conn = metaConnection();
    rd_kafka_t* rk = conn->rk.get();
    auto err = detail::untilAnsweredOrRefused(
        rk, timeoutMs(),
        [&](int ms) {
          // Timestamp "latest" in, offset out: set again for each attempt.
          for (int i = 0; i < list->cnt; ++i) list->elems[i].offset = RD_KAFKA_OFFSET_END;
          return rd_kafka_offsets_for_times(rk, list.get(), ms);
        },
        &interrupted);
    throwIfInterrupted("latest offsets");
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
      for (const auto& p : partitions) out.set(p, watermarks(p).second);
      return out;
    }
    for (int i = 0; i < list->cnt; ++i) {
      const auto& e = list->elems[i];
      PartitionId p{e.topic, e.partition};
      out.set(p, e.err == RD_KAFKA_RESP_ERR_NO_ERROR && e.offset >= 0 ? e.offset : watermarks(p).second);
    }
    return out;
  }

  Reader& reader(const PartitionId& p) {
    std::lock_guard lock(mu);
    auto& slot = readers[p];
    if (!slot) {
      slot = std::make_unique<Reader>();
      slot->rk = readerHandle();
    }
    return *slot;
  }

  // A partition reader's own consumer handle (assigned, never subscribed).
  Handle readerHandle() const {
    Handle rk = detail::createHandle(RD_KAFKA_CONSUMER, consumerProperties("dataflow-reader-" + randomSuffix()));
    rd_kafka_poll_set_consumer(rk.get());
    return rk;
  }

  // A new handle for a reader whose fetch stays stuck: after a broker stall (SIGSTOP, a long GC
  // pause) librdkafka 2.12 can keep a connection whose requests time out in its queue, and
  // restarting the fetch on it does not help; a fresh connection does.
  void renew(Reader& r, const PartitionId& p, int64_t offset) {
    r.rk = readerHandle();
    seek(r, p, offset);
  }

  void seek(Reader& r, const PartitionId& p, int64_t offset) {
    PartitionList list(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition)->offset = offset;
    detail::check(rd_kafka_assign(r.rk.get(), list.get()), "assign " + p.toString());
    r.next = offset;
    r.lookahead.reset();
  }

  int64_t fetchPosition(Reader& r, const PartitionId& p) {
    PartitionList list(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition);
    if (rd_kafka_position(r.rk.get(), list.get()) != RD_KAFKA_RESP_ERR_NO_ERROR) return -1;
    return list->elems[0].offset;
  }

  KafkaRecord convert(const rd_kafka_message_t* m, std::string_view topic) {
    KafkaRecord r;
    r.topic = topic;
    r.partition = m->partition;
    r.offset = m->offset;
    rd_kafka_timestamp_type_t type;
    r.timestamp = rd_kafka_message_timestamp(m, &type);
    r.timestampType = type == RD_KAFKA_TIMESTAMP_CREATE_TIME      ? TimestampType::kCreateTime
                      : type == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? TimestampType::kLogAppendTime
                                                                   : TimestampType::kNone;
    if (m->key) {
      r.key.assign(static_cast<const char*>(m->key), m->key_len);
      r.hasKey = true;
    }
    if (m->payload) {
      r.value.assign(static_cast<const char*>(m->payload), m->len);
      r.hasValue = true;
    }
    rd_kafka_headers_t* headers = nullptr;
    if (options.includeHeaders && rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR && headers) {
      const char* name;
      const void* value;
      size_t size;
      for (size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i) {
        r.headers.emplace_back(name, value ? std::optional<std::string>(std::string(static_cast<const char*>(value), size))
                                           : std::nullopt);
      }
    }
    return r;
  }
};

KafkaSource::KafkaSource(KafkaSourceOptions options) : impl_(std::make_unique<Impl>()) {
  options.validate();
  impl_->options = std::move(options);
  if (!impl_->options.subscribePattern.empty()) impl_->pattern.emplace(impl_->options.subscribePattern);
}

KafkaSource::~KafkaSource() = default;

bool KafkaSource::fedByQuery() const { return impl_->options.fedByQuery; }

std::string KafkaSource::description() const {
  const auto& o = impl_->options;
  std::string inner;
  if (!o.subscribe.empty()) {
    inner = "Subscribe[";
    for (size_t i = 0; i < o.subscribe.size(); ++i) inner += (i ? "," : "") + o.subscribe[i];
  } else if (!o.subscribePattern.empty()) {
    inner = "SubscribePattern[" + o.subscribePattern;
  } else {
    inner = "Assign[";
    for (size_t i = 0; i < o.assign.size(); ++i) inner += (i ? ", " : "") + o.assign[i].toString();
  }
  return "KafkaV2[" + inner + "]]";
}

void KafkaSource::interrupt() { impl_->interrupted.store(true, std::memory_order_relaxed); }

void KafkaSource::open() {
  impl_->interrupted.store(false, std::memory_order_relaxed);
  impl_->openMeta();
  if (!impl_->options.consumerGroup.empty()) {
    auto props = impl_->consumerProperties(impl_->options.consumerGroup);
    if (!impl_->options.kafka.contains("partition.assignment.strategy")) props["partition.assignment.strategy"] = "cooperative-sticky";
    props["queued.max.messages.kbytes"] = "64";  // it never fetches anyway (paused)
    Impl* self = impl_.get();
    impl_->member = detail::createHandle(RD_KAFKA_CONSUMER, props, [self](rd_kafka_conf_t* conf) {
      rd_kafka_conf_set_rebalance_cb(conf, &Impl::onRebalance);
      rd_kafka_conf_set_opaque(conf, self);
    });
    rd_kafka_poll_set_consumer(impl_->member.get());
    impl_->followGroup();
  } else if (!impl_->options.commitOffsetsToGroup.empty()) {
    impl_->committer = detail::createHandle(RD_KAFKA_CONSUMER, impl_->consumerProperties(impl_->options.commitOffsetsToGroup));
  }
}

void KafkaSource::close() {
  if (impl_->member) {
    // Leave the group now, so that the others get this member's partitions at once instead of
    // after the session timeout. The revocation callback runs inside the close.
    rd_kafka_resp_err_t err = rd_kafka_consumer_close(impl_->member.get());
    if (err) spdlog::warn("Kafka: leaving consumer group '{}': {}", impl_->options.consumerGroup, rd_kafka_err2str(err));
    impl_->member.reset();
  }
  std::lock_guard lock(impl_->mu);
  impl_->readers.clear();
  impl_->committer.reset();
  std::lock_guard metaLock(impl_->metaMu);
  impl_->meta.reset();
}

Offsets KafkaSource::initialOffsets() {
  Offsets out;
  const std::string& start = impl_->options.startingOffsets;
  std::optional<Offsets> given;
  if (start != "earliest" && start != "latest") given = Offsets::fromJson(start);
  for (const auto& p : impl_->discover()) {
    auto [low, high] = impl_->watermarks(p);
    int64_t offset;
    if (given) {
      int64_t want = given->get(p, -3);
      if (want == -3) {
        throw ConfigurationError("Kafka source option 'startingOffsets' has no offset for partition " + p.toString());
      }
      offset = want == -2 ? low : want == -1 ? high : want;
    } else {
      offset = start == "earliest" ? low : high;
    }
    out.set(p, offset);
  }
  return out;
}

Offsets KafkaSource::latestOffsets() {
  if (impl_->member) {
    impl_->followGroup();
    return impl_->latestOf(impl_->assignedNow());
  }
  return impl_->latestOf(impl_->discover());
}

bool KafkaSource::isCoordinated() const { return !impl_->options.consumerGroup.empty(); }

void KafkaSource::onPartitionsFenced(const std::vector<PartitionId>& partitions) {
  // Another member committed for them after a rebalance this member has not heard of yet (it was
  // paused past the session timeout, say). Its eviction reaches it within a heartbeat or two;
  // until then, or until the group assigns them again, they are not read here. After a session
  // timeout they are reported again: if they really are this member's, it takes them back.
  std::lock_guard lock(impl_->assignmentMu);
  auto until = Clock::now() + impl_->sessionTimeout();
  for (const auto& p : partitions) impl_->fenced[p] = until;
}

int64_t KafkaSource::startOfNewPartition(const PartitionId& partition) { return impl_->watermarks(partition).first; }

std::optional<int64_t> KafkaSource::maxRecordsPerBatch() const {
  std::optional<int64_t> limit;
  if (impl_->options.maxOffsetsPerTrigger > 0) limit = impl_->options.maxOffsetsPerTrigger;
  if (impl_->options.maxBytesPerTrigger > 0) {
    const int64_t fit = impl_->recordSizes.recordsWithin(impl_->options.maxBytesPerTrigger);
    limit = limit ? std::min(*limit, fit) : fit;
  }
  return limit;
}

void KafkaSource::read(const PartitionId& partition, int64_t from, int64_t until, std::vector<KafkaRecord>& out) {
  Impl::Reader& r = impl_->reader(partition);
  std::lock_guard lock(r.mu);
  const size_t first = out.size();
  std::string_view topic;
  {
    std::lock_guard g(impl_->mu);
    topic = impl_->intern(partition.topic);
  }
  int64_t expected = from;
  // Records in [expected, low) are gone when the log now starts at `low` (retention, deletion):
  // fail, or skip them, as failOnDataLoss says. Returns the offset to continue from.
  auto dataLoss = [&](int64_t low) -> int64_t {
    std::string lost = partition.toString() + " offsets [" + std::to_string(expected) + ", " +
                       std::to_string(std::min(low, until)) + ") are no longer available (the log starts at " +
                       std::to_string(low) + ", probably deleted by retention)";
    if (impl_->options.failOnDataLoss) {
      r.next = -1;
      r.lookahead.reset();
      throw ConnectorError("Kafka: data loss: " + lost + "; set failOnDataLoss=false to continue from the earliest offset", false);
    }
    spdlog::warn("Kafka: data loss: {}; continuing from offset {} (failOnDataLoss=false)", lost, low);
    return low;
  };
  if (r.lookahead && r.lookahead->offset >= from && r.next == from) {
    // The previous read fetched one record past its range: it starts this one.
    if (r.lookahead->offset > expected) {
      auto [low, high] = impl_->watermarks(partition);
      if (low > expected) expected = dataLoss(low);
    }
    if (r.lookahead->offset < until) {
      expected = r.lookahead->offset + 1;
      out.push_back(std::move(*r.lookahead));
      r.lookahead.reset();
    }
  } else if (r.next != from) {
    impl_->seek(r, partition, from);
  }
  auto deadline = Clock::now() + impl_->options.pollTimeout;
  int emptyPolls = 0;
  int stallLimit = 3;  // empty polls of 10 ms before the fetch is restarted
  auto lastMessage = Clock::now();
  while (expected < until) {
    if (impl_->interrupted.load(std::memory_order_relaxed)) {
      r.next = -1;  // the fetch stands somewhere in the range: the next read seeks
      impl_->throwIfInterrupted("reading " + partition.toString());
    }
    Message m(rd_kafka_consumer_poll(r.rk.get(), 10));
    if (!m) {
      // Offsets can be missing for good (transaction markers, compaction): the fetch position
      // tells when everything up to `until` has been seen.
      if (impl_->fetchPosition(r, partition) >= until) {
        auto [low, high] = impl_->watermarks(partition);
        if (low > expected) dataLoss(low);
        break;
      }
      // The records exist (the range ends at most at the high watermark), yet none arrive. Then
      // the fetcher is usually backing off: its queue filled up while the previous batch was
      // written, and librdkafka 2.0 waits a hard-coded second before fetching again. Restarting
      // the fetch at our position costs a round trip instead. bench/kafka_consume: 65-97 k
      // records/s before, about 1 M after.
      // A restart discards a fetch in flight, so each further one waits twice as long: a broker
      // that is merely slow (a cold segment) still gets to answer.
      if (Clock::now() - lastMessage > kRenewReaderAfter) {
        spdlog::info("Kafka: no record of {} for {} s though offsets [{}, {}) exist; reading it on a new connection",
                     partition.toString(), std::chrono::duration_cast<std::chrono::seconds>(kRenewReaderAfter).count(),
                     expected, until);
        impl_->renew(r, partition, expected);
        lastMessage = Clock::now();
        emptyPolls = 0;
        stallLimit = 3;
      } else if (++emptyPolls == stallLimit) {
        impl_->seek(r, partition, expected);
        emptyPolls = 0;
        stallLimit = std::min(stallLimit * 2, 100);
      }
      if (Clock::now() > deadline) {
        r.next = -1;
        throw ConnectorError("Kafka: timed out reading " + partition.toString() + " offsets [" +
                                 std::to_string(expected) + ", " + std::to_string(until) + ")",
                             true);
      }
      continue;
    }
    emptyPolls = 0;
    lastMessage = Clock::now();
    if (m->err) {
      if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
        auto [low, high] = impl_->watermarks(partition);
        if (low <= expected) {
          // Nothing is gone (e.g. a transient out-of-range answer during a leader change).
          if (Clock::now() > deadline) detail::check(m->err, "reading " + partition.toString(), r.rk.get());
          impl_->seek(r, partition, expected);
          continue;
        }
        expected = dataLoss(low);
        impl_->seek(r, partition, expected);  // the fetch stopped at the error: restart it
        if (expected >= until) {
          r.next = expected;
          return;
        }
        continue;
      }
      if (detail::isRetriable(m->err)) {
        if (Clock::now() > deadline) detail::check(m->err, "reading " + partition.toString(), r.rk.get());
        continue;  // librdkafka reconnects by itself
      }
      r.next = -1;
      detail::check(m->err, "reading " + partition.toString(), r.rk.get());
    }
    if (m->offset < expected) continue;
    if (m->offset > expected) {
      // A gap: compaction and transaction markers make them, and so does retention.
      auto [low, high] = impl_->watermarks(partition);
      if (low > expected) expected = dataLoss(low);
    }
    if (m->offset >= until) {
      r.lookahead = impl_->convert(m.get(), topic);
      break;
    }
    out.push_back(impl_->convert(m.get(), topic));
    expected = m->offset + 1;
  }
  r.next = until;
  int64_t bytes = 0;
  for (size_t i = first; i < out.size(); ++i) bytes += static_cast<int64_t>(out[i].key.size() + out[i].value.size());
  impl_->recordSizes.observe(static_cast<int64_t>(out.size() - first), bytes);
}

void KafkaSource::onBatchCommitted(const Offsets& end) {
  if (impl_->options.deleteCommittedRecords) impl_->deleteBefore(end);
  if (impl_->member) {
    // For lag tools only (asynchronous): the query never reads the group's offsets back.
    PartitionList list(rd_kafka_topic_partition_list_new(static_cast<int>(end.partitions().size())));
    for (const auto& [p, offset] : end.partitions()) {
      rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition)->offset = offset;
    }
    if (list->cnt > 0) rd_kafka_commit(impl_->member.get(), list.get(), 1);
    return;
  }
  if (!impl_->committer) return;
  PartitionList list(rd_kafka_topic_partition_list_new(static_cast<int>(end.partitions().size())));
  for (const auto& [p, offset] : end.partitions()) {
    rd_kafka_topic_partition_list_add(list.get(), p.topic.c_str(), p.partition)->offset = offset;
  }
  rd_kafka_resp_err_t err = rd_kafka_commit(impl_->committer.get(), list.get(), 0);
  if (err) spdlog::warn("Kafka: committing offsets to group '{}' failed: {}", impl_->options.commitOffsetsToGroup, rd_kafka_err2str(err));
}

SourceMetrics KafkaSource::metrics(const Offsets& end, const Offsets& latest) {
  if (latest.empty()) return {};
  int64_t minBehind = INT64_MAX, maxBehind = 0, total = 0;
  for (const auto& [p, high] : latest.partitions()) {
    int64_t behind = std::max<int64_t>(0, high - end.get(p, 0));
    minBehind = std::min(minBehind, behind);
    maxBehind = std::max(maxBehind, behind);
    total += behind;
  }
  char avg[32];
  std::snprintf(avg, sizeof avg, "%.1f", static_cast<double>(total) / static_cast<double>(latest.partitions().size()));
  SourceMetrics out{{"minOffsetsBehindLatest", std::to_string(minBehind)},
                    {"maxOffsetsBehindLatest", std::to_string(maxBehind)},
                    {"avgOffsetsBehindLatest", avg}};
  // And per partition, for dashboards: "offsetsBehindLatest.<topic>-<partition>".
  for (const auto& [p, high] : latest.partitions()) {
    out.emplace_back("offsetsBehindLatest." + p.toString(), std::to_string(std::max<int64_t>(0, high - end.get(p, 0))));
  }
  if (impl_->member) out.emplace_back("assignedPartitions", std::to_string(latest.partitions().size()));
  return out;
}

// ---------------------------------------------------------------------------------------- sink

struct KafkaSink::Impl {
  KafkaSinkOptions options;
  Handle producer;
  std::mutex mu;
  std::atomic<int> failures{0};
  std::string firstError;

  static void onDelivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    if (!m->err) return;
    auto* self = static_cast<Impl*>(opaque);
    if (self->failures++ == 0) self->firstError = rd_kafka_err2str(m->err);
  }
};

KafkaSink::KafkaSink(KafkaSinkOptions options) : impl_(std::make_unique<Impl>()) {
  if (options.bootstrapServers.empty()) throw ConfigurationError("Kafka sink: bootstrapServers is required");
  impl_->options = std::move(options);
  std::map<std::string, std::string> props = {{"enable.idempotence", "true"}, {"acks", "all"}, {"linger.ms", "5"}};
  for (const auto& [k, v] : impl_->options.kafka) props[k] = v;
  props["bootstrap.servers"] = impl_->options.bootstrapServers;
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  for (const auto& [k, v] : props) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      throw ConfigurationError("Kafka property '" + k + "': " + err);
    }
  }
  rd_kafka_conf_set_dr_msg_cb(conf, &Impl::onDelivery);
  rd_kafka_conf_set_opaque(conf, impl_.get());
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    throw ConfigurationError(std::string("Kafka: cannot create a producer: ") + err);
  }
  impl_->producer.reset(rk);
}

KafkaSink::~KafkaSink() {
  if (impl_ && impl_->producer) rd_kafka_flush(impl_->producer.get(), 10000);
}

std::string KafkaSink::description() const { return "KafkaSink[" + impl_->options.topic + "]"; }

void KafkaSink::addBatch(const Batch<ProducerRecord>& batch, const BatchInfo&) { write(batch.collect()); }

void KafkaSink::write(const std::vector<ProducerRecord>& records) {
  std::lock_guard lock(impl_->mu);
  impl_->failures = 0;
  impl_->firstError.clear();
  rd_kafka_t* rk = impl_->producer.get();
  for (const auto& rec : records) {
    const std::string& topic = rec.topic.empty() ? impl_->options.topic : rec.topic;
    if (topic.empty()) throw ConfigurationError("Kafka sink: a record has no topic and the sink has no default topic");
    rd_kafka_headers_t* headers = rd_kafka_headers_new(rec.headers.size());
    for (const auto& [k, v] : rec.headers) rd_kafka_header_add(headers, k.data(), static_cast<ssize_t>(k.size()), v.data(), static_cast<ssize_t>(v.size()));
    while (true) {
      // The macros cast their arguments: compute them first.
      const void* key = rec.key ? rec.key->data() : nullptr;
      size_t keyLen = rec.key ? rec.key->size() : 0;
      void* value = rec.value ? const_cast<char*>(rec.value->data()) : nullptr;
      size_t valueLen = rec.value ? rec.value->size() : 0;
      rd_kafka_resp_err_t err = rd_kafka_producev(
          rk, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key, keyLen), RD_KAFKA_V_VALUE(value, valueLen),
          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        rd_kafka_poll(rk, 50);
        continue;
      }
      if (err) {
        rd_kafka_headers_destroy(headers);
        detail::check(err, "producing to " + topic);
      }
      break;  // the message owns the headers now
    }
  }
  rd_kafka_resp_err_t err = rd_kafka_flush(rk, static_cast<int>(impl_->options.flushTimeout.count()));
  if (err) detail::check(err, "flushing " + std::to_string(records.size()) + " records");
  if (impl_->failures > 0) {
    throw ConnectorError("Kafka: " + std::to_string(impl_->failures.load()) + " records were not delivered: " + impl_->firstError, true);
  }
}

}  // namespace dataflow::kafka
