// Consumes a topic from the real broker into a sink that does nothing, to measure the Kafka
// source alone: records/s and MB/s. Used by bench/e2e/run.sh.
//   kafka_consume BOOTSTRAP TOPIC
#include <dataflow/dataflow.h>
#include <dataflow/kafka/kafka_source.h>

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: kafka_consume BOOTSTRAP TOPIC\n");
    return 2;
  }
  dataflow::kafka::KafkaSourceOptions options;
  options.bootstrapServers = argv[1];
  options.subscribe = {argv[2]};
  options.startingOffsets = "earliest";
  options.maxOffsetsPerTrigger = 50000;
  dataflow::Session session;
  int64_t records = 0, bytes = 0;
  auto start = std::chrono::steady_clock::now();
  auto query = session.readStream(std::make_shared<dataflow::kafka::KafkaSource>(options))
                   .writeStream()
                   .trigger(dataflow::Trigger::availableNow())
                   .foreachBatch([&](const dataflow::Batch<dataflow::kafka::KafkaRecord>& batch, const dataflow::BatchInfo& info) {
                     for (const auto& r : batch.rows()) bytes += static_cast<int64_t>(r.value.size());
                     records += static_cast<int64_t>(batch.numRows());
                     // Per batch on stderr: where the time goes (start-up, a stall, steady reads).
                     std::fprintf(stderr, "batch %lld: %zu records, %.0f ms since start\n", static_cast<long long>(info.batchId),
                                  batch.numRows(), std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
                   })
                   .start();
  query.awaitTermination();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("{\"records\": %lld, \"seconds\": %.3f, \"records_per_second\": %.0f, \"mb_per_second\": %.1f}\n",
              static_cast<long long>(records), seconds, records / seconds, bytes / seconds / 1e6);
  return 0;
}
