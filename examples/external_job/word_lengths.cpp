// A minimal job outside this repository: words in, their lengths out, one batch per trigger.
#include <dataflow/dataflow.h>

#include <iostream>

int main() {
  dataflow::Session session;
  auto words = std::make_shared<dataflow::MemoryStream<std::string>>("words");
  words->addData({"change", "data", "capture"});
  auto query = session.readStream(words)
                   .map([](const std::string& w) { return w.size(); })
                   .writeStream()
                   .queryName("word-lengths")
                   .trigger(dataflow::Trigger::availableNow())
                   .foreachBatch([](const dataflow::Batch<size_t>& batch, const dataflow::BatchInfo& info) {
                     size_t total = 0;
                     for (size_t n : batch.rows()) total += n;
                     std::cout << "batch " << info.batchId << ": " << batch.numRows() << " words, " << total << " letters\n";
                   })
                   .start();
  query.awaitTermination();
  return 0;
}
